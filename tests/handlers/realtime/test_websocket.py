"""The WebSocket endpoint (``handlers/realtime``): upgrade, frames, close codes, batched writes,
slow consumers, heartbeats and metrics, on the real app (memory broker, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from handlers import keys
from server.app import create_app
from tests.helpers import DEADLINE, close_code, connect, eventually, make_user, receive, request


def _masked(data: str | bytes, first_byte: int = 0x81) -> bytes:
    """A client-to-server frame (clients must mask); a final text frame by default."""
    payload = data.encode() if isinstance(data, str) else data
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = len(payload)
    if size < 126:
        header = bytes((first_byte, 0x80 | size))
    elif size < 65536:
        header = bytes((first_byte, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first_byte, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + mask + body


def _close_codes(data: bytes) -> list[int]:
    """The codes of the close frames in a server-to-client byte stream (unmasked frames)."""
    codes, pos = [], 0
    while pos + 2 <= len(data):
        opcode, size = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if size == 126:
            size, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif size == 127:
            size, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        if opcode == 0x8 and size >= 2:
            codes.append(int.from_bytes(data[pos : pos + 2], "big"))
        pos += size
    return codes


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


async def test_binary_frames_are_refused(client: Any, admin: str) -> None:
    ws = await connect(client, admin)
    await ws.send_bytes(b"\x00\x01")
    assert await close_code(ws) == 1003


async def test_allowed_origin_connects(client: Any, admin: str) -> None:
    ws = await connect(client, admin, headers={"Origin": "http://127.0.0.1:8080"})
    assert "result" in await request(ws, "ping")


async def test_queued_frames_are_written_together(client: Any, admin: str) -> None:
    """Under load, publications produced in one loop iteration reach a connection in one write;
    at a light load a publication is written at once, without waiting for the next iteration."""
    app = client.server.app
    hub, flusher = app[keys.hub], app[keys.flusher]
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


def _ping_of_size(size: int) -> str:
    """A ``ping`` command padded to exactly ``size`` bytes of UTF-8."""
    empty = '{"id": "max", "type": "ping", "pad": ""}'
    text = empty[:-2] + "x" * (size - len(empty)) + empty[-2:]
    assert len(text.encode()) == size
    return text


async def test_a_frame_of_exactly_the_maximum_size_is_accepted(client: Any, admin: str) -> None:
    limit = client.server.app[keys.config].ws.max_frame_bytes
    assert limit == 65536  # WS_MAX_FRAME_BYTES, as documented
    ws = await connect(client, admin)
    await ws.send_str(_ping_of_size(limit))
    reply = await receive(ws)
    assert (reply["id"], reply["result"]) == ("max", {})
    await ws.send_str(_ping_of_size(limit + 1))
    assert await close_code(ws) == 1009


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(_masked(b"x" * (65536 + 1)), 1009, id="too-big"),
        pytest.param(_masked(b"\xff\xfe"), 1007, id="invalid-utf8"),
        pytest.param(_masked(b"{}", first_byte=0xC1), 1002, id="reserved-bit"),
    ],
)
async def test_disconnect_metric_records_the_close_code_aiohttp_sent(
    client: Any, admin: str, frame: bytes, code: int
) -> None:
    """aiohttp closes by itself on a protocol violation; ``arena_ws_disconnects_total`` counts
    the code it sent (not 1006, nor the code the client echoed)."""
    reader, writer = await raw_subscriber(client, admin, "alerts:metric")
    writer.write(frame)
    await writer.drain()
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), DEADLINE):
        data += chunk
        if _close_codes(data):
            writer.write(_masked((1000).to_bytes(2, "big"), first_byte=0x88))  # the client's echo
            await writer.drain()
    assert _close_codes(data) == [code]
    writer.close()
    registry = client.server.app[keys.connections]
    deadline = time.monotonic() + 10
    while len(registry) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    metrics = await (await client.get("/metrics")).text()
    recorded = [
        line for line in metrics.splitlines() if line.startswith("arena_ws_disconnects_total")
    ]
    assert recorded == [f'arena_ws_disconnects_total{{code="{code}"}} 1.0'], recorded


async def _server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server-to-client frame: ``(opcode, payload)``."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(size)


async def test_an_upgraded_connection_releases_aiohttps_http_parsing_state(
    client: Any, admin: str
) -> None:
    """Once upgraded, a connection keeps neither aiohttp's HTTP request parser nor its request
    queue (``release_http_state``, about 1.5 KB per idle connection) and behaves the same:
    frames sent in the same write as the handshake are served, a burst large enough to make
    aiohttp pause and resume reading is answered in full and in order, publications arrive."""
    app = client.server.app
    reader, writer = await asyncio.open_connection(client.host, client.port)
    handshake = (
        f"GET /ws HTTP/1.1\r\nHost: {client.host}:{client.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    auth = orjson.dumps({"id": 1, "type": "authenticate", "token": admin}).decode()
    subscribe = orjson.dumps({"id": 2, "type": "subscribe", "channel": "alerts:trim"}).decode()
    # 1,000 pings of 125 bytes (the largest control frame): more than aiohttp's WebSocket
    # reader buffers (64 KiB) before it pauses reading
    pings = [bytes([i % 251]) * 125 for i in range(1000)]
    writer.write(
        handshake
        + _masked(auth)
        + _masked(subscribe)
        + b"".join(_masked(p, first_byte=0x89) for p in pings)
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    replies: list[dict[str, Any]] = []
    pongs: list[bytes] = []
    while len(replies) < 2 or len(pongs) < len(pings):
        opcode, payload = await asyncio.wait_for(_server_frame(reader), DEADLINE)
        if opcode == 0x1:
            replies.append(orjson.loads(payload))
        else:
            assert opcode == 0xA
            pongs.append(payload)
    assert [r["id"] for r in replies] == [1, 2]
    assert all("result" in r for r in replies)
    assert pongs == pings

    (conn,) = app[keys.connections].connections()
    protocol = conn._transport.get_protocol()
    assert protocol._parser is None
    assert protocol._messages == ()

    await app[keys.hub].publish("alerts:trim", {"n": 1})
    opcode, payload = await asyncio.wait_for(_server_frame(reader), DEADLINE)
    assert opcode == 0x1
    assert orjson.loads(payload)["data"] == {"n": 1}
    writer.write(_masked(b"\x03\xe8", first_byte=0x88))  # close 1000
    opcode, payload = await asyncio.wait_for(_server_frame(reader), DEADLINE)
    assert opcode == 0x8
    assert payload[:2] == b"\x03\xe8"
    writer.close()
    await eventually(lambda: len(app[keys.connections]) == 0, what="the connection to end")
