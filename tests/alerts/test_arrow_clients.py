"""Issue 15, Arrow alert clients: their webhook template, manual alerts and corrections, the
strategy lookup by webhook URL, stats by side and the price series, from the client's side."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from handlers import keys
from tests.alerts.util import auth, create_strategy, tv_path
from tests.helpers import connect, make_user, receive, request

#: Arrow's message template after TradingView substituted {{ticker}} and {{close}}.
ARROW_BUY = '{"contract": "NQ1!", "trade_type": "buy", "quantity": 1, "price": 18250.25}'
ARROW_SELL = '{"contract": "NQ1!", "trade_type": "sell", "quantity": 2, "price": 18262.5}'
JSON = {"Content-Type": "application/json"}


async def _post_tv(client: Any, strategy: dict[str, Any], body: str) -> str:
    response = await client.post(tv_path(strategy), data=body, headers=JSON)
    reply = await response.json()
    assert response.status == 201, reply
    return str(reply["id"])


async def _get(client: Any, token: str, path: str, **params: Any) -> tuple[int, Any]:
    response = await client.get(path, params=params, headers=auth(token))
    return response.status, await response.json()


async def _next_pub(ws: Any) -> dict[str, Any]:
    while True:
        message = await receive(ws, timeout=15)
        if message.get("type") == "pub":
            return message


# --- a. the Arrow template and TradingView's strategy placeholders ---------------------------


async def test_arrow_template_stores_side_ticker_quantity_and_price(client: Any) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    buy = await _post_tv(client, strategy, ARROW_BUY)
    sell = await _post_tv(client, strategy, ARROW_SELL)
    status, alert = await _get(client, token, f"/api/v1/alerts/{buy}")
    assert status == 200
    assert (alert["ticker"], alert["action"], alert["quantity"], alert["price"]) == (
        "NQ1!",
        "buy",
        1.0,
        18250.25,
    )
    assert alert["raw_body"] == ARROW_BUY
    # The side is what the filters and statistics use.
    _, page = await _get(client, token, "/api/v1/alerts", action="buy")
    assert [item["id"] for item in page["items"]] == [buy]
    _, page = await _get(client, token, "/api/v1/alerts", action="sell", ticker="NQ1!")
    assert [item["id"] for item in page["items"]] == [sell]
    _, stats = await _get(client, token, "/api/v1/alerts/stats", strategy=strategy["id"])
    assert sum(p["buy_volume"] for p in stats["series"]) == 1.0
    assert sum(p["sell_volume"] for p in stats["series"]) == 2.0


async def test_tradingview_strategy_placeholder_template(client: Any) -> None:
    """The JSON keys people name after TradingView's strategy placeholders, substituted."""
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    body = (
        '{"strategy.order.action": "sell", "strategy.order.contracts": "3", '
        '"strategy.position_size": "-3", "strategy.market_position": "short", '
        '"ticker": "ES1!", "exchange": "CME_MINI", "close": 5301.75, '
        '"time": "2026-11-22T10:00:00Z", "timenow": "2026-11-22T10:00:05Z", "interval": "5"}'
    )
    alert_id = await _post_tv(client, strategy, body)
    _, alert = await _get(client, token, f"/api/v1/alerts/{alert_id}")
    assert alert["action"] == "sell"
    assert alert["quantity"] == 3.0
    assert alert["ticker"] == "ES1!"
    assert alert["price"] == 5301.75
    assert alert["time"].startswith("2026-11-22T10:00:00")


# --- b. manual alerts, corrections, lookup by secret -----------------------------------------


