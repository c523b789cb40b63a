"""The WebSocket protocol end to end on the real app (memory broker, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType

from handlers import keys
from server.app import create_app
from tests.helpers import (
    DEADLINE,
    connect,
    eventually,
    make_user,
    receive,
    request,
    send,
    service_token,
)


async def _closed_with(ws: Any, timeout: float = DEADLINE) -> int | None:
    """Read until the server closes; returns the close code."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await ws.receive(timeout=deadline - time.monotonic())
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            code: int | None = ws.close_code if msg.type != WSMsgType.CLOSE else msg.data
            return code
    raise AssertionError("connection was not closed")


def _masked(text: str) -> bytes:
    """A client-to-server text frame (clients must mask)."""
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 65536
    if len(payload) < 126:
        return bytes((0x81, 0x80 | len(payload))) + mask + body
    return bytes((0x81, 0x80 | 126)) + len(payload).to_bytes(2, "big") + mask + body


async def raw_subscriber(
    client: Any, token: str, channel: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare socket that upgrades, authenticates and subscribes, then does nothing at all:
    it never reads and never answers pings."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: {client.host}:{client.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    writer.write(_masked(orjson.dumps({"id": 1, "type": "authenticate", "token": token}).decode()))
    writer.write(_masked(orjson.dumps({"id": 2, "type": "subscribe", "channel": channel}).decode()))
    await writer.drain()
    return reader, writer


@pytest.fixture
async def admin(client: Any) -> str:
    return (await make_user(client, "admin"))[1]


async def test_publications_carry_offsets_and_epoch(client: Any, admin: str) -> None:
    ws = await connect(client, admin)
    reply = await request(ws, "subscribe", channel="alerts:s1")
    result = reply["result"]
    assert result == {
        "channel": "alerts:s1",
        "offset": 0,
        "epoch": result["epoch"],
        "recoverable": True,
    }
    hub = client.server.app[keys.hub]
    for i in range(3):
        await hub.publish("alerts:s1", {"i": i})
    pushes = [await receive(ws) for _ in range(3)]
    assert [p["offset"] for p in pushes] == [1, 2, 3]
    assert {p["epoch"] for p in pushes} == {result["epoch"]}
    assert [p["data"] for p in pushes] == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_reconnect_with_since_recovers_exactly_what_was_missed(
    client: Any, admin: str
) -> None:
    hub = client.server.app[keys.hub]
    ws = await connect(client, admin)
    await request(ws, "subscribe", channel="alerts:rec")
    await hub.publish("alerts:rec", "a")
    first = await receive(ws)
    await ws.close()
    for item in ("b", "c", "d"):
        await hub.publish("alerts:rec", item)
    ws = await connect(client, admin)
    reply = await request(
        ws,
        "subscribe",
        channel="alerts:rec",
        since={"offset": first["offset"], "epoch": first["epoch"]},
    )
    result = reply["result"]
    assert result["recovered"] is True
    assert [p["data"] for p in result["publications"]] == ["b", "c", "d"]
    assert [p["offset"] for p in result["publications"]] == [2, 3, 4]
    await hub.publish("alerts:rec", "e")
    live = await receive(ws)
    assert (live["offset"], live["data"]) == (5, "e")


async def test_recovery_with_unknown_epoch_says_not_recovered(client: Any, admin: str) -> None:
    ws = await connect(client, admin)
    reply = await request(
        ws, "subscribe", channel="alerts:ep", since={"offset": 3, "epoch": "gone"}
    )
    assert reply["result"]["recovered"] is False
    assert reply["result"]["publications"] == []


async def test_reconnect_during_publish_is_gap_free(client: Any, admin: str) -> None:
    """A client drops and resubscribes with ``since`` while a publisher keeps publishing."""
    hub = client.server.app[keys.hub]
    channel = "alerts:storm"
    stop = asyncio.Event()
    published = 0

    async def publisher() -> None:
        nonlocal published
        while not stop.is_set():
            await hub.publish(channel, {"n": published})
            published += 1
            await asyncio.sleep(0.0005)

    task = asyncio.create_task(publisher())
    seen: list[int] = []
    epoch = None
    for _round in range(5):
        ws = await connect(client, admin)
        since = {"offset": seen[-1], "epoch": epoch} if seen else None
        fields: dict[str, Any] = {"channel": channel}
        if since:
            fields["since"] = since
        reply = await request(ws, "subscribe", **fields)
        result = reply["result"]
        epoch = result["epoch"]
        if since:
            assert result["recovered"] is True
            seen.extend(p["offset"] for p in result["publications"])
        else:
            seen.append(result["offset"]) if result["offset"] else None
        for _ in range(20):
            seen.append((await receive(ws))["offset"])
        await ws.close()
    stop.set()
    await task
    start = seen[0]
    assert seen == list(range(start, start + len(seen)))


async def test_history_command(client: Any, admin: str) -> None:
    hub = client.server.app[keys.hub]
    for i in range(5):
        await hub.publish("alerts:h", i)
    ws = await connect(client, admin)
    newest = await request(ws, "history", channel="alerts:h", limit=2)
    assert [p["data"] for p in newest["result"]["publications"]] == [3, 4]
    epoch = newest["result"]["epoch"]
    since = await request(
        ws, "history", channel="alerts:h", since={"offset": 1, "epoch": epoch}, limit=10
    )
    assert [p["offset"] for p in since["result"]["publications"]] == [2, 3, 4, 5]
    assert since["result"]["offset"] == 5
    other_epoch = await request(
        ws, "history", channel="alerts:h", since={"offset": 3, "epoch": "old"}, limit=2
    )
    assert [p["offset"] for p in other_epoch["result"]["publications"]] == [4, 5]
    assert other_epoch["result"]["epoch"] == epoch


async def test_unsubscribe_stops_pushes(client: Any, admin: str) -> None:
    hub = client.server.app[keys.hub]
    ws = await connect(client, admin)
    await request(ws, "subscribe", channel="alerts:u1")
    await request(ws, "subscribe", channel="alerts:u2")
    reply = await request(ws, "unsubscribe", channel="alerts:u1")
    assert reply["result"] == {"channel": "alerts:u1"}
    await hub.publish("alerts:u1", "no")
    await hub.publish("alerts:u2", "yes")
    message = await receive(ws)
    assert (message["channel"], message["data"]) == ("alerts:u2", "yes")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('{"type": "ping"}', "bad_request"),
        ('{"id": true, "type": "ping"}', "bad_request"),
        ('{"id": 1, "type": "launch"}', "unknown_command"),
        ('{"id": 1}', "unknown_command"),
        ('{"id": 1, "type": "subscribe"}', "bad_request"),
        ('{"id": 1, "type": "subscribe", "channel": 5}', "bad_request"),
        ('{"id": 1, "type": "subscribe", "channel": "nope"}', "invalid_channel"),
        ('{"id": 1, "type": "subscribe", "channel": "weird:x"}', "invalid_channel"),
        ('{"id": 1, "type": "subscribe", "channel": "alerts:a b"}', "invalid_channel"),
        ('{"id": 1, "type": "subscribe", "channel": "alerts:x", "since": 3}', "bad_request"),
        (
            '{"id": 1, "type": "subscribe", "channel": "alerts:x", "since": {"offset": -1, '
            '"epoch": "e"}}',
            "bad_request",
        ),
        ('{"id": 1, "type": "unsubscribe", "channel": "alerts:never"}', "not_subscribed"),
        ('{"id": 1, "type": "history", "channel": "alerts:x", "limit": "ten"}', "bad_request"),
        ('{"id": 1, "type": "authenticate", "token": "x"}', "already_authenticated"),
    ],
)
async def test_bad_commands_get_error_replies(
    client: Any, admin: str, frame: str, code: str
) -> None:
    ws = await connect(client, admin)
    await ws.send_str(frame)
    reply = await receive(ws)
    assert reply["type"] == "reply"
    assert reply["error"]["code"] == code, reply
    # the connection keeps working
    assert "result" in await request(ws, "ping")


