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


def _text_frames(data: bytes) -> list[bytes]:
    """The payloads of the unmasked WebSocket text frames in ``data`` (what a client reads)."""
    payloads = []
    while data:
        assert data[0] == 0x81, data[:2]
        size, start = data[1], 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(data[2:10], "big"), 10
        payloads.append(data[start : start + size])
        data = data[start + size :]
    return payloads


async def test_deliver_many_writes_what_deliver_all_of_each_frame_writes_in_one_write() -> None:
    frames = [b"f1;", b"f2;", b"f3;"]
    for direct in (True, False):
        one_by_one, batched = Flusher(), Flusher()
        one_by_one.direct = batched.direct = direct
        a, a_transports = _connections(3, one_by_one)
        b, b_transports = _connections(3, batched)
        a[2].closed = b[2].closed = True  # a closed connection gets nothing either way
        for frame in frames:
            Connection.deliver_all(dict.fromkeys(a), frame)
        Connection.deliver_many(dict.fromkeys(b), frames)
        await _next_iterations()
        for ta, tb in zip(a_transports, b_transports, strict=True):
            assert b"".join(tb.written) == b"".join(ta.written)
        assert [t.written for t in b_transports] == [[b"f1;f2;f3;"], [b"f1;f2;f3;"], []]
        # A batch is one write per connection: the flusher sees light load (and leaves or
        # stays out of the coalescing regime), where one frame per call made it coalesce.
        assert batched.direct
        assert not one_by_one.direct


async def test_a_queued_connection_gets_the_batch_after_what_it_had_queued() -> None:
    flusher = Flusher()
    conns, transports = _connections(2, flusher)
    Connection.deliver_all(dict.fromkeys(conns), b"p1;")  # written at once
    conns[1].send(b"reply;")  # queued behind the direct write of this iteration
    Connection.deliver_many(dict.fromkeys(conns), [b"p2;", b"p3;"])
    await _next_iterations()
    assert transports[0].written == [b"p1;", b"p2;p3;"]
    assert transports[1].written == [b"p1;", b"reply;p2;p3;"]
