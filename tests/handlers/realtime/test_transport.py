"""Connection write paths against a transport that fails: the fan-out must go on."""

from __future__ import annotations

import asyncio
from typing import Any

from handlers.realtime.transport import Connection, Flusher
from handlers.realtime.websocket import ARENA_WEBSOCKET
from services.realtime.codecs.arena import CLOSE_GOING_AWAY


class FakeTransport:
    """Records what is written; ``broken`` makes every write raise."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.broken:
            raise RuntimeError("socket gone")
        self.written.append(bytes(data))

    def writelines(self, data: list[bytes]) -> None:
        if self.broken:
            raise RuntimeError("socket gone")
        self.written.append(b"".join(data))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def _connection(name: str, transport: FakeTransport, flusher: Flusher) -> Connection:
    asyncio_transport: Any = transport
    return Connection(
        name, asyncio_transport, flusher, ARENA_WEBSOCKET, max_messages=1000, max_bytes=1 << 20
    )


async def test_a_failing_direct_write_closes_only_that_connection() -> None:
    flusher = Flusher()
    bad_transport, good_transport = FakeTransport(broken=True), FakeTransport()
    bad = _connection("bad", bad_transport, flusher)
    good = _connection("good", good_transport, flusher)
    for conn in (bad, good):  # what Hub._dispatch does
        conn.deliver(b"frame-1")
    assert good_transport.written == [b"frame-1"]
    assert bad.closed
    assert bad.close_code == CLOSE_GOING_AWAY
    good.deliver(b"frame-2")  # same iteration: queued behind the direct write
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert good_transport.written == [b"frame-1", b"frame-2"]


async def test_a_failing_coalesced_write_closes_only_that_connection() -> None:
    flusher = Flusher()
    flusher.direct = False  # under load: every frame is queued and flushed once per iteration
    bad_transport, good_transport = FakeTransport(), FakeTransport()
    bad = _connection("bad", bad_transport, flusher)
    good = _connection("good", good_transport, flusher)
    for frame in (b"a", b"b"):
        for conn in (bad, good):
            conn.deliver(frame)
    bad_transport.broken = True
    await asyncio.sleep(0)
    assert good_transport.written == [b"ab"]
    assert bad.closed
    assert bad.close_code == CLOSE_GOING_AWAY
