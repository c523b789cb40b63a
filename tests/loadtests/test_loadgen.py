"""The fan-out benchmark's load generator counts deliveries, gaps and losses correctly.

The numbers in ``docs/benchmarks.md`` rest on this accounting, so it is checked against the
naive broadcast server of ``bench/raw_server.py`` over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from bench import raw_server
from bench.loadgen import Generator, Stats, WsClient
from tests.helpers import DEADLINE, service_token


async def _publish(url: str, channel: str) -> int:
    body = {"data": {"t": int(time.time() * 1e6), "p": "x" * 150}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/api/v1/channels/{channel}/publish", json=body) as resp,
    ):
        assert resp.status == 200
        offset: int = (await resp.json())["offset"]
        return offset


async def _frames(generator: Generator, expected: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while generator.stats.frames < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stats: dict[str, Any] = await generator.stats_()
    return stats


async def test_generator_counts_deliveries_gaps_and_losses(aiohttp_server: Any) -> None:
    server = await aiohttp_server(raw_server.create_app())
    url = str(server.make_url("")).rstrip("/")
    generator = Generator()
    sets = [["alerts:a"], ["alerts:a", "alerts:b"], ["alerts:b"]]
    result = await generator.connect("127.0.0.1", server.port, "any", sets)
    assert result["connected"] == 3, result
    try:
        for channel in ("alerts:a", "alerts:a", "alerts:b"):
            await _publish(url, channel)
        stats = await _frames(generator, 6)
        assert stats["frames"] == 6  # two subscribers per channel
        assert stats["gaps"] == 0
        assert len(stats["latencies"]) == 6
        assert all(0 <= latency < 5_000_000 for latency in stats["latencies"])
        complete = await generator.stats_(final={"alerts:a": 2, "alerts:b": 1})
        assert complete["lost"] == 0

        # The server skips offset 3 of alerts:a: both of its subscribers see a gap and the
        # publication is counted as lost for each of them.
        server.app[raw_server.offsets_key]["alerts:a"] += 1
        assert await _publish(url, "alerts:a") == 4
        stats = await _frames(generator, 8)
        assert stats["frames"] == 8
        assert stats["gaps"] == 2
        lossy = await generator.stats_(final={"alerts:a": 4, "alerts:b": 1})
        assert lossy["lost"] == 2

        # After a reset, losses count from the offsets reached so far.
        await generator.reset()
        await _publish(url, "alerts:b")
        await _frames(generator, 2)
        fresh = await generator.stats_(final={"alerts:a": 4, "alerts:b": 2})
        assert fresh["frames"] == 2
        assert fresh["lost"] == 0
        assert fresh["disconnects"] == 0
    finally:
        await generator.close()


async def test_centrifuge_protocol_subscribers_count_deliveries(client: Any) -> None:
    """``protocol="centrifuge"``: connect + subscribe in one frame at /connection/websocket of
    the real app, publications counted with their offsets and latencies."""
    token = service_token(client)
    generator = Generator()
    sets = [["alerts:a"], ["alerts:a", "alerts:b"]]
    result = await generator.connect(
        "127.0.0.1", client.port, token, sets, path="/connection/websocket", protocol="centrifuge"
    )
    assert result["connected"] == 2, result
    try:
        for channel in ("alerts:a", "alerts:b", "alerts:a"):
            body = {"data": {"t": int(time.time() * 1e6), "p": "x" * 150}}
            resp = await client.post(
                f"/api/v1/channels/{channel}/publish",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert resp.status == 200
        stats = await _frames(generator, 5)
        assert (stats["frames"], stats["gaps"], stats["duplicates"]) == (5, 0, 0)
        assert len(stats["latencies"]) == 5
        assert (await generator.stats_(final={"alerts:a": 2, "alerts:b": 1}))["lost"] == 0
    finally:
        await generator.close()


def test_centrifuge_frames_with_several_messages_and_a_ping() -> None:
    """A frame may carry several messages, one a line; ``{}`` is a ping answered with ``{}``."""
    sent: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            sent.append(data)

        def is_closing(self) -> bool:
            return False

    async def make() -> WsClient:
        return WsClient(Stats(), "h", 1, "/", "t", ["c:x"], "centrifuge")

    ws = asyncio.run(make())
    ws.transport = Transport()  # type: ignore[assignment]
    ws.upgraded = True
    payload = (
        b"\n".join(
            b'{"push":{"channel":"c:x","pub":{"data":{"t":%d,"p":"a,b"},"offset":%d}}}'
            % (int(time.time() * 1e6), offset)
            for offset in (1, 2, 4)
        )
        + b"\n{}"
    )
    ws._frames(bytes((0x81, 126)) + len(payload).to_bytes(2, "big") + payload)
    assert (ws.stats.frames, ws.stats.gaps, ws.last[b"c:x"]) == (3, 1, 4)
    assert len(ws.stats.latencies) == 3
    assert sent == [b"\x81\x82\x00\x00\x00\x00{}"]  # the pong, masked with the zero key


def test_centrifuge_one_message_frames_gaps_duplicates_and_other_pushes() -> None:
    """The one-message-a-frame path: offsets checked per channel (gap, duplicate), latencies
    taken, a join push and a reply are not publications."""

    async def make() -> WsClient:
        return WsClient(Stats(), "h", 1, "/", "t", ["c:x"], "centrifuge")

    ws = asyncio.run(make())
    ws.upgraded = True
    ws.pending = 1
    now = int(time.time() * 1e6)

    def frame(payload: bytes) -> bytes:
        return bytes((0x81, 126)) + len(payload).to_bytes(2, "big") + payload

    pub = b'{"push":{"channel":"c:x","pub":{"data":{"t":%d,"p":"a:b,c"},"offset":%d}}}'
    frames = [frame(pub % (now, offset)) for offset in (1, 2, 2, 5, 6)]
    frames.insert(2, frame(b'{"push":{"channel":"c:x","join":{"info":{"client":"a","user":"u"}}}}'))
    frames.append(frame(b'{"id":2,"subscribe":{"offset":6,"epoch":"e"}}'))
    data = b"".join(frames)
    ws.data_received(data[:100])  # split mid-frame: the rest waits in the buffer
    ws.data_received(data[100:])
    stats = ws.stats
    assert (stats.frames, stats.gaps, stats.duplicates) == (4, 1, 1)
    assert ws.last[b"c:x"] == 6
    assert ws.received[b"c:x"] == 0
    assert len(stats.latencies) == 4
    assert all(0 <= us < 60_000_000 for us in stats.latencies)
    assert ws.ready.done()
