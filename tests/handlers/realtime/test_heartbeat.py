"""The shared WebSocket heartbeat (``handlers/realtime/heartbeat.py``): quiet peers are pinged,
a peer that answers stays, one that does not is dropped (recorded as ``1006``), and client pings
are answered. Every wait is on an event (a frame, the registry), never on elapsed time."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from handlers import keys
from handlers.realtime.heartbeat import heartbeat_key
from server.app import create_app
from tests.handlers.realtime.test_websocket import _masked, raw_subscriber
from tests.helpers import DEADLINE, eventually, make_user


class _Frames:
    """Reads the server's (unmasked) frames from a raw socket, one ``(opcode, payload)`` at a
    time."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    async def next(self) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), DEADLINE)
        opcode, size = head[0] & 0x0F, head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self.reader.readexactly(8), "big")
        return opcode, await asyncio.wait_for(self.reader.readexactly(size), DEADLINE)


async def _heartbeat_client(aiohttp_client: Any, make_settings: Any) -> tuple[Any, str]:
    client = await aiohttp_client(create_app(make_settings(WS_HEARTBEAT="1")))
    _, token = await make_user(client, "admin")
    return client, token


async def test_a_quiet_peer_that_answers_pings_stays_connected(
    aiohttp_client: Any, make_settings: Any
) -> None:
    client, token = await _heartbeat_client(aiohttp_client, make_settings)
    reader, writer = await raw_subscriber(client, token, "alerts:hb-alive")
    frames = _Frames(reader)
    pings = 0
    while pings < 3:  # three heartbeats, each answered, and nothing else sent
        opcode, payload = await frames.next()
        if opcode == 0x9:
            pings += 1
            writer.write(_masked(payload, first_byte=0x8A))
            await writer.drain()
    registry = client.server.app[keys.connections]
    assert len(registry) == 1
    writer.write(_masked(orjson.dumps({"id": 9, "type": "ping"}).decode()))
    while True:
        opcode, payload = await frames.next()
        if opcode == 0x1 and orjson.loads(payload).get("id") == 9:
            break
    writer.close()
    sweep = client.server.app[heartbeat_key]
    await eventually(lambda: len(sweep) == 0, what="the closed connection left the sweep")


async def test_a_peer_that_never_answers_is_dropped_as_1006(
    aiohttp_client: Any, make_settings: Any
) -> None:
    client, token = await _heartbeat_client(aiohttp_client, make_settings)
    registry = client.server.app[keys.connections]
    reader, writer = await raw_subscriber(client, token, "alerts:hb-dead")
    frames = _Frames(reader)
    opcodes = []
    while True:
        try:
            opcode, _ = await frames.next()
        except asyncio.IncompleteReadError:  # the server closed the socket
            break
        opcodes.append(opcode)
    assert 0x9 in opcodes  # pinged before being dropped
    assert 0x8 not in opcodes  # no close frame: the peer is treated as gone
    await eventually(lambda: len(registry) == 0, what="the dead peer unregistered")
    metrics = await (await client.get("/metrics")).text()
    assert 'arena_ws_disconnects_total{code="1006"} 1.0' in metrics.splitlines()
    writer.close()


async def test_a_client_ping_gets_its_pong(client: Any) -> None:
    _, token = await make_user(client, "admin")
    reader, writer = await raw_subscriber(client, token, "alerts:hb-pong")
    writer.write(_masked(b"are you there", first_byte=0x89))
    await writer.drain()
    frames = _Frames(reader)
    while True:
        opcode, payload = await frames.next()
        if opcode == 0xA:
            assert payload == b"are you there"
            break
    writer.close()
