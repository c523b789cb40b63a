"""The batched fan-out (``Connection.deliver_all``) and the shared join of coalesced frames
behave exactly like one ``deliver`` per connection: same bytes, same order, same writes, same
slow-consumer closes."""

from __future__ import annotations

import asyncio
from typing import Any

from handlers.realtime.transport import Connection, Flusher
from handlers.realtime.websocket import ARENA_WEBSOCKET
from services.realtime.codecs.arena import CLOSE_SLOW_CONSUMER
from services.realtime.framing import websocket_close_frame
from tests.handlers.realtime.test_transport import FakeTransport


class BufferingTransport(FakeTransport):
    """A transport whose peer does not read: ``buffered`` bytes stay unsent."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered = 0

    def get_write_buffer_size(self) -> int:
        return self.buffered


def _connections(
    n: int, flusher: Flusher, *, max_messages: int = 1000, max_bytes: int = 1 << 20
) -> tuple[list[Connection], list[FakeTransport]]:
    transports = [FakeTransport() for _ in range(n)]
    conns = []
    for i, transport in enumerate(transports):
        asyncio_transport: Any = transport
        conns.append(
            Connection(
                f"c{i}",
                asyncio_transport,
                flusher,
                ARENA_WEBSOCKET,
                max_messages=max_messages,
                max_bytes=max_bytes,
            )
        )
    return conns, transports


async def _next_iterations() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


# Loop iterations of a channel's traffic: publications per iteration, and a reply that
# connection 1 sends before the publications of that iteration (a subscribe reply, a ping).
SCHEDULE: list[tuple[int, bool]] = [(1, False), (1, True), (3, False), (2, True), (1, False)]
SCHEDULE += [(1, False), (4, True), (1, False), (1, False), (1, True)]


async def _play(batched: bool) -> list[tuple[list[bytes], bool]]:
    flusher = Flusher()
    conns, transports = _connections(4, flusher)
    group = dict.fromkeys(conns)
    offset = 0
    for publications, reply in SCHEDULE:
        if reply:
            conns[1].send(b"reply-%d" % offset)
        for _ in range(publications):
            offset += 1
            frame = b"pub-%d;" % offset
            if batched:
                Connection.deliver_all(group, frame)
            else:
                for conn in conns:
                    conn.deliver(frame)
        await _next_iterations()
    return [(t.written, flusher.direct) for t in transports]


async def test_deliver_all_writes_what_one_deliver_per_connection_writes() -> None:
    one_by_one = await _play(batched=False)
    batched = await _play(batched=True)
    assert batched == one_by_one
    # Every frame, in order, and both regimes were used (several writes held several frames).
    received = b"".join(one_by_one[0][0])
    assert received == b"".join(b"pub-%d;" % i for i in range(1, 17))
    assert any(len(chunk) > len(b"pub-10;") for chunk in one_by_one[0][0])
    assert len(one_by_one[0][0]) < 16
    assert b"".join(one_by_one[1][0]).startswith(b"pub-1;reply-1pub-2;")


async def test_connections_with_different_queues_get_their_own_bytes() -> None:
    flusher = Flusher()
    flusher.direct = False  # load: queued, one write per connection per iteration
    a, a_transports = _connections(3, flusher)
    b, b_transports = _connections(2, flusher)
    b[1].send(b"reply;")
    for i in range(2):
        Connection.deliver_all(dict.fromkeys(a), b"a%d;" % i)
        Connection.deliver_all(dict.fromkeys(b), b"b%d;" % i)
    await _next_iterations()
    assert [t.written for t in a_transports] == [[b"a0;a1;"]] * 3
    assert [t.written for t in b_transports] == [[b"b0;b1;"], [b"reply;b0;b1;"]]


async def test_a_slow_consumer_is_closed_by_a_direct_fanout_write() -> None:
    flusher = Flusher()
    conns, transports = _connections(3, flusher, max_bytes=100)
    slow = BufferingTransport()
    asyncio_transport: Any = slow
    conns[1]._transport = asyncio_transport  # the middle one stopped reading
    slow.buffered = 101
    Connection.deliver_all(dict.fromkeys(conns), b"frame;")
    assert conns[1].closed
    assert conns[1].close_code == CLOSE_SLOW_CONSUMER
    assert slow.written == [b"frame;", websocket_close_frame(CLOSE_SLOW_CONSUMER, "slow consumer")]
    assert [transports[0].written, transports[2].written] == [[b"frame;"], [b"frame;"]]
    Connection.deliver_all(dict.fromkeys(conns), b"next;")  # the closed one gets nothing more
    await _next_iterations()
    assert len(slow.written) == 2


async def test_a_slow_consumer_is_closed_when_its_queue_overflows_under_load() -> None:
    flusher = Flusher()
    flusher.direct = False
    conns, transports = _connections(2, flusher, max_messages=3)
    conns[0].send(b"reply;")  # one more frame queued than the other connection
    for i in range(3):
        Connection.deliver_all(dict.fromkeys(conns), b"p%d;" % i)
    assert conns[0].closed
    assert conns[0].close_code == CLOSE_SLOW_CONSUMER
    assert not conns[1].closed
    await _next_iterations()
    close = websocket_close_frame(CLOSE_SLOW_CONSUMER, "slow consumer")
    assert transports[0].written == [close]  # the queue is dropped, the close code goes out
    assert transports[1].written == [b"p0;p1;p2;"]