async def test_manual_alert_is_stored_and_published_like_a_webhook(client: Any) -> None:
    _, owner = await make_user(client)
    friend_id, friend = await make_user(client)
    _, stranger = await make_user(client)
    strategy = await create_strategy(client, owner)
    await client.patch(
        f"/api/v1/strategies/{strategy['id']}",
        json={"shared_with": [friend_id]},
        headers=auth(owner),
    )
    ws = await connect(client, friend)
    assert "result" in await request(ws, "subscribe", channel=strategy["channel"])
    body = {
        "strategy_id": strategy["id"],
        "ticker": "NQ1!",
        "action": "buy",
        "quantity": 1,
        "price": 18250.25,
        "note": "entered by hand",
    }
    response = await client.post("/api/v1/alerts", json=body, headers=auth(owner))
    created = await response.json()
    assert response.status == 201, created
    assert created["source"] == "manual"
    assert created["message"] == "entered by hand"
    message = await _next_pub(ws)
    assert message["data"]["type"] == "alert.created"
    assert message["data"]["alert"]["id"] == created["id"]
    assert message["data"]["alert"]["action"] == "buy"
    status, stored = await _get(client, owner, f"/api/v1/alerts/{created['id']}")
    assert status == 200
    assert stored["price"] == 18250.25
    # Only the owner adds alerts: a shared user 403, anyone else 404; bad fields 400.
    shared = await client.post("/api/v1/alerts", json=body, headers=auth(friend))
    assert shared.status == 403
    foreign = await client.post("/api/v1/alerts", json=body, headers=auth(stranger))
    assert foreign.status == 404
    for bad in ({"action": "hold"}, {"price": -1}, {"ticker": ""}, {"strategy_id": "x"}):
        response = await client.post("/api/v1/alerts", json=body | bad, headers=auth(owner))
        assert response.status == 400, bad
    _, page = await _get(client, owner, "/api/v1/alerts", strategy=strategy["id"])
    assert [item["id"] for item in page["items"]] == [created["id"]]
    await ws.close()


async def test_owner_corrects_an_alert_and_subscribers_see_it(client: Any) -> None:
    friend_id, friend = await make_user(client)
    _, owner = await make_user(client)
    _, stranger = await make_user(client)
    strategy = await create_strategy(client, owner)
    await client.patch(
        f"/api/v1/strategies/{strategy['id']}",
        json={"shared_with": [friend_id]},
        headers=auth(owner),
    )
    # A mis-parsed alert: the sender wrote "long", which is not a side.
    alert_id = await _post_tv(
        client, strategy, '{"symbol": "NQ", "side": "long", "price": "18250,25"}'
    )
    ws = await connect(client, owner)
    assert "result" in await request(ws, "subscribe", channel=strategy["channel"])
    patch = {"ticker": "NQ1!", "action": "buy", "price": 18250.25, "quantity": 1, "note": "fixed"}
    response = await client.patch(f"/api/v1/alerts/{alert_id}", json=patch, headers=auth(owner))
    updated = await response.json()
    assert response.status == 200, updated
    assert (updated["ticker"], updated["action"], updated["price"], updated["quantity"]) == (
        "NQ1!",
        "buy",
        18250.25,
        1.0,
    )
    assert updated["message"] == "fixed"
    assert updated["edited_at"] is not None
    message = await _next_pub(ws)
    if message["data"]["type"] == "alert.created":
        # The relay published the creation after the subscribe (a busy machine): it comes first.
        message = await _next_pub(ws)
    assert message["data"]["type"] == "alert.updated"
    assert message["data"]["alert"]["id"] == alert_id
    assert message["data"]["alert"]["action"] == "buy"
    # Committed: PostgreSQL has it.
    async with client.server.app[keys.pool].acquire() as conn:
        row = await conn.fetchrow("SELECT ticker, action FROM alerts WHERE id = $1::uuid", alert_id)
    assert dict(row) == {"ticker": "NQ1!", "action": "buy"}
    # null clears a field; unknown fields and bad values are 400.
    response = await client.patch(
        f"/api/v1/alerts/{alert_id}", json={"quantity": None}, headers=auth(owner)
    )
    assert (await response.json())["quantity"] is None
    for bad in ({"source": "signed"}, {"action": "short"}, {"price": "abc"}, {"ticker": "a\nb"}):
        response = await client.patch(f"/api/v1/alerts/{alert_id}", json=bad, headers=auth(owner))
        assert response.status == 400, bad
    shared = await client.patch(f"/api/v1/alerts/{alert_id}", json=patch, headers=auth(friend))
    assert shared.status == 403
    foreign = await client.patch(f"/api/v1/alerts/{alert_id}", json=patch, headers=auth(stranger))
    assert foreign.status == 404
    await ws.close()


