"""``GET /sse/{channel}``: one channel as plain Server-Sent Events, for ``EventSource`` alone
(``docs/clients.md``).

The token comes in ``?token=`` (``EventSource`` cannot send headers; query strings are never
logged) or an ``Authorization: Bearer`` header. Authentication, the channel name and the
channel rules are checked before the stream starts, so a refusal is an ordinary JSON error
(401, 400, 403, 429, 503) and ``EventSource`` does not retry it. The stream resumes after the
browser's ``Last-Event-ID`` (or ``?since=offset:epoch`` on a first connect) through the same
recovery as a ``subscribe`` with ``since`` on ``/ws``.
"""

from __future__ import annotations

from aiohttp import web

from handlers import keys
from handlers.errors import error_response
from handlers.realtime.stream import (
    ChannelStream,
    open_stream,
    run_stream,
    stream_session,
)
from pubsub.broker import StreamPosition
from pubsub.hub import SubscriptionCancelled
from services.realtime import commands as c
from services.realtime.codecs import sse
from services.realtime.errors import CommandError
from services.realtime.framing import sse_event_chunk, sse_event_raw
from services.realtime.wire import Wire, wire

#: our SSE events, chunked (HTTP/1.1) or bare (HTTP/1.0, the body ends at the close)
SSE_CHUNKED: Wire = wire(sse.CODEC, sse_event_chunk)
SSE_RAW: Wire = wire(sse.CODEC, sse_event_raw)
SSE_WIRES = {True: SSE_CHUNKED, False: SSE_RAW}

#: error code of the session -> HTTP status of the refusal
STATUS = {
    "unauthenticated": 401,
    "invalid_channel": 400,
    "bad_request": 400,
    "permission_denied": 403,
    "limit_exceeded": 429,
    "broker_unavailable": 503,
    "temporarily_unavailable": 503,
}


def bearer_token(request: web.Request) -> str | None:
    """The access token of ``?token=`` or of an ``Authorization: Bearer`` header."""
    token = request.query.get("token")
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def resume_position(request: web.Request) -> StreamPosition | None:
    """Where to resume: the browser's ``Last-Event-ID`` on a reconnect, else ``?since=``;
    raises ValueError when malformed."""
    value = request.headers.get("Last-Event-ID") or request.query.get("since")
    if not value:
        return None
    return sse.parse_position(value)


async def channel_events(request: web.Request) -> web.StreamResponse:
    """Stream the publications of ``{channel}`` as Server-Sent Events."""
    app = request.app
    registry = app[keys.connections]
    if not registry.accepting:
        return error_response(503, "server shutting down")
    token = bearer_token(request)
    if token is None:
        return error_response(
            401, "an access token is required: ?token=... or Authorization: Bearer ..."
        )
    try:
        since = resume_position(request)
    except ValueError as exc:
        return error_response(400, f"Last-Event-ID / since: {exc}")
    try:
        async with stream_session(request, ChannelStream, SSE_WIRES, sse.CODEC) as (conn, session):
            try:
                await session.run(c.Authenticate(token))
                result = await session.run(c.Subscribe(request.match_info["channel"], since))
            except CommandError as exc:
                return error_response(STATUS.get(exc.code, 500), exc.message)
            except SubscriptionCancelled:
                return error_response(503, "server shutting down")
            assert isinstance(result, c.SubscribeResult)
            response = await open_stream(
                request, conn, "text/event-stream", b"retry: %d\n\n" % sse.RECONNECT_DELAY_MS
            )
            head = [conn.wire.frame(sse.CODEC.subscribed(result))]
            head.extend(conn.wire.publication(pub) for pub in result.publications)
            head.extend(conn.wire.publication(pub) for pub in result.tail)
            conn.start(head)
            await session.joined(result)
            await run_stream(session, conn, request.app[keys.config].ws.heartbeat)
            return response
    except ConnectionError:
        return web.Response(status=400)  # gone while the headers were written; never sent


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/sse/{channel}", channel_events, allow_head=False)
