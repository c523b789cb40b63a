"""``GET /ws``: the multiplexed channel protocol (documented in ``docs/protocol.md``).

One command per text frame, processed in order; replies and pushes share one outgoing queue
so a subscribe reply always precedes the publications that follow it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from handlers import keys, ws_frames
from handlers.client_ip import client_ip
from handlers.errors import error_response
from handlers.permissions import can_subscribe
from handlers.principal import Principal
from handlers.ratelimit import RateLimiterUnavailable
from handlers.tokens import TokenError
from handlers.ws_admission import Ticket
from handlers.ws_connection import (
    CLOSE_PROTOCOL,
    CLOSE_RATE_LIMITED,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_TOO_MANY_SUBSCRIPTIONS,
    CLOSE_UNAUTHENTICATED,
    CLOSE_UNSUPPORTED,
    Connection,
)
from pubsub.broker import BrokerError, StreamPosition
from pubsub.hub import SubscriptionCancelled
from pubsub.namespaces import InvalidChannel
from pubsub.presence import PresenceEntry

log = logging.getLogger(__name__)

HISTORY_DEFAULT_LIMIT = 100
HISTORY_MAX_LIMIT = 1000
MAX_ID_LENGTH = 64


class CommandError(Exception):
    """Answer the current command with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def _string(cmd: dict[str, Any], field: str, *, max_length: int = 8192) -> str:
    value = cmd.get(field)
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise CommandError("bad_request", f"'{field}' must be a non-empty string")
    return value


def _since(cmd: dict[str, Any]) -> StreamPosition | None:
    since = cmd.get("since")
    if since is None:
        return None
    if not isinstance(since, dict):
        raise CommandError("bad_request", "'since' must be an object {offset, epoch}")
    offset, epoch = since.get("offset"), since.get("epoch")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise CommandError("bad_request", "'since.offset' must be a non-negative integer")
    if not isinstance(epoch, str) or len(epoch) > 64:
        raise CommandError("bad_request", "'since.epoch' must be a string")
    return StreamPosition(offset, epoch)