async def test_strategy_lookup_by_webhook_secret(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, owner = await make_user(client)
    _, other = await make_user(client)
    strategy = await create_strategy(client, owner, "NQ scalper")
    secret = strategy["secrets"]["url_secret"]
    caplog.set_level(logging.DEBUG)
    status, found = await _get(client, owner, f"/api/v1/strategies/by-secret/{secret}")
    assert status == 200, found
    assert (found["id"], found["name"], found["access"]) == (strategy["id"], "NQ scalper", "owner")
    assert "secrets" not in found
    assert secret not in str(found)
    status, _ = await _get(client, other, f"/api/v1/strategies/by-secret/{secret}")
    assert status == 404
    status, _ = await _get(client, owner, f"/api/v1/strategies/by-secret/{secret[::-1]}")
    assert status == 404
    status, _ = await _get(client, owner, "/api/v1/strategies/by-secret/short")
    assert status == 404
    rotated = await client.post(
        f"/api/v1/strategies/{strategy['id']}/rotate",
        json={"grace_seconds": 0},
        headers=auth(owner),
    )
    assert rotated.status == 200
    status, _ = await _get(client, owner, f"/api/v1/strategies/by-secret/{secret}")
    assert status == 404
    new_secret = (await rotated.json())["secrets"]["url_secret"]
    status, _ = await _get(client, owner, f"/api/v1/strategies/by-secret/{new_secret}")
    assert status == 200
    logged = [str(record.__dict__) for record in caplog.records]
    assert logged, "expected access log records"
    assert not [line for line in logged if secret in line or new_secret in line]
    metrics = await (await client.get("/metrics", headers=auth(owner))).text()
    assert secret not in metrics
    assert new_secret not in metrics
    assert "/api/v1/strategies/by-secret/{secret}" in metrics


# --- c. stats by side and the price series ---------------------------------------------------


async def test_stats_filter_by_action(client: Any) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    await _post_tv(client, strategy, ARROW_BUY)
    await _post_tv(client, strategy, ARROW_SELL)
    await _post_tv(client, strategy, '{"contract": "NQ1!", "note": "no side"}')
    counts = {}
    for action in (None, "buy", "sell"):
        params = {"strategy": strategy["id"]} | ({"action": action} if action else {})
        status, stats = await _get(client, token, "/api/v1/alerts/stats", **params)
        assert status == 200, stats
        counts[action] = sum(point["count"] for point in stats["series"])
    assert counts == {None: 3, "buy": 1, "sell": 1}
    status, _ = await _get(client, token, "/api/v1/alerts/stats", action="hold")
    assert status == 400


async def test_price_series_of_a_ticker_pages_oldest_first(client: Any) -> None:
    _, token = await make_user(client)
    _, stranger = await make_user(client)
    strategy = await create_strategy(client, token)
    prices = [18250.25, 18262.5, 18240.0, 18275.75, 18281.0]
    ids = []
    for index, price in enumerate(prices):
        side = ("buy", "sell", None, "buy", "sell")[index]
        fields = f'"contract": "NQ1!", "price": {price}, "n": {index}'
        if side:
            fields += f', "trade_type": "{side}"'
        ids.append(await _post_tv(client, strategy, "{" + fields + "}"))
    await _post_tv(client, strategy, '{"contract": "ES1!", "price": 5300, "trade_type": "buy"}')
    await _post_tv(client, strategy, '{"contract": "NQ1!", "trade_type": "buy"}')  # no price
    path = "/api/v1/alerts/series"
    query = {"strategy_id": strategy["id"], "ticker": "NQ1!", "limit": 2}
    points: list[dict[str, Any]] = []
    cursor = None
    while True:
        status, page = await _get(
            client, token, path, **query, **({"cursor": cursor} if cursor else {})
        )
        assert status == 200, page
        assert len(page["points"]) <= 2
        points += page["points"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [p["id"] for p in points] == ids
    assert [p["price"] for p in points] == prices
    assert [p["action"] for p in points] == ["buy", "sell", None, "buy", "sell"]
    status, _ = await _get(client, stranger, path, strategy_id=strategy["id"], ticker="NQ1!")
    assert status == 404
    status, _ = await _get(client, token, path, strategy_id=strategy["id"])
    assert status == 400
