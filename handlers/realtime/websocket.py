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
import functools
import logging
import math
from collections import deque
from typing import Any

from aiohttp import WebSocketError, WSMsgType, web

from handlers import keys
from handlers.client_ip import client_ip
from handlers.errors import error_response
from handlers.middlewares import RequestScope, error_envelope_for, owns_request
from handlers.realtime.heartbeat import HeartbeatSweep, heartbeat_key, heartbeat_sweep
from handlers.realtime.transport import Connection
from services.ids import unique_id
from services.realtime.admission import Ticket
from services.realtime.codecs import arena, centrifuge
from services.realtime.errors import Disconnect
from services.realtime.framing import websocket_text_frame
from services.realtime.session import Session
from services.realtime.wire import Wire, wire

#: our JSON protocol in WebSocket text frames
ARENA_WEBSOCKET: Wire = wire(
    arena.CODEC, websocket_text_frame, Connection.deliver_all, Connection.deliver_many
)
#: Centrifugo's client protocol v2 (JSON) in WebSocket text frames
CENTRIFUGE_WEBSOCKET: Wire = wire(
    centrifuge.CODEC, websocket_text_frame, Connection.deliver_all, Connection.deliver_many
)

log = logging.getLogger(__name__)


def _origin_allowed(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser; browsers always send Origin on a WebSocket handshake
    return origin in request.app[keys.config].http.allowed_origins


async def _serve(request: web.Request, *, wire: Wire) -> web.StreamResponse:
    """Upgrade to a WebSocket and run a session speaking ``wire`` until either side closes.

    One coroutine from the middleware chain to the read loop, on purpose: its frame lives as
    long as the connection, and each extra level of ``await`` would cost every idle connection
    another frame (a few hundred bytes; see ``bench/conn_memory.py``). So the route
    :func:`~handlers.middlewares.owns_request`: it keeps the request id in the log context for
    the connection's life, writes the access log line and metrics when it ends, and answers a
    refused upgrade with the JSON error envelope itself.
    """
    scope = RequestScope(request)
    status = 500
    ws: web.WebSocketResponse | None = None
    response: web.StreamResponse | None = None
    try:
        response = _refusal(request)
        if response is not None:
            return response
        app = request.app
        config = app[keys.config].ws
        # At most WS_MAX_UNAUTHENTICATED_PER_IP sockets per address before they authenticate,
        # so one address cannot hold thousands of half-open sessions for WS_AUTH_TIMEOUT each.
        ticket: Ticket[Connection] | None = app[keys.ws_admission].admit(
            client_ip(request, app[keys.config].http.trusted_proxies)
        )
        if ticket is None:
            response = error_response(
                429,
                "too many WebSocket connections from this address have not authenticated yet",
                headers={"Retry-After": str(math.ceil(config.auth_timeout))},
            )
            return response
        try:
            ws = response = web.WebSocketResponse(
                # one shared heartbeat (handlers/realtime/heartbeat.py) instead of a timer per
                # connection: it sees pongs, so they reach this loop
                heartbeat=None,
                autoping=False,
                # aiohttp refuses a message whose size is >= max_msg_size; WS_MAX_FRAME_BYTES
                # is the largest size accepted.
                max_msg_size=config.max_frame_bytes + 1,
                compress=False,
            )
            await ws.prepare(request)
            transport = request.transport
            if transport is None:  # pragma: no cover - the client vanished during the handshake
                return ws
            release_http_state(request)
            conn = Connection(
                unique_id(),
                transport,
                app[keys.flusher],
                wire,
                max_messages=config.max_queue_messages,
                max_bytes=config.max_queue_bytes,
            )
            ticket.attach(conn)
            registry = app[keys.connections]
            metrics = app[keys.http_metrics]
            registry.add(conn)
            heartbeat = app[heartbeat_key]
            heartbeat.add(conn)
            metrics.ws_connections.inc()
            session = Session(app[keys.realtime], conn, wire)
            # One timer for the whole unauthenticated phase (cheaper than a timeout around
            # every receive): closing the connection ends the receive below.
            auth_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
                session.service.limits.auth_timeout, _authentication_timeout, conn
            )
            try:
                # Feed text frames to the session until either side closes.
                while not conn.closed:
                    if auth_timer is not None and conn.principal is not None:
                        # authenticated: no longer counts against its address
                        auth_timer.cancel()
                        auth_timer = None
                        if ticket is not None:
                            ticket.release()
                            ticket = None
                    msg = await ws.receive()
                    heartbeat.heard(conn)
                    if msg.type == WSMsgType.TEXT:
                        await session.receive(msg.data)
                    elif msg.type == WSMsgType.PING:
                        await ws.pong(msg.data)
                    elif msg.type == WSMsgType.PONG:
                        pass  # heard: that is all a pong is for
                    elif msg.type == WSMsgType.BINARY:
                        conn.close(Disconnect.UNSUPPORTED_DATA, "binary frames are not supported")
                    else:
                        if msg.type == WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
                            # aiohttp closed with this code (1009 too big, 1007 bad UTF-8, 1002
                            # protocol error); ws.close_code then holds the client's echo or
                            # 1006, not what was sent.
                            conn.closed_by_websocket(msg.data.code)
                        break  # CLOSE, CLOSING, CLOSED or ERROR
            except ConnectionError:
                pass
            finally:
                if auth_timer is not None:
                    auth_timer.cancel()
                await session.close()
                heartbeat.discard(conn)
                registry.remove(conn)
                metrics.ws_connections.dec()
                # Our own code when the server closed (4004 = slow consumer, 4001, ...), else
                # the client's, else 1006 (the connection just vanished).
                code = conn.close_code or ws.close_code or 1006
                metrics.ws_disconnects.labels(str(code)).inc()
                if not conn.closed:
                    if ws.close_code is None:
                        conn.close(Disconnect.PROTOCOL_ERROR, "bye", flush=True)
                    else:
                        conn.close(Disconnect.NORMAL, "bye", flush=True)
            return ws
        finally:
            if ticket is not None:
                ticket.release()
    except web.HTTPException as exc:
        # a malformed handshake (aiohttp's 400 says what is wrong)
        status = exc.status
        response = error_envelope_for(exc)
        return response
    except Exception as exc:
        if ws is not None and ws.prepared:
            log.exception("unhandled error in a WebSocket connection")
            return ws
        response = error_envelope_for(exc)
        return response
    finally:
        if response is not None:
            status = response.status
        scope.close(request, status, response)


