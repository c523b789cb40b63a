"""Centrifugo's unidirectional transports (``docs/clients.md``): ``/connection/uni_sse``
(``GET ?cf_connect=<ConnectRequest JSON>`` or ``POST`` with it as the body; Server-Sent Events
whose ``data:`` is a push) and ``POST /connection/uni_http_stream`` (one push per line).

The ``ConnectRequest`` is Centrifugo's: ``token`` (ours), ``subs`` (channel -> ``recover``,
``offset``, ``epoch``); ``data``, ``name``, ``version`` and ``headers`` are accepted and
ignored. A malformed request is a 400 JSON error; everything after (bad token, refused
channel) is answered on the stream as Centrifugo does: a ``disconnect`` push, or an
``unsubscribe`` push for a channel the rules refuse while the others stay subscribed.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from handlers import keys
from handlers.errors import error_response
from handlers.realtime.stream import (
    MultiplexStream,
    cors_headers,
    open_stream,
    run_stream,
    stream_session,
)
from pubsub.broker import StreamPosition
from pubsub.hub import SubscriptionCancelled
from services.realtime import commands as c
from services.realtime.codecs import centrifuge, centrifuge_uni
from services.realtime.errors import CommandError, Disconnect
from services.realtime.framing import ndjson_chunk, ndjson_raw, sse_data_chunk, sse_data_raw
from services.realtime.session import Session
from services.realtime.wire import Wire, wire

CODEC = centrifuge_uni.CODEC
UNI_SSE = {True: wire(CODEC, sse_data_chunk), False: wire(CODEC, sse_data_raw)}
UNI_HTTP_STREAM = {True: wire(CODEC, ndjson_chunk), False: wire(CODEC, ndjson_raw)}
#: the largest connect request accepted (as Centrifugo's ``uni_*_max_request_body_size``)
MAX_CONNECT_BYTES = 65536


class BadConnect(ValueError):
    """The connect request is not a Centrifugo ``ConnectRequest``."""


def parse_connect(raw: bytes | str) -> tuple[str, dict[str, StreamPosition | None]]:
    """``(token, {channel: recover-from position or None})`` of a ``ConnectRequest``; raises
    :class:`BadConnect`."""
    if len(raw) > MAX_CONNECT_BYTES:
        raise BadConnect(f"connect request over {MAX_CONNECT_BYTES} bytes")
    try:
        body: Any = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise BadConnect("connect request is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadConnect("connect request must be a JSON object")
    token = body.get("token", "")
    if not isinstance(token, str):
        raise BadConnect("'token' must be a string")
    subs = body.get("subs")
    if subs is None:
        subs = {}
    if not isinstance(subs, dict):
        raise BadConnect("'subs' must be an object {channel: {recover, offset, epoch}}")
    wanted: dict[str, StreamPosition | None] = {}
    for channel, sub in subs.items():
        if not isinstance(sub, dict):
            raise BadConnect(f"subs[{channel!r}] must be an object")
        try:
            command = centrifuge._subscribe({**sub, "channel": channel})
        except CommandError as exc:
            raise BadConnect(f"subs[{channel!r}]: {exc.message}") from None
        wanted[channel] = command.since
    return token, wanted


async def uni_sse(request: web.Request) -> web.StreamResponse:
    """``uni_sse``: the connect request in ``?cf_connect=`` (GET) or the body (POST)."""
    if request.method == "POST":
        raw: bytes | str = await request.read()
    else:
        raw = request.query.get("cf_connect", "")
    return await _serve(request, raw, UNI_SSE, "text/event-stream; charset=utf-8")


async def uni_http_stream(request: web.Request) -> web.StreamResponse:
    """``uni_http_stream``: the connect request is the body; one JSON push per line."""
    return await _serve(request, await request.read(), UNI_HTTP_STREAM, "application/json")


async def _serve(
    request: web.Request, raw: bytes | str, wires: dict[bool, Wire], content_type: str
) -> web.StreamResponse:
    app = request.app
    registry = app[keys.connections]
    if not registry.accepting:
        return error_response(503, "server shutting down")
    try:
        token, wanted = parse_connect(raw)
    except BadConnect as exc:
        status = 413 if len(raw) > MAX_CONNECT_BYTES else 400
        return error_response(status, str(exc))
    try:
        async with stream_session(request, MultiplexStream, wires, CODEC) as (conn, session):
            subscribed: dict[str, c.SubscribeResult] = {}
            ping = int(request.app[keys.config].ws.heartbeat)
            head = await _connect(session, conn, token, wanted, subscribed, ping)
            response = await open_stream(request, conn, content_type, b"")
            conn.start(head)
            for result in subscribed.values():
                await session.joined(result)
            await run_stream(session, conn, request.app[keys.config].ws.heartbeat)
            return response
    except ConnectionError:
        return web.Response(status=400)  # gone while the headers were written; never sent


async def _connect(
    session: Session,
    conn: MultiplexStream,
    token: str,
    wanted: dict[str, StreamPosition | None],
    subscribed: dict[str, c.SubscribeResult],
    ping: int,
) -> list[bytes]:
    """Authenticate and subscribe; the stream's first messages (the ``connect`` push, the
    publications that arrived during each subscribe, ``unsubscribe`` pushes for refused
    channels). Fills ``subscribed``. After a failure that closed the connection the list is
    empty: the stream holds only the ``disconnect`` push."""
    try:
        auth = await session.run(c.Authenticate(token))
    except CommandError as exc:
        if not conn.closed:  # an expired token is answered before the close
            conn.close(exc.disconnect or Disconnect.UNAUTHENTICATED, exc.message)
        return []
    assert isinstance(auth, c.AuthenticateResult)
    refused: list[bytes] = []
    for channel, since in wanted.items():
        try:
            result = await session.run(c.Subscribe(channel, since))
        except CommandError as exc:
            if conn.closed:  # over WS_MAX_SUBSCRIPTIONS
                return []
            refused.append(
                conn.wire.unsubscribed(channel, centrifuge.UNSUBSCRIBE_SERVER, exc.message)
            )
            continue
        except SubscriptionCancelled:
            return []
        assert isinstance(result, c.SubscribeResult)
        subscribed[channel] = result
    head = [conn.wire.frame(CODEC.connect(auth, subscribed, ping=ping))]
    for result in subscribed.values():
        head.extend(conn.wire.publication(pub) for pub in result.tail)
    head.extend(refused)
    return head


#: seconds a browser may cache the answer to a preflight
PREFLIGHT_MAX_AGE = 600


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight of the ``POST`` transports: a page of an allowed origin that posts the
    connect request as JSON (``fetch`` with ``Content-Type: application/json``) is asked about
    first. Allowed origins get ``POST`` with ``Content-Type``; others get a 403 without CORS
    headers (the browser then refuses the request)."""
    allowed = cors_headers(request)
    if not allowed or request.headers.get("Access-Control-Request-Method") != "POST":
        return error_response(403, "CORS preflight refused: origin or method not allowed")
    return web.Response(
        status=204,
        headers={
            **allowed,
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
        },
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/connection/uni_sse", uni_sse, allow_head=False)
    app.router.add_post("/connection/uni_sse", uni_sse)
    app.router.add_post("/connection/uni_http_stream", uni_http_stream)
    app.router.add_route("OPTIONS", "/connection/uni_sse", preflight)
    app.router.add_route("OPTIONS", "/connection/uni_http_stream", preflight)
