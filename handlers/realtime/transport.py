"""The WebSocket transport: one client's outgoing side, a bounded queue flushed with one write
per loop tick (:class:`Connection` implements ``services.realtime.client.Client``).

A naive broadcast calls ``send_str`` once per message per socket, so each delivery costs a
coroutine and a socket write. Here a publication is encoded once (per wire protocol) into
complete frame bytes and
:class:`Flusher` picks one of two regimes from what it saw in the last loop iteration:

* **light load** (fewer than two frames per connection per iteration): the first frame a
  connection gets in an iteration is written to its transport at once, so subscribers early in
  a fan-out do not wait for the loop over every other subscriber nor for the next iteration;
  any further frame in the same iteration is queued;
* **load** (a flush found a connection with queued frames): every delivery only appends to the
  connection's queue and each dirty connection gets a single ``transport.write`` of its joined
  frames in the next iteration, so many frames share one write (connections with the same
  frames queued, a channel's subscribers, share one join); the flusher goes back to light load
  as soon as a flush finds no connection with more than one frame.

Frames are never reordered: a frame is written at once only when nothing is queued before it.

The hub hands a publication to all of a channel's connections with one call,
:meth:`Connection.deliver_all` (the wires' ``fanout``), which does what ``deliver`` does for each
with the flusher's state read once and no method call per connection. Publications that arrived
together (a Redis read, a busy loop pass of the memory broker) come as one call of
:meth:`Connection.deliver_many` (the wires' ``fanout_many``): their frames joined once, one
write (or one queue entry) per connection, so to the flusher they are one frame.

A client that stops reading makes its transport's buffer grow. When queue plus transport buffer
exceed ``max_queue_bytes`` (or the queue exceeds ``max_queue_messages``) the connection is closed
with ``Disconnect.SLOW_CONSUMER``; the broadcast never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection

from pubsub.broker import StreamPosition
from services.realtime.client import Client, Identity
from services.realtime.errors import Disconnect
from services.realtime.framing import websocket_close_frame
from services.realtime.wire import Wire

log = logging.getLogger(__name__)

#: seconds a closing connection gets to take the frames still buffered, then it is aborted
CLOSE_TIMEOUT = 5.0


class Flusher:
    """Writes the queues of all connections that got frames during this loop iteration, and
    decides whether a connection with an empty queue may write its first frame of an iteration
    at once (``direct``, light load) or must queue it (load)."""

    __slots__ = ("_dirty", "_scheduled", "batch", "direct", "joined", "tick", "ticking", "writes")

    def __init__(self) -> None:
        self._dirty: list[Connection] = []
        #: the frames of the last multi-frame flush and their join (shared by the connections
        #: that have the same frames queued; emptied after every flush)
        self.batch: list[bytes] = []
        self.joined = b""
        self._scheduled = False
        #: light load: a connection's first frame in an iteration is written at once
        self.direct = True
        #: counts loop iterations in which something was written at once
        self.tick = 0
        self.ticking = False
        #: coalesced writes made by flushes (the direct writes are not counted)
        self.writes = 0

    def mark(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def start_tick(self) -> None:
        """A direct write happened in this iteration: the next one starts a new tick."""
        self.ticking = True
        asyncio.get_running_loop().call_soon(self._next_tick)

    def _next_tick(self) -> None:
        self.tick += 1
        self.ticking = False

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        most = 0
        for conn in dirty:
            written = conn.flush()
            if written > most:
                most = written
        self.writes += len(dirty)
        self.batch = []
        self.joined = b""
        if self.direct:
            # Something was queued behind a direct write: a connection got two frames in one
            # iteration. Coalesce from now on.
            self.direct = most == 0
        else:
            # Back to direct writes once no connection had more than one frame to write.
            self.direct = most <= 1


class Connection:
    """One WebSocket client: the hub delivers into it (``pubsub.hub.Subscriber``) and its
    session replies through it (``services.realtime.client.Client``). ``wire`` is the protocol
    it speaks, framed as WebSocket text frames."""

    __slots__ = (
        "_bytes",
        "_flusher",
        "_queue",
        "_tick",
        "_transport",
        "close_code",
        "closed",
        "conn_id",
        "max_bytes",
        "max_messages",
        "on_close",
        "principal",
        "subscriptions",
        "wire",
    )

    def __init__(
        self,
        conn_id: str,
        transport: asyncio.Transport,
        flusher: Flusher,
        wire: Wire,
        *,
        max_messages: int,
        max_bytes: int,
    ) -> None:
        self.conn_id = conn_id
        self.wire = wire
        self._transport = transport
        self._flusher = flusher
        self._queue: list[bytes] = []
        self._bytes = 0
        self._tick = -1  # the flusher tick of this connection's last direct write
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.closed = False
        #: the code this side closed with (None while open or when the client closed first)
        self.close_code: int | None = None
        self.principal: Identity | None = None
        self.subscriptions: tuple[str, ...] = ()  # see services.realtime.client.Client
        #: called once when the connection starts closing (the registry detaches it from the hub)
        self.on_close: Callable[[Client], None] | None = None

    # -- Subscriber ------------------------------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        # The hot path of every fan-out (once per subscriber per publication): kept to a few
        # attribute reads, with the direct write inlined rather than a call to _write.
        if self.closed:
            return
        queue = self._queue
        if not queue:
            flusher = self._flusher
            tick = flusher.tick
            if flusher.direct and self._tick != tick:
                # Light load and nothing queued: write now (see the module docstring).
                self._tick = tick
                if not flusher.ticking:
                    flusher.start_tick()
                transport = self._transport
                if transport.is_closing():
                    return
                try:
                    transport.write(frame)
                    backlog = transport.get_write_buffer_size()
                except Exception:
                    self._write_failed()
                    return
                if backlog > self.max_bytes:
                    self.close(Disconnect.SLOW_CONSUMER, "slow consumer")
                return
            flusher.mark(self)
        queue.append(frame)
        size = self._bytes = self._bytes + len(frame)
        if size > self.max_bytes or len(queue) > self.max_messages:
            self.close(Disconnect.SLOW_CONSUMER, "slow consumer")

    @staticmethod
    def deliver_all(conns: Collection[Connection], frame: bytes) -> None:
        """``conn.deliver(frame)`` for each of ``conns`` in order: the fan-out loop of one
        publication (``Wire.fanout``). Same behaviour, less work per subscriber: the flusher's
        state is read once (nothing changes it inside the loop: ticks advance and regimes switch
        only in loop callbacks) and the direct write needs no method call per connection. A
        connection with another flusher, a queue, or a direct write in this iteration already
        goes through :meth:`deliver`."""
        first = next(iter(conns), None)
        if first is None:
            return
        flusher = first._flusher
        if not flusher.direct:
            Connection._queue_all(conns, flusher, frame)
            return
        tick = flusher.tick
        if not flusher.ticking:
            flusher.start_tick()
        for conn in conns:
            if conn._queue or conn._tick == tick or conn.closed or conn._flusher is not flusher:
                conn.deliver(frame)
                continue
            conn._tick = tick
            transport = conn._transport
            if transport.is_closing():
                continue
            try:
                transport.write(frame)
                backlog = transport.get_write_buffer_size()
            except Exception:
                conn._write_failed()
                continue
            if backlog > conn.max_bytes:
                conn.close(Disconnect.SLOW_CONSUMER, "slow consumer")

    @staticmethod
    def deliver_many(conns: Collection[Connection], frames: list[bytes]) -> None:
        """:meth:`deliver_all` of each of ``frames`` in turn (``Wire.fanout_many``), with the
        frames joined once into one buffer: each connection gets them in one write (or one
        queue entry) where one call per frame would write the first and queue the others.
        WebSocket frames are self-delimiting, so the bytes the client reads are the same."""
        Connection.deliver_all(conns, frames[0] if len(frames) == 1 else b"".join(frames))

    @staticmethod
    def _queue_all(conns: Collection[Connection], flusher: Flusher, frame: bytes) -> None:
        """The load regime of :meth:`deliver_all`: queue ``frame`` on each connection."""
        size = len(frame)
        for conn in conns:
            if conn.closed or conn._flusher is not flusher:
                conn.deliver(frame)
                continue
            queue = conn._queue
            if not queue:
                flusher.mark(conn)
            queue.append(frame)
            queued = conn._bytes = conn._bytes + size
            if queued > conn.max_bytes or len(queue) > conn.max_messages:
                conn.close(Disconnect.SLOW_CONSUMER, "slow consumer")

    def lost(self, channel: str, position: StreamPosition) -> None:
        self.deliver(self.wire.resync(channel, position))

    def unsubscribed(self, channel: str, code: int, reason: str) -> None:
        self.deliver(self.wire.unsubscribed(channel, code, reason))

    # -- writing ---------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue a reply or push frame; it goes out in order with publications."""
        self.deliver(frame)

    def flush(self) -> int:
        """Write what is queued in one call; returns the number of frames written.

        The same checks as the direct write in :meth:`deliver`: a transport that raises is
        closed with 1001 without stopping the flush of every other connection, and one whose
        unsent buffer passes ``max_bytes`` is closed as a slow consumer.
        """
        queue = self._queue
        if not queue or self.closed:
            return 0
        count = len(queue)
        if count == 1:
            data = queue[0]
            queue.clear()  # reused: nothing else holds the list
        else:
            # Several frames go out as one bytes object. The subscribers of a channel usually
            # have the very same frames queued, so the flusher keeps the last join: comparing
            # the lists costs a pointer comparison per frame (same objects), far less than a
            # join per connection.
            flusher = self._flusher
            if queue == flusher.batch:
                data = flusher.joined
                queue.clear()
            else:
                data = flusher.joined = b"".join(queue)
                flusher.batch = queue
                self._queue = []
        self._bytes = 0
        return count if self._write_checked(data) else 0

    def _write_checked(self, data: bytes) -> bool:
        """Write ``data`` now (the checks of the direct write that :meth:`deliver` and
        :meth:`deliver_all` inline): False when nothing was written (the transport is closing
        or raised, which closes with 1001); a backlog past ``max_bytes`` closes as a slow
        consumer after the write."""
        transport = self._transport
        if transport.is_closing():
            return False
        try:
            transport.write(data)
            backlog = transport.get_write_buffer_size()
        except Exception:
            self._write_failed()
            return False
        if backlog > self.max_bytes:
            self.close(Disconnect.SLOW_CONSUMER, "slow consumer")
        return True

    def _write_failed(self) -> None:
        """A write raised: close with 1001, without stopping anyone else's writes (the hub's
        fan-out loop or the flush of every other connection)."""
        log.exception("write failed", extra={"conn_id": self.conn_id})
        self.close(Disconnect.WRITE_FAILED, "internal error")

    def buffered_bytes(self) -> int:
        """Bytes queued here plus bytes the transport has not sent yet."""
        return self._bytes + self._transport.get_write_buffer_size()

    # -- closing ---------------------------------------------------------------------------

    def close(
        self, disconnect: Disconnect, reason: str, *, flush: bool = False, code: int | None = None
    ) -> None:
        """Close with the wire protocol's code for ``disconnect``, or with ``code`` when an
        application chose its own (see :meth:`close_soon`)."""
        if code is None:
            code = self.wire.codec.close_code(disconnect)
        self.close_soon(code, reason, flush=flush)

    def close_soon(self, code: int, reason: str, *, flush: bool = False) -> None:
        """Stop delivering and close with ``code`` now, without awaiting anything.

        The close frame is written behind whatever the transport still buffers and the
        transport is closed gracefully, so a client that catches up reads every frame and then
        the close code. One that never does is aborted after :data:`CLOSE_TIMEOUT` seconds.
        ``flush`` first writes what is queued (otherwise the queue is dropped).
        """
        if self.closed:
            return
        if flush:
            self.flush()
            if self.closed:  # the write failed or overflowed, and that closed the connection
                return
        self.closed = True
        self.close_code = code
        self._queue = []
        self._bytes = 0
        loop = asyncio.get_running_loop()
        if self.on_close is not None:
            # Not inline: we may be inside the hub's fan-out loop over this channel's subscribers.
            loop.call_soon(self.on_close, self)
        self._finish(code, reason)

    def _finish(self, code: int, reason: str) -> None:
        """Tell the client ``code`` and ``reason``: a WebSocket close frame."""
        self._close_transport(websocket_close_frame(code, reason))

    def _close_transport(self, last: bytes) -> None:
        """Write ``last`` behind what the transport buffers and close it gracefully (aborted
        after :data:`CLOSE_TIMEOUT` seconds)."""
        transport = self._transport
        if transport.is_closing():
            return
        try:
            transport.write(last)
            transport.close()
        except Exception:  # a broken transport gets no last frame; drop it at once
            self._abort()
            return
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    def closed_by_websocket(self, code: int) -> None:
        """aiohttp itself closed the WebSocket with ``code`` (too big, invalid UTF-8, protocol
        violation): stop delivering and remember the code it sent, without writing anything."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._queue = []
        self._bytes = 0
        if self.on_close is not None:
            asyncio.get_running_loop().call_soon(self.on_close, self)

    def drop(self, code: int) -> None:
        """The peer stopped answering (``handlers/realtime/heartbeat.py``): stop delivering,
        remember ``code`` and close the transport without a close frame, as for a peer that is
        gone (aborted after :data:`CLOSE_TIMEOUT` seconds if its buffer does not drain)."""
        if self.closed:
            return
        self.closed_by_websocket(code)
        self._close_transport(b"")

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self._transport.abort()  # no-op when the graceful close already finished
