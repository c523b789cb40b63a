"""Alerts API (filters, cursor pages, stats) and the live fan-out to ``alerts:{strategy}``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from handlers import keys
from tests.alerts.util import auth, create_strategy, post_signed, tv_path
from tests.helpers import connect, make_user, receive, request

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


async def _post(client: Any, strategy: dict[str, Any], **fields: Any) -> str:
    response = await client.post(
        tv_path(strategy), data=orjson.dumps(fields), headers={"Content-Type": "application/json"}
    )
    body = await response.json()
    assert response.status == 201, body
    return str(body["id"])


async def _set_received(client: Any, alert_id: str, when: datetime) -> None:
    async with client.server.app[keys.pool].acquire() as conn:
        await conn.execute("UPDATE alerts SET received_at = $2 WHERE id = $1::uuid", alert_id, when)


async def _seed(client: Any) -> tuple[str, dict[str, Any], dict[str, Any], list[str]]:
    """Owner with two strategies; five alerts at T0 + 0, 10, 70, 80, 190 minutes."""
    _, token = await make_user(client)
    first = await create_strategy(client, token, "first")
    second = await create_strategy(client, token, "second")
    specs = [
        (first, {"ticker": "AAPL", "action": "buy", "quantity": 2}, 0),
        (first, {"ticker": "AAPL", "action": "sell", "quantity": 1.5}, 10),
        (first, {"ticker": "MSFT", "action": "buy", "quantity": 4}, 70),
        (second, {"ticker": "AAPL", "action": "buy", "quantity": 8}, 80),
        (first, {"ticker": "MSFT", "message": "no side"}, 190),
    ]
    ids = []
    for strategy, fields, minutes in specs:
        alert_id = await _post(client, strategy, **fields)
        await _set_received(client, alert_id, T0 + timedelta(minutes=minutes))
        ids.append(alert_id)
    return token, first, second, ids


async def _list(client: Any, token: str, **query: Any) -> tuple[int, dict[str, Any]]:
    response = await client.get("/api/v1/alerts", params=query, headers=auth(token))
    return response.status, await response.json()


async def test_filters(client: Any) -> None:
    token, first, second, ids = await _seed(client)
    status, page = await _list(client, token)
    assert status == 200, page
    assert [item["id"] for item in page["items"]] == ids[::-1]
    assert page["next_cursor"] is None
    _, page = await _list(client, token, strategy=second["id"])
    assert [item["id"] for item in page["items"]] == [ids[3]]
    _, page = await _list(client, token, ticker="AAPL", action="buy")
    assert [item["id"] for item in page["items"]] == [ids[3], ids[0]]
    _, page = await _list(
        client,
        token,
        since=(T0 + timedelta(minutes=10)).isoformat(),
        until=(T0 + timedelta(minutes=80)).isoformat(),
    )
    assert [item["id"] for item in page["items"]] == [ids[2], ids[1]]
    _, page = await _list(client, token, strategy=first["id"], ticker="MSFT")
    assert [item["id"] for item in page["items"]] == [ids[4], ids[2]]


async def test_cursor_pages_cover_everything_once(client: Any) -> None:
    token, _, _, ids = await _seed(client)
    seen: list[str] = []
    cursor = None
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        status, page = await _list(client, token, **query)
        assert status == 200
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


async def test_bad_queries_are_400(client: Any) -> None:
    token, _, _, _ = await _seed(client)
    for query in (
        {"action": "hold"},
        {"limit": 0},
        {"limit": 1000},
        {"cursor": "garbage!"},
        {"cursor": "WyJub3QgYSBkYXRlIiwgMV0"},
        {"since": "yesterday"},
        {"since": T0.isoformat(), "until": T0.isoformat()},
        {"strategy": "nope"},
        {"unknown": "1"},
    ):
        status, body = await _list(client, token, **query)
        assert status == 400, (query, body)
        assert body["error"] is True


async def test_visibility_of_alerts(client: Any) -> None:
    token, first, second, ids = await _seed(client)
    friend_id, friend = await make_user(client)
    _, stranger = await make_user(client)
    _, page = await _list(client, stranger)
    assert page["items"] == []
    status, _ = await _list(client, stranger, strategy=first["id"])
    assert status == 404
    assert (await client.get(f"/api/v1/alerts/{ids[0]}", headers=auth(stranger))).status == 404
    await client.patch(
        f"/api/v1/strategies/{second['id']}",
        json={"shared_with": [friend_id]},
        headers=auth(token),
    )
    _, page = await _list(client, friend)
    assert [item["id"] for item in page["items"]] == [ids[3]]
    one = await client.get(f"/api/v1/alerts/{ids[3]}", headers=auth(friend))
    assert one.status == 200
    assert (await one.json())["raw_body"]
    assert (await client.delete(f"/api/v1/alerts/{ids[3]}", headers=auth(friend))).status == 403
    assert (await client.delete(f"/api/v1/alerts/{ids[0]}", headers=auth(stranger))).status == 404
    assert (await client.get("/api/v1/alerts/not-a-uuid", headers=auth(token))).status == 404
    assert (await client.get("/api/v1/alerts")).status == 401


async def test_stats_series_is_bucketed_and_gap_filled(client: Any) -> None:
    token, first, _, _ = await _seed(client)
    query = {
        "since": T0.isoformat(),
        "until": (T0 + timedelta(hours=4)).isoformat(),
        "bucket": "1h",
    }
    response = await client.get("/api/v1/alerts/stats", params=query, headers=auth(token))
    body = await response.json()
    assert response.status == 200, body
    assert body["bucket_seconds"] == 3600
    assert [(p["count"], p["buy_volume"], p["sell_volume"]) for p in body["series"]] == [
        (2, 2.0, 1.5),
        (2, 12.0, 0.0),
        (0, 0.0, 0.0),
        (1, 0.0, 0.0),
    ]
    assert body["series"][0]["t"].startswith("2026-01-05T10:00:00")
    assert body["series"][3]["t"].startswith("2026-01-05T13:00:00")
    query |= {"strategy": first["id"], "ticker": "AAPL", "bucket": "1d"}
    response = await client.get("/api/v1/alerts/stats", params=query, headers=auth(token))
    series = (await response.json())["series"]
    assert [(p["count"], p["buy_volume"], p["sell_volume"]) for p in series] == [(2, 2.0, 1.5)]
    for bad in ({"bucket": "7s"}, {"bucket": "1m", "since": "2020-01-01T00:00:00Z"}):
        response = await client.get("/api/v1/alerts/stats", params=bad, headers=auth(token))
        assert response.status == 400


async def _next_pub(ws: Any) -> dict[str, Any]:
    while True:
        message = await receive(ws)
        if message.get("type") == "pub":
            return message


async def _fan_out(client: Any) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    ws = await connect(client, token)
    reply = await request(ws, "subscribe", channel=strategy["channel"])
    assert "result" in reply, reply
    alert_id = await _post(client, strategy, ticker="BTCUSD", action="buy", price=1)
    message = await _next_pub(ws)
    assert message["channel"] == strategy["channel"]
    assert message["data"]["type"] == "alert.created"
    assert message["data"]["alert"]["id"] == alert_id
    assert message["data"]["alert"]["ticker"] == "BTCUSD"
    assert message["data"]["alert"]["raw_body"]
    signed = await post_signed(client, strategy, {"ticker": "ETHUSD"})
    assert signed.status == 201
    assert (await _next_pub(ws))["data"]["alert"]["ticker"] == "ETHUSD"
    deleted = await client.delete(f"/api/v1/alerts/{alert_id}", headers=auth(token))
    assert deleted.status == 204
    message = await _next_pub(ws)
    assert message["data"] == {
        "type": "alert.deleted",
        "alert_id": alert_id,
        "event_id": message["data"]["event_id"],
    }
    # The feed's history has every acknowledged alert, for clients that reconnect.
    history = await request(ws, "history", channel=strategy["channel"])
    assert [p["data"]["type"] for p in history["result"]["publications"]] == [
        "alert.created",
        "alert.created",
        "alert.deleted",
    ]
    await ws.close()


async def test_alerts_fan_out_to_subscribers(client: Any) -> None:
    await _fan_out(client)


async def test_alerts_fan_out_through_redis(redis_client: Any) -> None:
    await _fan_out(redis_client)