def release_http_state(request: web.Request) -> bool:
    """Free what aiohttp keeps per connection for HTTP parsing once the upgrade is done: the
    HTTP request parser (about 760 bytes) and the pipelined-request queue, a ``deque`` (another
    760, with its first block), both idle for the connection's whole life. Returns whether it
    did.

    Read against aiohttp 3.14's ``web_protocol.py``: once the WebSocket reader is the payload
    parser, ``data_received`` feeds it and no longer touches either; ``pause_reading``/
    ``resume_reading`` reach the request parser only when not upgraded; ``finish_response`` and
    the request loop's next turn use them only with a parser (``_parser is not None``) or on a
    kept-alive connection, which an upgraded one is not; and ``connection_lost`` clears the
    parser itself. The queue becomes an empty tuple, so any path that still tried to queue a
    request would fail loudly instead of sharing state.

    It checks the shape it relies on rather than a version: if an aiohttp release renames or
    retypes these attributes nothing is released, and
    ``tests/handlers/realtime/test_websocket.py`` (which also drives pause/resume and a close
    through a released connection) fails until this is read again.
    """
    protocol: Any = request.protocol
    if (
        not isinstance(getattr(protocol, "_messages", None), deque)
        or not hasattr(protocol, "_parser")
        or getattr(protocol, "_payload_parser", None) is None
        or getattr(protocol, "_upgraded", False) is not True
        or protocol._messages
    ):
        return False  # pragma: no cover - another aiohttp shape, or not an accepted upgrade
    protocol._parser = None
    protocol._messages = ()
    return True


def _authentication_timeout(conn: Connection) -> None:
    """``WS_AUTH_TIMEOUT`` passed: close the connection unless it authenticated."""
    if conn.principal is None:
        conn.close(Disconnect.UNAUTHENTICATED, "authentication timeout")


def _refusal(request: web.Request) -> web.Response | None:
    """The answer to an upgrade refused before admission, if it is."""
    if not request.app[keys.connections].accepting:
        return error_response(503, "server shutting down")
    if not _origin_allowed(request):
        return error_response(403, "origin not allowed")
    return None


#: ``GET /ws``: our protocol
websocket = owns_request(functools.partial(_serve, wire=ARENA_WEBSOCKET))
#: ``GET /connection/websocket``: Centrifugo's client protocol v2 (JSON) on the same sessions
centrifuge_websocket = owns_request(functools.partial(_serve, wire=CENTRIFUGE_WEBSOCKET))


def setup_routes(app: web.Application) -> None:
    app[heartbeat_key] = HeartbeatSweep(app[keys.config].ws.heartbeat)
    app.cleanup_ctx.append(heartbeat_sweep)
    app.router.add_get("/ws", websocket)
    # the path the Arena marketplace client connects to (same protocol)
    app.router.add_get("/ws/updates/", websocket)
    # Centrifugo SDKs' default endpoint (JSON protocol; the protobuf one is not served)
    app.router.add_get("/connection/websocket", centrifuge_websocket)