class Session:
    """The command loop of one connection.

    Slotted and with a class-level command table: thousands of idle connections each hold
    one, so every per-instance dict counts (see ``bench/conn_memory.py``).
    """

    __slots__ = (
        "_present",
        "app",
        "bucket",
        "config",
        "conn",
        "hub",
        "limiter",
        "metrics",
        "presence",
        "registry",
    )

    def __init__(self, app: web.Application, conn: Connection) -> None:
        self.app = app
        self.conn = conn
        self.config = app[keys.config].ws
        self.hub = app[keys.hub]
        self.registry = app[keys.connections]
        self.metrics = app[keys.http_metrics]
        self.bucket = TokenBucket(self.config.command_rate, self.config.command_burst)
        self.limiter = app[keys.rate_limiter]
        self.presence = app.get(keys.presence)
        self._present: set[str] | None = None  # channels registered in presence, made lazily

    @property
    def principal(self) -> Principal | None:
        principal: Principal | None = self.conn.principal
        return principal

    async def run(self) -> None:
        ws = self.conn.ws
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.auth_timeout
        try:
            while not self.conn.closed:
                timeout = None if self.principal else max(0.0, deadline - loop.time())
                try:
                    msg = await ws.receive(timeout=timeout)
                except TimeoutError:
                    self.conn.close_soon(CLOSE_UNAUTHENTICATED, "authentication timeout")
                    break
                if msg.type == WSMsgType.TEXT:
                    await self._handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.conn.close_soon(CLOSE_UNSUPPORTED, "binary frames are not supported")
                else:
                    break  # CLOSE, CLOSING, CLOSED or ERROR (1009 is sent by aiohttp itself)
        finally:
            for channel in list(self._present or ()):
                await self._leave(channel)

    async def _handle(self, text: str) -> None:
        conn = self.conn
        if not self.bucket.take():
            self.metrics.ws_commands.labels("any", "rate_limited").inc()
            conn.close_soon(CLOSE_RATE_LIMITED, "command rate limit exceeded", flush=True)
            return
        if not await self._user_allowed():
            self.metrics.ws_commands.labels("any", "rate_limited").inc()
            conn.close_soon(
                CLOSE_RATE_LIMITED, "command rate limit exceeded for this user", flush=True
            )
            return
        try:
            cmd = orjson.loads(text)
        except orjson.JSONDecodeError:
            conn.send(ws_frames.error_reply(None, "bad_request", "frame is not valid JSON"))
            return
        if not isinstance(cmd, dict):
            conn.send(ws_frames.error_reply(None, "bad_request", "command must be a JSON object"))
            return
        command_id = cmd.get("id")
        if isinstance(command_id, bool) or not isinstance(command_id, int | str):
            conn.send(
                ws_frames.error_reply(None, "bad_request", "'id' must be an integer or string")
            )
            return
        if isinstance(command_id, str) and len(command_id) > MAX_ID_LENGTH:
            conn.send(ws_frames.error_reply(None, "bad_request", "'id' is too long"))
            return
        kind = cmd.get("type")
        handler = COMMANDS.get(kind) if isinstance(kind, str) else None
        if self.principal is None and kind != "authenticate":
            conn.close_soon(CLOSE_UNAUTHENTICATED, "authenticate must be the first command")
            return
        if handler is None:
            self.metrics.ws_commands.labels("unknown", "error").inc()
            conn.send(ws_frames.error_reply(command_id, "unknown_command", "unknown command type"))
            return
        try:
            result = await handler(self, cmd)
        except CommandError as exc:
            self.metrics.ws_commands.labels(kind, exc.code).inc()
            if not conn.closed:
                conn.send(ws_frames.error_reply(command_id, exc.code, exc.message))
            return
        except SubscriptionCancelled:
            return
        self.metrics.ws_commands.labels(kind, "ok").inc()
        if conn.closed:
            return
        tail = result.pop("__tail__", None)
        joined = result.pop("__joined__", None)
        conn.send(ws_frames.reply(command_id, result))
        for pub in tail or ():
            conn.send(ws_frames.publication_frame(pub))
        if joined is not None:
            # After the reply, so a subscriber never sees its own join before its subscription.
            await self._join(joined)

    async def _user_allowed(self) -> bool:
        """The per-user limit shared by every connection and instance (``WS_USER_COMMAND_*``).

        Fails open when the shared limiter is unreachable: the per-connection bucket still holds.
        """
        principal = self.principal
        if principal is None or principal.is_service:
            return True
        rate, burst = self.config.user_command_rate, self.config.user_command_burst
        try:
            decision = await self.limiter.hit(f"ws:user:{principal.user_id}", burst, burst / rate)
        except RateLimiterUnavailable:
            return True
        return decision.allowed

    # -- commands --------------------------------------------------------------------------

    def _verify(self, token: str) -> Principal:
        try:
            return self.app[keys.tokens].principal(token)
        except TokenError as exc:
            raise CommandError("unauthenticated", exc.reason) from None

    async def _authenticate(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.principal is not None:
            raise CommandError("already_authenticated", "connection is already authenticated")
        try:
            principal = self._verify(_string(cmd, "token"))
        except CommandError as exc:
            self.conn.close_soon(CLOSE_UNAUTHENTICATED, exc.message)
            raise
        limit = self.config.max_connections_per_user
        if not principal.is_service and self.registry.user_connections(principal.user_id) >= limit:
            self.conn.close_soon(CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this user")
            raise CommandError("limit_exceeded", "too many connections for this user")
        self.conn.principal = principal
        self.registry.bind_user(self.conn, principal.user_id)
        return {
            "client": self.conn.conn_id,
            "user": {"id": principal.user_id, "role": principal.role},
            "expires_at": int(principal.expires_at),
        }

    async def _refresh(self, cmd: dict[str, Any]) -> dict[str, Any]:
        principal = self._verify(_string(cmd, "token"))
        current = self.principal
        assert current is not None
        if principal.user_id != current.user_id:
            raise CommandError("unauthenticated", "token belongs to another user")
        self.conn.principal = principal
        return {"expires_at": int(principal.expires_at)}

    async def _ping(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _checked_channel(self, cmd: dict[str, Any]) -> str:
        channel = _string(cmd, "channel", max_length=256)
        try:
            self.hub.options(channel)
        except InvalidChannel as exc:
            raise CommandError("invalid_channel", str(exc)) from None
        principal = self.principal
        assert principal is not None
        if not await can_subscribe(self.app, principal, channel):
            raise CommandError("permission_denied", "you may not subscribe to this channel")
        return channel

    async def _subscribe(self, cmd: dict[str, Any]) -> dict[str, Any]:
        since = _since(cmd)
        channel = await self._checked_channel(cmd)
        conn = self.conn
        if channel in conn.subscriptions:
            raise CommandError("already_subscribed", "already subscribed to this channel")
        if len(conn.subscriptions) >= self.config.max_subscriptions:
            conn.close_soon(CLOSE_TOO_MANY_SUBSCRIPTIONS, "too many subscriptions", flush=True)
            raise CommandError("limit_exceeded", "too many subscriptions")
        options = self.hub.options(channel)
        conn.subscriptions.add(channel)
        try:
            result = await self.hub.subscribe(conn, channel, since)
        except BrokerError:
            conn.subscriptions.discard(channel)
            raise CommandError("broker_unavailable", "message broker unavailable") from None
        except BaseException:
            conn.subscriptions.discard(channel)
            raise
        reply: dict[str, Any] = {
            "channel": channel,
            "offset": result.position.offset,
            "epoch": result.position.epoch,
            "recoverable": options.recovery,
        }
        if since is not None:
            reply["recovered"] = bool(result.recovered)
            reply["publications"] = [ws_frames.publication_dict(p) for p in result.publications]
        reply["__tail__"] = result.tail
        if options.presence:
            reply["__joined__"] = channel
        return reply

    async def _unsubscribe(self, cmd: dict[str, Any]) -> dict[str, Any]:
        channel = _string(cmd, "channel", max_length=256)
        if channel not in self.conn.subscriptions:
            raise CommandError("not_subscribed", "not subscribed to this channel")
        self.conn.subscriptions.discard(channel)
        self.hub.unsubscribe(self.conn, channel)
        await self._leave(channel)
        return {"channel": channel}

    # -- presence --------------------------------------------------------------------------

    def _entry(self) -> PresenceEntry:
        principal = self.principal
        assert principal is not None
        return PresenceEntry(self.conn.conn_id, principal.user_id, {"role": principal.role})

    async def _join(self, channel: str) -> None:
        if self.presence is None or channel not in self.conn.subscriptions:
            return
        try:
            await self.presence.join(channel, self._entry())
            if self._present is None:
                self._present = set()
            self._present.add(channel)
        except Exception:
            log.warning("presence join failed", exc_info=True, extra={"channel": channel})

    async def _leave(self, channel: str) -> None:
        if self.presence is None or self._present is None or channel not in self._present:
            return
        self._present.discard(channel)
        try:
            await self.presence.leave(channel, self._entry())
        except Exception:
            log.warning("presence leave failed", exc_info=True, extra={"channel": channel})

    async def _presence_channel(self, cmd: dict[str, Any]) -> str:
        channel = await self._checked_channel(cmd)
        if self.presence is None or not self.hub.options(channel).presence:
            raise CommandError("not_available", "presence is off in this namespace")
        return channel

    async def _presence(self, cmd: dict[str, Any]) -> dict[str, Any]:
        channel = await self._presence_channel(cmd)
        assert self.presence is not None
        try:
            entries = await self.presence.store.entries(channel)
        except Exception:
            raise CommandError("broker_unavailable", "presence store unavailable") from None
        clients = {e.client_id: {"user": e.user_id, "info": e.info} for e in entries}
        return {"channel": channel, "clients": clients}

    async def _presence_stats(self, cmd: dict[str, Any]) -> dict[str, Any]:
        channel = await self._presence_channel(cmd)
        assert self.presence is not None
        try:
            stats = await self.presence.store.stats(channel)
        except Exception:
            raise CommandError("broker_unavailable", "presence store unavailable") from None
        return {"channel": channel, "num_clients": stats.clients, "num_users": stats.users}

    async def _history(self, cmd: dict[str, Any]) -> dict[str, Any]:
        since = _since(cmd)
        limit = cmd.get("limit", HISTORY_DEFAULT_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise CommandError("bad_request", "'limit' must be a non-negative integer")
        limit = min(limit, HISTORY_MAX_LIMIT)
        channel = await self._checked_channel(cmd)
        options = self.hub.options(channel)
        try:
            broker = self.hub.broker
            after = since.offset if since is not None else None
            hist = await broker.history(channel, options, since=after, limit=limit)
            if since is not None and hist.position.epoch != since.epoch:
                # Offsets of another epoch mean nothing here: answer with the newest instead.
                hist = await broker.history(channel, options, limit=limit)
        except BrokerError:
            raise CommandError("broker_unavailable", "message broker unavailable") from None
        return {
            "channel": channel,
            "offset": hist.position.offset,
            "epoch": hist.position.epoch,
            "publications": [ws_frames.publication_dict(p) for p in hist.publications],
        }


Command = Callable[[Session, dict[str, Any]], Awaitable[dict[str, Any]]]

#: type -> handler; one table for every connection
COMMANDS: dict[str, Command] = {
    "authenticate": Session._authenticate,
    "refresh": Session._refresh,
    "subscribe": Session._subscribe,
    "unsubscribe": Session._unsubscribe,
    "ping": Session._ping,
    "history": Session._history,
    "presence": Session._presence,
    "presence_stats": Session._presence_stats,
}


def _origin_allowed(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser; browsers always send Origin on a WebSocket handshake
    return origin in request.app[keys.config].http.allowed_origins


async def websocket(request: web.Request) -> web.StreamResponse:
    """Upgrade to a WebSocket and run the command loop until the client or server closes."""
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
        return await _upgraded(request, ticket)
    finally:
        ticket.release()


async def _upgraded(request: web.Request, ticket: Ticket[Connection]) -> web.StreamResponse:
    """The WebSocket session of an admitted upgrade (``ticket`` counts it until it
    authenticates)."""
    app = request.app
    registry = app[keys.connections]
    config = app[keys.config].ws
    ws = web.WebSocketResponse(
        heartbeat=config.heartbeat,
        max_msg_size=config.max_frame_bytes,
        compress=False,
        autoping=True,
    )
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # pragma: no cover - the client vanished during the handshake
        return ws
    conn = Connection(
        uuid.uuid4().hex,
        ws,
        transport,
        registry.flusher,
        max_messages=config.max_queue_messages,
        max_bytes=config.max_queue_bytes,
    )
    ticket.attach(conn)
    metrics = app[keys.http_metrics]
    registry.add(conn)
    metrics.ws_connections.inc()
    try:
        await Session(app, conn).run()
    except ConnectionError:
        pass
    finally:
        registry.remove(conn)
        metrics.ws_connections.dec()
        # Our own code when the server closed (4004 = slow consumer, 4001, ...), else the
        # client's, else 1006 (the connection just vanished).
        code = conn.close_code or ws.close_code or 1006
        metrics.ws_disconnects.labels(str(code)).inc()
        if not conn.closed:
            conn.close_soon(CLOSE_PROTOCOL if ws.close_code is None else 1000, "bye", flush=True)
    return ws


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/ws", websocket)