async def test_double_subscribe_is_an_error(client: Any, admin: str) -> None:
    ws = await connect(client, admin)
    await request(ws, "subscribe", channel="alerts:dd")
    reply = await request(ws, "subscribe", channel="alerts:dd")
    assert reply["error"]["code"] == "already_subscribed"


async def test_first_command_must_authenticate(client: Any) -> None:
    ws = await client.ws_connect("/ws")
    await send(ws, "subscribe", channel="alerts:x")
    assert await _closed_with(ws) == 4001


async def test_bad_token_closes_unauthenticated(client: Any) -> None:
    ws = await client.ws_connect("/ws")
    await send(ws, "authenticate", token="not-a-jwt")
    assert await _closed_with(ws) == 4001


async def test_authentication_timeout(aiohttp_client: Any, make_settings: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(WS_AUTH_TIMEOUT="0.2")))
    ws = await client.ws_connect("/ws")
    assert await _closed_with(ws) == 4001


async def test_binary_frames_are_refused(client: Any, admin: str) -> None:
    ws = await connect(client, admin)
    await ws.send_bytes(b"\x00\x01")
    assert await _closed_with(ws) == 1003


async def test_oversized_frame_closes_with_1009(client: Any, admin: str) -> None:
    ws = await connect(client, admin)
    await ws.send_str("x" * (64 * 1024 + 1))
    assert await _closed_with(ws) == 1009


