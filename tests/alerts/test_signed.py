"""Standard Webhooks signed ingestion: verification, idempotency, replay storms, durability."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest

from server.app import create_app
from services.alerts.signatures import sign
from tests.alerts.util import (
    TcpProxy,
    auth,
    count_rows,
    create_strategy,
    post_signed,
    signed_headers,
    tv_path,
)
from tests.helpers import connect, make_user, receive, request


async def _owner_strategy(client: Any) -> tuple[str, dict[str, Any]]:
    _, token = await make_user(client)
    return token, await create_strategy(client, token)


async def test_signed_alert_is_stored_with_its_webhook_id(client: Any) -> None:
    token, strategy = await _owner_strategy(client)
    response = await post_signed(
        client, strategy, {"ticker": "SPY", "action": "buy", "quantity": 10}, msg_id="msg_1"
    )
    reply = await response.json()
    assert response.status == 201, reply
    alert = await (await client.get(f"/api/v1/alerts/{reply['id']}", headers=auth(token))).json()
    assert (alert["source"], alert["webhook_id"], alert["ticker"]) == ("signed", "msg_1", "SPY")


async def test_replay_returns_2xx_and_creates_nothing(client: Any) -> None:
    _, strategy = await _owner_strategy(client)
    body = orjson.dumps({"ticker": "SPY", "action": "sell"})
    headers = signed_headers(strategy["secrets"]["signing_secret"], body, msg_id="msg_replay")
    url = f"/webhooks/alerts/{strategy['id']}"
    first = await client.post(url, data=body, headers=headers)
    again = await client.post(url, data=body, headers=headers)
    assert first.status == 201
    assert again.status == 200
    assert (await again.json()) == {"id": (await first.json())["id"], "duplicate": True}
    assert await count_rows(client, "alerts", strategy["id"]) == 1
    assert await count_rows(client, "outbox", strategy["id"]) == 1


async def test_replay_storm_creates_one_alert_and_one_publication(client: Any) -> None:
    token, strategy = await _owner_strategy(client)
    channel = f"alerts:{strategy['id']}"
    ws = await connect(client, token)
    reply = await request(ws, "subscribe", channel=channel)
    assert "result" in reply, reply
    body = orjson.dumps({"ticker": "QQQ", "action": "buy", "quantity": 1})
    headers = signed_headers(strategy["secrets"]["signing_secret"], body, msg_id="msg_storm")
    url = f"/webhooks/alerts/{strategy['id']}"

    async def post() -> int:
        response = await client.post(url, data=body, headers=headers)
        await response.read()
        return int(response.status)

    statuses = await asyncio.gather(*(post() for _ in range(100)))
    assert sorted(statuses) == [200] * 99 + [201]
    assert await count_rows(client, "alerts", strategy["id"]) == 1
    assert await count_rows(client, "outbox", strategy["id"]) == 1
    # A later, different message marks the end: the relay publishes in outbox order, so any
    # duplicate publication of the storm would arrive before it.
    marker = await post_signed(client, strategy, {"ticker": "MARK"}, msg_id="msg_marker")
    assert marker.status == 201
    received = []
    while True:
        message = await receive(ws)
        if message.get("type") != "pub":
            continue
        received.append(message)
        if message["data"]["alert"]["ticker"] == "MARK":
            break
    assert [m["data"]["alert"]["ticker"] for m in received] == ["QQQ", "MARK"]
    assert [m["offset"] for m in received] == [1, 2]
    await ws.close()


async def test_invalid_signature_is_401_and_stores_nothing(client: Any) -> None:
    _, strategy = await _owner_strategy(client)
    _, other = await _owner_strategy(client)
    body = b'{"ticker": "SPY"}'
    headers = signed_headers(other["secrets"]["signing_secret"], body)
    response = await client.post(f"/webhooks/alerts/{strategy['id']}", data=body, headers=headers)
    assert response.status == 401
    tampered = signed_headers(strategy["secrets"]["signing_secret"], body)
    response = await client.post(
        f"/webhooks/alerts/{strategy['id']}", data=b'{"ticker": "SPX"}', headers=tampered
    )
    assert response.status == 401
    assert await count_rows(client, "alerts", strategy["id"]) == 0


@pytest.mark.parametrize("skew", [-301, 301, -86_400])
async def test_stale_or_future_timestamps_are_401(client: Any, skew: int) -> None:
    _, strategy = await _owner_strategy(client)
    response = await post_signed(client, strategy, {"a": 1}, timestamp=int(time.time()) + skew)
    assert response.status == 401
    assert await count_rows(client, "alerts", strategy["id"]) == 0


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-id": None},
        {"webhook-timestamp": None},
        {"webhook-signature": None},
        {"webhook-timestamp": "soon"},
        {"webhook-timestamp": "1e9"},
        {"webhook-timestamp": "99999999999999999999"},
        {"webhook-signature": "v1,@@@"},
        {"webhook-signature": "v1,"},
        {"webhook-signature": "v2,abc"},
        {"webhook-signature": ","},
        {"webhook-id": "a b"},
        {"webhook-id": "x" * 300},
    ],
)
async def test_malformed_headers_are_400_never_500(client: Any, change: dict[str, Any]) -> None:
    _, strategy = await _owner_strategy(client)
    body = b'{"ticker": "SPY"}'
    headers = signed_headers(strategy["secrets"]["signing_secret"], body)
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    response = await client.post(f"/webhooks/alerts/{strategy['id']}", data=body, headers=headers)
    reply = await response.json()
    assert response.status == 400, reply
    assert reply["error"] is True
    assert await count_rows(client, "alerts", strategy["id"]) == 0


async def test_signed_but_broken_json_is_400(client: Any) -> None:
    _, strategy = await _owner_strategy(client)
    body = b'{"ticker": '
    headers = signed_headers(strategy["secrets"]["signing_secret"], body)
    response = await client.post(f"/webhooks/alerts/{strategy['id']}", data=body, headers=headers)
    assert response.status == 400
    assert await count_rows(client, "alerts", strategy["id"]) == 0


async def test_unknown_strategy_is_404(client: Any) -> None:
    _, strategy = await _owner_strategy(client)
    body = b"{}"
    headers = signed_headers(strategy["secrets"]["signing_secret"], body)
    for target in ("00000000-0000-4000-8000-000000000000", "not-a-uuid"):
        response = await client.post(f"/webhooks/alerts/{target}", data=body, headers=headers)
        assert response.status == 404


async def test_old_signing_secret_works_during_the_grace_period_only(client: Any) -> None:
    token, strategy = await _owner_strategy(client)
    old_secret = strategy["secrets"]["signing_secret"]
    url = f"/api/v1/strategies/{strategy['id']}/rotate"
    rotated = await (await client.post(url, headers=auth(token))).json()
    new_secret = rotated["secrets"]["signing_secret"]
    assert new_secret != old_secret
    assert len(rotated["secret_generations"]) == 2
    # During the grace period both keys verify; a sender may sign with both at once.
    body = b'{"ticker": "A"}'
    now = int(time.time())
    both = f"{sign(old_secret, 'm1', now, body)} {sign(new_secret, 'm1', now, body)}"
    headers = {
        "webhook-id": "m1",
        "webhook-timestamp": str(now),
        "webhook-signature": both,
        "Content-Type": "application/json",
    }
    response = await client.post(f"/webhooks/alerts/{strategy['id']}", data=body, headers=headers)
    assert response.status == 201
    old_only = await post_signed(client, strategy, {"ticker": "B"})
    assert old_only.status == 201
    # Revoke the old generation now.
    response = await client.post(url, json={"grace_seconds": 0}, headers=auth(token))
    assert response.status == 200
    old_only = await post_signed(client, strategy, {"ticker": "C"})
    assert old_only.status == 401
    newest = (await response.json())["secrets"]
    fresh = await post_signed(client, {"id": strategy["id"], "secrets": newest}, {"ticker": "D"})
    assert fresh.status == 201


async def test_database_down_is_503_and_nothing_is_acknowledged(
    aiohttp_client: Any, make_settings: Any, database_url: str
) -> None:
    target = urlsplit(database_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    proxied = urlunsplit(target._replace(netloc=f"{target.username}@127.0.0.1:{proxy.port}"))
    client = await aiohttp_client(create_app(make_settings(DATABASE_URL=proxied)))
    _, strategy = await _owner_strategy(client)
    await proxy.cut()
    response = await post_signed(client, strategy, {"ticker": "SPY"})
    reply = await response.json()
    assert response.status == 503, reply
    assert response.headers["Retry-After"] == "1"
    tv = await client.post(f"/webhooks/tv/{strategy['secrets']['url_secret']}", data="buy")
    assert tv.status == 503
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM alerts") == 0
    finally:
        await conn.close()


@pytest.mark.parametrize("path", ["signed", "tradingview"])
async def test_the_feed_event_carries_the_alert_exactly_as_the_api_shows_it(
    client: Any, path: str
) -> None:
    """The event is written in the same statement as the row, its ``received_at`` included."""
    token, strategy = await _owner_strategy(client)
    ws = await connect(client, token)
    reply = await request(ws, "subscribe", channel=strategy["channel"])
    assert "result" in reply, reply
    body = {"ticker": "SPY", "action": "buy", "quantity": 2.5, "price": 101.25, "message": path}
    if path == "signed":
        response = await post_signed(client, strategy, body, msg_id="msg_feed")
    else:
        response = await client.post(
            tv_path(strategy),
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
        )
    ack = await response.json()
    assert response.status == 201, ack
    event = await receive(ws, timeout=15)
    while event.get("type") != "pub":
        event = await receive(ws, timeout=15)
    shown = await (await client.get(f"/api/v1/alerts/{ack['id']}", headers=auth(token))).json()
    assert event["data"]["type"] == "alert.created"
    assert event["data"]["alert"] == shown
