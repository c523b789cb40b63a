"""One-way HTTP streams (Server-Sent Events, HTTP streaming): the transport and the loop shared
by ``GET /sse/{channel}`` (:mod:`~handlers.realtime.sse`) and Centrifugo's ``uni_sse`` and
``uni_http_stream`` (:mod:`~handlers.realtime.uni`).

A stream is a :class:`~handlers.realtime.transport.Connection` (same queue, flusher,
slow-consumer bounds, registry, session) whose frames are HTTP chunks instead of WebSocket
frames. It starts *held*: while the handler authenticates and subscribes, nothing is written
(a refusal can still be an HTTP error) and publications that arrive are kept; :meth:`start`
then writes the stream's first messages and everything held, in order. The server ends a
stream with its codec's last message (``disconnect``) and the last chunk.

The client sends nothing after its request, and aiohttp does not tell a handler that the peer
went away: the ping every ``WS_HEARTBEAT`` seconds is also when a stream whose peer closed is
noticed and ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TypeVar, cast

from aiohttp import HttpVersion11, web

from handlers import keys
from handlers.middlewares import LONG_LIVED
from handlers.realtime.transport import Connection, Flusher
from pubsub.broker import StreamPosition
from services.realtime.codecs import StreamCodec, centrifuge, sse
from services.realtime.errors import Disconnect
from services.realtime.framing import HTTP_LAST_CHUNK
from services.realtime.session import Session
from services.realtime.wire import Wire

#: response headers of every stream (no caching, no proxy buffering: nginx reads
#: ``X-Accel-Buffering``)
STREAM_HEADERS = {
    "Cache-Control": "private, no-cache, no-store, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "X-Accel-Buffering": "no",
}
#: the disconnect code counted when the peer went away (as a WebSocket's 1006)
GONE = 1006


class _Holding:
    """Stands in for a held stream's transport: keeps what the connection writes (its direct
    writes and flushes alike) until :meth:`HeldConnection.start` writes it after the head."""

    __slots__ = ("frames", "real")

    def __init__(self, real: asyncio.Transport) -> None:
        self.real = real
        self.frames: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.frames.append(data)

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.frames))

    def is_closing(self) -> bool:
        return self.real.is_closing()

    def close(self) -> None:
        self.real.close()

    def abort(self) -> None:
        self.real.abort()


class HeldConnection(Connection):
    """A Connection writing HTTP chunks of ``wire`` that starts held (module docstring).

    Holding swaps the transport for a :class:`_Holding` that keeps the frames, so the
    delivery path (``deliver``, ``deliver_all``, ``flush``, which write to the transport
    directly) needs no check of its own."""

    __slots__ = ("_end", "_final", "_hold", "_last", "codec", "done")

    def __init__(
        self,
        transport: asyncio.Transport,
        flusher: Flusher,
        wire: Wire,
        codec: StreamCodec,
        *,
        chunked: bool,
        max_messages: int,
        max_bytes: int,
    ) -> None:
        hold = _Holding(transport)
        super().__init__(
            uuid.uuid4().hex,
            cast(asyncio.Transport, hold),
            flusher,
            wire,
            max_messages=max_messages,
            max_bytes=max_bytes,
        )
        self._hold: _Holding | None = hold
        self.codec = codec
        self._end: tuple[int, str] | None = None  # a close while held
        self._last = HTTP_LAST_CHUNK if chunked else b""
        self._final: bytes | None = None  # instead of the codec's disconnect message
        #: set when the stream ends (either side)
        self.done = asyncio.Event()

    def start(self, head: list[bytes]) -> None:
        """Write ``head`` (the stream's first messages) and what arrived meanwhile, then go
        on writing directly; a close that happened while held is written after them. (Frames
        still queued for the flusher arrived after the held ones and follow at its tick.)"""
        hold, self._hold = self._hold, None
        if hold is None:
            return
        self._transport = hold.real
        frames = [*head, *hold.frames]
        writable = bool(frames) and not self.closed and not self._transport.is_closing()
        if writable and not self._write_checked(b"".join(frames)):
            return  # the write raised: closed with 1001
        if self._end is not None:
            self._finish(*self._end)

    def _finish(self, code: int, reason: str) -> None:
        if self._hold is not None:
            self._end = (code, reason)  # the handler answers with an HTTP error, or starts
            self.done.set()
            return
        final = self._final
        if final is None:
            final = self.wire.frame(self.codec.disconnect(code, reason))
        self._close_transport(final + self._last)
        self.done.set()

    def peer_gone(self) -> bool:
        """The client closed its side (or the socket broke)."""
        return self._transport.is_closing() and not self.closed


class ChannelStream(HeldConnection):
    """A stream of one channel (``/sse/{channel}``): when the server ends the subscription the
    stream ends too, after the ``unsubscribe`` event, with a reconnection delay so long that a
    browser does not come back for it."""

    __slots__ = ()

    def unsubscribed(self, channel: str, code: int, reason: str) -> None:
        super().unsubscribed(channel, code, reason)
        self._final = self.wire.frame(sse.END_FOR_GOOD)
        self.close_soon(code, reason, flush=True)


class MultiplexStream(HeldConnection):
    """A stream of several channels (Centrifugo's ``uni_*``): a subscriber that fell behind
    gets a ``disconnect`` (insufficient state) and reconnects with recovery."""

    __slots__ = ()

    def lost(self, channel: str, position: StreamPosition) -> None:
        code = centrifuge.DISCONNECT_INSUFFICIENT_STATE
        self._final = self.wire.frame(self.codec.resync(channel, position))
        self.close_soon(code, "insufficient state", flush=True)


def cors_headers(request: web.Request) -> dict[str, str]:
    """``Access-Control-Allow-Origin`` for a browser page of an allowed origin (an
    ``EventSource`` or ``fetch`` from another origin may then read the stream). No credentials:
    the token is in the request, never a cookie."""
    origin = request.headers.get("Origin")
    if origin is not None and origin in request.app[keys.config].http.allowed_origins:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


async def open_stream(
    request: web.Request, conn: HeldConnection, content_type: str, preamble: bytes
) -> web.StreamResponse:
    """Send the response headers and ``preamble`` (through aiohttp, which chunks it); the
    connection's frames go straight to the socket after it."""
    request[LONG_LIVED] = True  # not a "slow request"
    response = web.StreamResponse(
        headers={**STREAM_HEADERS, **cors_headers(request), "Content-Type": content_type}
    )
    await response.prepare(request)
    await response.write(preamble)  # b"": only the headers
    return response


async def run_stream(session: Session, conn: HeldConnection, interval: float) -> None:
    """Ping every ``interval`` seconds until either side ends the stream."""
    ping = conn.wire.frame(conn.codec.ping())
    while not conn.closed:
        try:
            await asyncio.wait_for(conn.done.wait(), interval)
        except TimeoutError:
            if conn.peer_gone():
                conn.close_soon(GONE, "connection lost")
                return
            conn.send(ping)


Held = TypeVar("Held", bound=HeldConnection)


@contextlib.asynccontextmanager
async def stream_session(
    request: web.Request, kind: type[Held], wires: Mapping[bool, Wire], codec: StreamCodec
) -> AsyncIterator[tuple[Held, Session]]:
    """A ``kind`` stream for ``request`` (HTTP chunks on HTTP/1.1, raw bytes on 1.0, framed by
    ``wires[chunked]``), registered and counted like a WebSocket, with its session; on exit the
    session ends, the stream is closed if it is not yet, and the disconnect is counted. Raises
    ConnectionError when the client has already gone."""
    app = request.app
    transport = request.transport
    if transport is None:  # pragma: no cover - the client vanished already
        raise ConnectionError("the client went away")
    config = app[keys.config].ws
    chunked = request.version >= HttpVersion11
    conn = kind(
        transport,
        app[keys.flusher],
        wires[chunked],
        codec,
        chunked=chunked,
        max_messages=config.max_queue_messages,
        max_bytes=config.max_queue_bytes,
    )
    registry = app[keys.connections]
    registry.add(conn)
    count_open(request)
    session = Session(app[keys.realtime], conn, conn.wire)
    try:
        yield conn, session
    finally:
        await session.close()
        registry.remove(conn)
        if not conn.closed:
            conn.close(Disconnect.NORMAL, "bye", flush=True)
        count_closed(request, conn)


def count_open(request: web.Request) -> None:
    request.app[keys.http_metrics].ws_connections.inc()


def count_closed(request: web.Request, conn: HeldConnection) -> None:
    metrics = request.app[keys.http_metrics]
    metrics.ws_connections.dec()
    metrics.ws_disconnects.labels(str(conn.close_code or GONE)).inc()


__all__ = [
    "STREAM_HEADERS",
    "ChannelStream",
    "HeldConnection",
    "MultiplexStream",
    "cors_headers",
    "open_stream",
    "run_stream",
    "stream_session",
]
