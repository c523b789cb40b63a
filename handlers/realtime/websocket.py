"""``GET /ws``: the WebSocket endpoint of our protocol (documented in ``docs/protocol.md``), and
``GET /connection/websocket``: the same sessions speaking Centrifugo's client protocol v2 (JSON),
the default path of every Centrifugo client SDK (``docs/clients.md``).

This module only does what needs aiohttp: the upgrade, the read loop and close codes. Every
text frame goes to the protocol-neutral :class:`~services.realtime.session.Session`, which
decodes it with the connection's codec and replies through the
:class:`~handlers.realtime.transport.Connection`.
"""

from __future__ import annotations

import asyncio
import math
import uuid

from aiohttp import WebSocketError, WSMsgType, web

from handlers import keys
from handlers.client_ip import client_ip
from handlers.errors import error_response
from handlers.realtime.transport import Connection
from services.realtime.admission import Ticket
from services.realtime.codecs import arena, centrifuge
from services.realtime.errors import Disconnect
from services.realtime.framing import websocket_text_frame
from services.realtime.session import Session
from services.realtime.wire import Wire, wire

#: our JSON protocol in WebSocket text frames
ARENA_WEBSOCKET: Wire = wire(arena.CODEC, websocket_text_frame, Connection.deliver_all)
#: Centrifugo's client protocol v2 (JSON) in WebSocket text frames
CENTRIFUGE_WEBSOCKET: Wire = wire(centrifuge.CODEC, websocket_text_frame, Connection.deliver_all)


def _origin_allowed(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser; browsers always send Origin on a WebSocket handshake
    return origin in request.app[keys.config].http.allowed_origins


async def _read(session: Session, conn: Connection, ws: web.WebSocketResponse) -> None:
    """Feed text frames to the session until either side closes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + session.service.limits.auth_timeout
    while not conn.closed:
        timeout = None if conn.principal else max(0.0, deadline - loop.time())
        try:
            msg = await ws.receive(timeout=timeout)
        except TimeoutError:
            conn.close(Disconnect.UNAUTHENTICATED, "authentication timeout")
            return
        if msg.type == WSMsgType.TEXT:
            await session.receive(msg.data)
        elif msg.type == WSMsgType.BINARY:
            conn.close(Disconnect.UNSUPPORTED_DATA, "binary frames are not supported")
        else:
            if msg.type == WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
                # aiohttp closed with this code (1009 too big, 1007 bad UTF-8, 1002 protocol
                # error); ws.close_code then holds the client's echo or 1006, not what was sent.
                conn.closed_by_websocket(msg.data.code)
            return  # CLOSE, CLOSING, CLOSED or ERROR


async def websocket(request: web.Request) -> web.StreamResponse:
    """Our protocol: upgrade to a WebSocket and run the session until either side closes."""
    return await _serve(request, ARENA_WEBSOCKET)


async def centrifuge_websocket(request: web.Request) -> web.StreamResponse:
    """Centrifugo's client protocol v2 (JSON) on the same sessions."""
    return await _serve(request, CENTRIFUGE_WEBSOCKET)


async def _serve(request: web.Request, wire: Wire) -> web.StreamResponse:
    """Upgrade to a WebSocket and run a session speaking ``wire`` until either side closes."""
    app = request.app
    registry = app[keys.connections]
    if not registry.accepting:
        return error_response(503, "server shutting down")
    if not _origin_allowed(request):
        return error_response(403, "origin not allowed")
    config = app[keys.config].ws
    # At most WS_MAX_UNAUTHENTICATED_PER_IP sockets per address before they authenticate, so
    # one address cannot hold thousands of half-open sessions for WS_AUTH_TIMEOUT each.
    ticket = app[keys.ws_admission].admit(client_ip(request, app[keys.config].http.trusted_proxies))
    if ticket is None:
        return error_response(
            429,
            "too many WebSocket connections from this address have not authenticated yet",
            headers={"Retry-After": str(math.ceil(config.auth_timeout))},
        )
    try:
        return await _upgraded(request, ticket, wire)
    finally:
        ticket.release()


async def _upgraded(
    request: web.Request, ticket: Ticket[Connection], wire: Wire
) -> web.StreamResponse:
    """The session of an admitted upgrade (``ticket`` counts it until it authenticates)."""
    app = request.app
    registry = app[keys.connections]
    config = app[keys.config].ws
    ws = web.WebSocketResponse(
        heartbeat=config.heartbeat,
        # aiohttp refuses a message whose size is >= max_msg_size; WS_MAX_FRAME_BYTES is the
        # largest size accepted.
        max_msg_size=config.max_frame_bytes + 1,
        compress=False,
        autoping=True,
    )
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # pragma: no cover - the client vanished during the handshake
        return ws
    conn = Connection(
        uuid.uuid4().hex,
        transport,
        app[keys.flusher],
        wire,
        max_messages=config.max_queue_messages,
        max_bytes=config.max_queue_bytes,
    )
    ticket.attach(conn)
    metrics = app[keys.http_metrics]
    registry.add(conn)
    metrics.ws_connections.inc()
    session = Session(app[keys.realtime], conn, wire)
    try:
        await _read(session, conn, ws)
    except ConnectionError:
        pass
    finally:
        await session.close()
        registry.remove(conn)
        metrics.ws_connections.dec()
        # Our own code when the server closed (4004 = slow consumer, 4001, ...), else the
        # client's, else 1006 (the connection just vanished).
        code = conn.close_code or ws.close_code or 1006
        metrics.ws_disconnects.labels(str(code)).inc()
        if not conn.closed:
            if ws.close_code is None:
                conn.close(Disconnect.PROTOCOL_ERROR, "bye", flush=True)
            else:
                conn.close(Disconnect.NORMAL, "bye", flush=True)
    return ws


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/ws", websocket)
    # the path the Arena marketplace client connects to (same protocol)
    app.router.add_get("/ws/updates/", websocket)
    # Centrifugo SDKs' default endpoint (JSON protocol; the protobuf one is not served)
    app.router.add_get("/connection/websocket", centrifuge_websocket)