async def test_subscription_limit(aiohttp_client: Any, make_settings: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(WS_MAX_SUBSCRIPTIONS="2")))
    _, token = await make_user(client, "admin")
    ws = await connect(client, token)
    await request(ws, "subscribe", channel="alerts:1")
    await request(ws, "subscribe", channel="alerts:2")
    await send(ws, "subscribe", channel="alerts:3")
    assert await _closed_with(ws) == 4005


async def test_command_flood_is_rate_limited(aiohttp_client: Any, make_settings: Any) -> None:
    client = await aiohttp_client(
        create_app(make_settings(WS_COMMAND_RATE="5", WS_COMMAND_BURST="10"))
    )
    _, token = await make_user(client, "admin")
    ws = await connect(client, token)
    for _ in range(40):
        await send(ws, "ping")
    code = None
    while code is None:
        msg = await ws.receive(timeout=DEADLINE)
        if msg.type == WSMsgType.CLOSE:
            code = msg.data
    assert code == 4029


async def test_foreign_origin_is_refused_before_upgrade(client: Any) -> None:
    response = await client.get(
        "/ws",
        headers={
            "Origin": "https://evil.example",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    )
    assert response.status == 403
    assert (await response.json())["status_code"] == 403


async def test_allowed_origin_connects(client: Any, admin: str) -> None:
    ws = await connect(client, admin, headers={"Origin": "http://127.0.0.1:8080"})
    assert "result" in await request(ws, "ping")


async def test_queued_frames_are_written_together(client: Any, admin: str) -> None:
    """Under load, publications produced in one loop iteration reach a connection in one write;
    at a light load a publication is written at once, without waiting for the next iteration."""
    app = client.server.app
    hub, flusher = app[keys.hub], app[keys.connections].flusher
    ws = await connect(client, admin)
    await request(ws, "subscribe", channel="alerts:batch")
    assert flusher.direct  # nothing was queued yet

    async def burst(start: int) -> int:
        """100 publications in one iteration (the memory broker delivers synchronously);
        returns the number of coalesced writes they took."""
        before = flusher.writes
        for i in range(start, start + 100):
            await hub.publish("alerts:batch", i)
        received = [await receive(ws) for _ in range(100)]
        assert [m["data"] for m in received] == list(range(start, start + 100))
        return flusher.writes - before

    # Light load: the first frame is written at once, the 99 queued behind it in one write,
    # and the flusher switches to coalescing.
    assert await burst(0) == 1
    assert not flusher.direct
    # Load: all 100 in one write.
    assert await burst(100) == 1
    # One publication per iteration: the next flush finds single frames (back to direct
    # writes), after which a publication costs no coalesced write at all.
    await hub.publish("alerts:batch", 200)
    assert (await receive(ws))["data"] == 200
    assert flusher.direct
    before = flusher.writes
    await hub.publish("alerts:batch", 201)
    assert (await receive(ws))["data"] == 201
    assert flusher.writes == before


async def test_slow_consumer_is_disconnected_without_delaying_others(
    aiohttp_client: Any, make_settings: Any
) -> None:
    client = await aiohttp_client(
        create_app(
            make_settings(
                WS_MAX_QUEUE_BYTES="65536",
                WS_MAX_QUEUE_MESSAGES="100000",
                WS_MAX_CONNECTIONS_PER_USER="200",
                WS_USER_COMMAND_BURST="1000",
            )
        )
    )
    _, token = await make_user(client, "admin")
    hub = client.server.app[keys.hub]
    channel = "alerts:slow"
    # The stalled client is a raw socket that completes the handshake and then never reads.
    reader, writer = await raw_subscriber(client, token, channel)
    others = [await connect(client, token) for _ in range(10)]
    for ws in others:
        await request(ws, "subscribe", channel=channel)
    await eventually(
        lambda: hub.subscriber_count(channel) == len(others) + 1, what="every subscriber"
    )
    payload = {"blob": "x" * 2000}
    published = 0
    counts = [0] * len(others)

    async def drain(index: int) -> None:
        while True:
            message = await receive(others[index])
            assert message["offset"] == counts[index] + 1
            counts[index] += 1

    readers = [asyncio.create_task(drain(i)) for i in range(len(others))]

    def _check(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            if task.done():
                task.result()  # a healthy reader failed: raise its error instead of waiting
                raise AssertionError("a healthy reader stopped")

    # Publish until the stalled client overflows (kernel buffers on loopback hold a few MB).
    while hub.subscriber_count(channel) > len(others) and published < 20000:
        for _ in range(4):
            await hub.publish(channel, payload)
            published += 1
        while min(counts) < published - 8:  # healthy readers stay within 16 KB
            await asyncio.sleep(0.001)
            _check(readers)
    assert hub.subscriber_count(channel) == len(others), "the stalled client must be dropped"
    # Reading again, the stalled client finds everything up to the slow-consumer close code.
    close_frame = b"\x88\x0f" + (4004).to_bytes(2, "big") + b"slow consumer"
    data = b""
    while close_frame not in data[-64:]:
        chunk = await asyncio.wait_for(reader.read(1 << 20), DEADLINE)
        assert chunk, "connection ended without the slow-consumer close frame"
        data = data[-64:] + chunk
    for _ in range(5):  # and delivery to everyone else goes on
        for _ in range(4):
            await hub.publish(channel, payload)
            published += 1
        while min(counts) < published - 8:
            await asyncio.sleep(0.001)
            _check(readers)
    try:
        await eventually(lambda: counts == [published] * len(others), what="every frame read")
    finally:
        for task in readers:
            task.cancel()
    metrics = await (await client.get("/metrics")).text()
    assert 'arena_ws_disconnects_total{code="4004"}' in metrics
    writer.close()


async def test_publish_api_with_service_token_and_idempotency(client: Any) -> None:
    token = service_token(client)
    headers = {"Authorization": f"Bearer {token}"}
    body = {"data": {"hello": "world"}, "idempotency_key": "once"}
    first = await client.post("/api/v1/channels/alerts:pub/publish", json=body, headers=headers)
    assert first.status == 200, await first.text()
    again = await client.post("/api/v1/channels/alerts:pub/publish", json=body, headers=headers)
    first_body, again_body = await first.json(), await again.json()
    assert first_body["offset"] == again_body["offset"] == 1
    assert (first_body["duplicate"], again_body["duplicate"]) == (False, True)


def _signed(method: str, body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(time.time() * 1000))
    message = method.encode() + b"|" + body + b"|" + ts.encode()
    return {
        "x-timestamp": ts,
        "x-signature": hmac.new(secret.encode(), message, hashlib.sha256).hexdigest(),
        "Content-Type": "application/json",
    }


async def test_publish_api_with_request_signature(client: Any) -> None:
    secret = client.server.app[keys.config].auth.service_secret
    body = orjson.dumps({"data": [1, 2, 3]})
    ok = await client.post(
        "/api/v1/channels/alerts:sig/publish", data=body, headers=_signed("POST", body, secret)
    )
    assert ok.status == 200
    assert (await ok.json())["offset"] == 1
    stale = await client.post(
        "/api/v1/channels/alerts:sig/publish",
        data=body,
        headers=_signed("POST", body, secret, int(time.time() * 1000) - 3 * 60 * 1000),
    )
    assert stale.status == 401
    forged = await client.post(
        "/api/v1/channels/alerts:sig/publish", data=body, headers=_signed("POST", body, "x" * 40)
    )
    assert forged.status == 401
    hub = client.server.app[keys.hub]
    position = await hub.broker.position("alerts:sig", hub.options("alerts:sig"))
    assert position.offset == 1  # nothing published by the rejected requests


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/v1/channels/alerts:x/publish", b"{", 400),
        ("/api/v1/channels/alerts:x/publish", b'{"data": 1, "extra": 2}', 400),
        ("/api/v1/channels/bogus/publish", b'{"data": 1}', 400),
        ("/api/v1/channels/nowhere:x/publish", b'{"data": 1}', 400),
    ],
)
async def test_publish_api_rejects_bad_input(
    client: Any, path: str, body: bytes, status: int
) -> None:
    headers = {"Authorization": f"Bearer {service_token(client)}"}
    response = await client.post(path, data=body, headers=headers)
    assert response.status == status
    envelope = await response.json()
    assert envelope["error"] is True
    assert envelope["status_code"] == status


async def test_publish_api_refuses_users(client: Any) -> None:
    _, token = await make_user(client, "buyer")
    response = await client.post(
        "/api/v1/channels/alerts:x/publish",
        json={"data": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status == 403
    anonymous = await client.post("/api/v1/channels/alerts:x/publish", json={"data": 1})
    assert anonymous.status == 401


async def test_permission_denied_for_other_users_channel(client: Any) -> None:
    user_id, token = await make_user(client, "buyer")
    other_id, _ = await make_user(client, "buyer")
    ws = await connect(client, token)
    own = await request(ws, "subscribe", channel=f"user:{user_id}")
    assert "result" in own
    foreign = await request(ws, "subscribe", channel=f"user:{other_id}")
    assert foreign["error"]["code"] == "permission_denied"
    history = await request(ws, "history", channel=f"user:{other_id}")
    assert history["error"]["code"] == "permission_denied"


async def test_engine_metrics_are_exported(client: Any, admin: str) -> None:
    ws = await connect(client, admin)
    await request(ws, "subscribe", channel="alerts:m")
    await client.server.app[keys.hub].publish("alerts:m", 1)
    await receive(ws)
    text = await (await client.get("/metrics")).text()
    for name in (
        "arena_ws_connections",
        "arena_subscriptions",
        "arena_publications_total",
        "arena_deliveries_total",
        "arena_publish_deliver_seconds_bucket",
        "arena_ws_commands_total",
    ):
        assert name in text, name


async def test_dead_peer_is_dropped_by_the_heartbeat(
    aiohttp_client: Any, make_settings: Any
) -> None:
    client = await aiohttp_client(create_app(make_settings(WS_HEARTBEAT="1")))
    _, token = await make_user(client, "admin")
    registry = client.server.app[keys.connections]
    reader, writer = await raw_subscriber(client, token, "alerts:hb")
    while not registry.connections():
        await asyncio.sleep(0.01)
    # It never answers the server's pings: the server gives up and closes the socket.
    data = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), DEADLINE)
        if not chunk:
            break
        data += chunk
    assert b"\x89" in data  # at least one ping was sent before giving up
    await eventually(lambda: registry.connections() == [], what="the dead peer unregistered")
    writer.close()


async def test_configured_namespace_is_usable(aiohttp_client: Any, make_settings: Any) -> None:
    settings = make_settings(CHANNEL_NAMESPACES='{"news": {"history_size": 2}}')
    client = await aiohttp_client(create_app(settings))
    _, admin = await make_user(client, "admin")
    _, buyer = await make_user(client, "buyer")
    hub = client.server.app[keys.hub]
    for i in range(3):
        await hub.publish("news:today", i)
    ws = await connect(client, admin)
    history = await request(ws, "history", channel="news:today")
    assert [p["data"] for p in history["result"]["publications"]] == [1, 2]
    stranger = await connect(client, buyer)
    denied = await request(stranger, "subscribe", channel="news:today")
    assert denied["error"]["code"] == "permission_denied"
