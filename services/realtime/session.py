"""The protocol-neutral session of one connected client.

A transport hands every incoming message to :meth:`Session.receive`; the session decodes it with
its wire's codec, applies the per-connection and per-user command limits, runs the typed
command (:meth:`Session.execute`) and sends the encoded reply, the live publications that
arrived during a subscribe, and presence joins, in that order. Replies and pushes share the
client's one outgoing queue, so a subscribe reply always precedes the publications after it.

All dependencies come in through one shared :class:`RealtimeService`; nothing here knows HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from pubsub.broker import BrokerError, StreamPosition
from pubsub.hub import Hub, SubscriptionCancelled
from pubsub.namespaces import ChannelName, NamespaceOptions
from pubsub.namespaces import InvalidChannel as BadChannelName
from pubsub.presence import Presence as PresenceTracker
from pubsub.presence import PresenceEntry
from services.realtime import commands as c
from services.realtime.client import Client, Identity
from services.realtime.errors import (
    UNSUBSCRIBE_REVOKED,
    UNSUBSCRIBE_REVOKED_REASON,
    AlreadyAuthenticated,
    AlreadySubscribed,
    BadRequest,
    BrokerUnavailable,
    CommandError,
    Disconnect,
    InvalidChannel,
    LimitExceeded,
    NotAvailable,
    NotSubscribed,
    PermissionDenied,
    TemporarilyUnavailable,
    TokenExpired,
    Unauthenticated,
    UnrecoverablePosition,
)
from services.realtime.registry import ConnectionRegistry
from services.realtime.wire import Wire
from storage.errors import UNAVAILABLE

log = logging.getLogger(__name__)

#: PostgreSQL cannot be reached (or is shutting down / not yet accepting connections): a
#: permission rule could not be evaluated, the command may succeed later
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    *UNAVAILABLE,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)

#: ``(principal, channel) -> allowed``; may read the database
AccessRule = Callable[[Identity, ChannelName], Awaitable[bool]]


class UserRateLimiter(Protocol):
    """The limiter shared by every connection and instance (GCRA in Redis, in practice)."""

    async def allow(self, key: str, limit: int, period: float) -> bool:
        """Count one event for ``key`` if at most ``limit`` happened within ``period`` seconds.

        Returns True when the limiter's store is unreachable (fail open: the per-connection
        bucket still holds)."""
        ...


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-connection and per-user limits (``WS_*`` settings)."""

    auth_timeout: float = 10.0
    #: ``WS_HEARTBEAT``: seconds between server pings
    heartbeat: float = 25.0
    max_subscriptions: int = 256
    max_connections_per_user: int = 20
    command_rate: float = 50.0
    command_burst: int = 100
    user_command_rate: float = 100.0
    user_command_burst: int = 200


async def _nobody(principal: Identity, channel: ChannelName) -> bool:
    return False


def _forget(client: Client, channel: str) -> None:
    """Drop ``channel`` from the client's subscriptions (kept in subscribe order)."""
    client.subscriptions = tuple(name for name in client.subscriptions if name != channel)


def _uncounted(command: str, outcome: str) -> None:
    return None


def _same_principal(principal: Identity, role: str) -> Identity:
    return principal


@dataclass(frozen=True, slots=True)
class RealtimeService:
    """What every session shares: one per application.

    ``verify_token`` returns the caller of an access or service token or raises
    :class:`~services.realtime.errors.Unauthenticated`. ``can_subscribe`` decides reads
    (subscribe, recovery, history, presence) and ``can_publish`` client publications (nobody by
    default). ``count_command(command, outcome)`` feeds a metric. ``with_role(principal,
    role)`` is the principal after an administrator changed its role (applied to live
    connections by :meth:`Session.recheck`).
    """

    hub: Hub
    registry: ConnectionRegistry
    verify_token: Callable[[str], Identity]
    can_subscribe: AccessRule
    user_limiter: UserRateLimiter
    limits: SessionLimits = field(default_factory=SessionLimits)
    presence: PresenceTracker | None = None
    can_publish: AccessRule = _nobody
    count_command: Callable[[str, str], None] = _uncounted
    with_role: Callable[[Identity, str], Identity] = _same_principal


def _live(principal: Identity) -> Identity:
    """``principal`` unless its token is past its expiry. The verifier allows some clock leeway
    but the registry closes connections at the expiry itself (``close_expired``): a connection
    accepted in between would be closed within a second, and a client that reconnects with the
    same token would loop."""
    if principal.expires_at <= time.time():
        raise TokenExpired("token expired")
    return principal


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


class Session:
    """The command loop of one client.

    Slotted, with the shared dependencies in one object and a class-level command table:
    thousands of idle connections each hold one, so every per-instance field counts (see
    ``bench/conn_memory.py``).
    """

    __slots__ = ("_present", "bucket", "client", "service", "wire")

    def __init__(self, service: RealtimeService, client: Client, wire: Wire) -> None:
        self.service = service
        self.client = client
        self.wire = wire
        limits = service.limits
        self.bucket = TokenBucket(limits.command_rate, limits.command_burst)
        self._present: set[str] | None = None  # channels registered in presence, made lazily
        service.registry.track(self)

    @property
    def principal(self) -> Identity | None:
        """Who the client authenticated as (None until ``authenticate`` succeeded)."""
        return self.client.principal

    def _principal(self) -> Identity:
        principal = self.client.principal
        assert principal is not None  # receive() lets nothing but authenticate through before
        return principal

    # -- the loop --------------------------------------------------------------------------

    async def receive(self, message: str) -> None:
        """Handle one incoming message: every command in it, in order."""
        client = self.client
        service = self.service
        for item in self.wire.codec.decode(message):
            if client.closed:
                return
            if not self.bucket.take():
                service.count_command("any", "rate_limited")
                client.close(Disconnect.RATE_LIMITED, "command rate limit exceeded", flush=True)
                return
            principal = client.principal
            if principal is None:
                if item.command_type is not c.Authenticate:
                    client.close(
                        Disconnect.UNAUTHENTICATED, "authenticate must be the first command"
                    )
                    return
            elif not principal.is_service and not await self._user_allowed(principal):
                service.count_command("any", "rate_limited")
                client.close(
                    Disconnect.RATE_LIMITED, "command rate limit exceeded for this user", flush=True
                )
                return
            if isinstance(item, c.Malformed):
                if client.principal is None:  # a malformed authenticate
                    client.close(Disconnect.UNAUTHENTICATED, item.error.message)
                    return
                kind = item.command_type.name if item.command_type is not None else "unknown"
                service.count_command(kind, item.error.code)
                client.send(self.wire.error(item, item.error))
                continue
            await self._run(item)

    async def _run(self, request: c.Request) -> None:
        client = self.client
        command = request.command
        name = command.name
        try:
            # execute(), without its extra coroutine: every command of every client runs here
            result: c.Result = await _HANDLERS[type(command)](self, command)
        except SubscriptionCancelled:
            return  # the client went away (or unsubscribed) during its subscribe
        except DATABASE_DOWN:
            log.warning("database unavailable", exc_info=True, extra={"command": name})
            self._fail(request, TemporarilyUnavailable())
            return
        except CommandError as exc:
            self._fail(request, exc)
            return
        self.service.count_command(name, "ok")
        if client.closed:
            return
        reply = self.wire.result(request, result)
        if reply is not None:
            client.send(reply)
        if isinstance(result, c.SubscribeResult):
            for pub in result.tail:
                client.send(self.wire.publication(pub))
            # After the reply, so a subscriber never sees its own join before its subscription
            # (joined(), awaited only when there is something to join).
            if result.join_presence:
                await self._join(result.channel)
        elif isinstance(result, c.RefreshResult):
            # A token refresh is also the moment to notice access lost without an announcement
            # (the periodic re-check is the other); after the reply, like any push.
            await self.recheck()

    async def run(self, command: c.Command) -> c.Result:
        """Run ``command`` for a transport without incoming messages (a one-way HTTP stream
        opens its session with ``authenticate`` and ``subscribe`` from its request): counted
        like the commands of :meth:`receive`, but the transport encodes the result itself.

        Raises :class:`~services.realtime.errors.CommandError` (a database outage as
        :class:`~services.realtime.errors.TemporarilyUnavailable`) and
        :class:`~pubsub.hub.SubscriptionCancelled` when the client went away meanwhile."""
        name = command.name
        try:
            result = await self.execute(command)
        except DATABASE_DOWN:
            log.warning("database unavailable", exc_info=True, extra={"command": name})
            error = TemporarilyUnavailable()
            self.service.count_command(name, error.code)
            raise error from None
        except CommandError as exc:
            self.service.count_command(name, exc.code)
            raise
        self.service.count_command(name, "ok")
        return result

    async def joined(self, result: c.SubscribeResult) -> None:
        """The client was told about the subscription (reply, tail): join presence there, where
        the namespace has it."""
        if result.join_presence:
            await self._join(result.channel)

    def _fail(self, request: c.Request, error: CommandError) -> None:
        self.service.count_command(request.command.name, error.code)
        if not self.client.closed:
            self.client.send(self.wire.error(request, error))
            if error.disconnect is not None:
                self.client.close(error.disconnect, error.message, flush=True)

    async def _user_allowed(self, principal: Identity) -> bool:
        """The per-user limit shared by every connection and instance (``WS_USER_COMMAND_*``),
        for a user's ``principal`` (services have none)."""
        limits = self.service.limits
        rate, burst = limits.user_command_rate, limits.user_command_burst
        return await self.service.user_limiter.allow(
            f"ws:user:{principal.user_id}", burst, burst / rate
        )

    async def close(self) -> None:
        """The client is gone: leave presence everywhere it joined."""
        for channel in list(self._present or ()):
            await self._leave(channel)

    # -- commands --------------------------------------------------------------------------

    async def execute(self, command: c.Command) -> c.Result:
        """Run one command; raises :class:`~services.realtime.errors.CommandError`."""
        handler = _HANDLERS[type(command)]
        result: c.Result = await handler(self, command)
        return result

    async def authenticate(self, command: c.Authenticate) -> c.AuthenticateResult:
        client, service = self.client, self.service
        if client.principal is not None:
            raise AlreadyAuthenticated()
        try:
            principal = _live(service.verify_token(command.token))
        except TokenExpired as exc:
            # Answered (a client that can refresh its token learns why), then closed.
            exc.disconnect = Disconnect.TOKEN_EXPIRED
            raise
        except Unauthenticated as exc:
            client.close(Disconnect.UNAUTHENTICATED, exc.message)
            raise
        limit = service.limits.max_connections_per_user
        registry = service.registry
        if not principal.is_service and registry.user_connections(principal.user_id) >= limit:
            client.close(Disconnect.TOO_MANY_CONNECTIONS, "too many connections for this user")
            raise LimitExceeded("too many connections for this user")
        client.principal = principal
        registry.bind_user(client, principal.user_id)
        return c.AuthenticateResult(
            client.conn_id,
            principal.user_id,
            principal.role,
            int(principal.expires_at),
            ping=int(service.limits.heartbeat),
        )

    async def refresh(self, command: c.Refresh) -> c.RefreshResult:
        principal = _live(self.service.verify_token(command.token))
        if principal.user_id != self._principal().user_id:
            raise Unauthenticated("token belongs to another user")
        self.client.principal = principal
        return c.RefreshResult(int(principal.expires_at))

    async def ping(self, command: c.Ping) -> c.PingResult:
        return c.PingResult()

    def _parse(self, channel: str) -> ChannelName:
        """``channel`` parsed once (namespace, identifier, options) for every check after."""
        try:
            return self.service.hub.parse(channel)
        except BadChannelName as exc:
            raise InvalidChannel(str(exc)) from None

    async def _readable(self, channel: str) -> NamespaceOptions:
        """The channel's options, once it is known valid and readable by this client."""
        parsed = self._parse(channel)
        if not await self.service.can_subscribe(self._principal(), parsed):
            raise PermissionDenied("you may not subscribe to this channel")
        return parsed.options

    async def subscribe(self, command: c.Subscribe) -> c.SubscribeResult:
        channel, since = command.channel, command.since
        options = await self._readable(channel)
        client, service = self.client, self.service
        if channel in client.subscriptions:
            raise AlreadySubscribed()
        if len(client.subscriptions) >= service.limits.max_subscriptions:
            client.close(Disconnect.TOO_MANY_SUBSCRIPTIONS, "too many subscriptions", flush=True)
            raise LimitExceeded("too many subscriptions")
        client.subscriptions = (*client.subscriptions, channel)
        try:
            started = await service.hub.subscribe(client, channel, since, encoder=self.wire)
        except BrokerError:
            _forget(client, channel)
            raise BrokerUnavailable() from None
        except BaseException:
            _forget(client, channel)
            raise
        recovering = since is not None
        return c.SubscribeResult(
            channel,
            started.position,
            options.recovery,
            bool(started.recovered) if recovering else None,
            started.publications if recovering else [],
            started.tail,
            join_presence=options.presence and service.presence is not None,
        )

    async def unsubscribe(self, command: c.Unsubscribe) -> c.UnsubscribeResult:
        channel = command.channel
        if channel not in self.client.subscriptions:
            raise NotSubscribed()
        _forget(self.client, channel)
        self.service.hub.unsubscribe(self.client, channel)
        await self._leave(channel)
        return c.UnsubscribeResult(channel)

    async def history(self, command: c.History) -> c.HistoryResult:
        channel, since, limit = command.channel, command.since, command.limit
        options = await self._readable(channel)
        try:
            if command.stream_order:
                return await self._stream_history(command, options)
            hist = await self.service.hub.history(channel, since=since, limit=limit)
        except BrokerError:
            raise BrokerUnavailable() from None
        return c.HistoryResult(channel, hist.position, hist.publications)

    async def _stream_history(
        self, command: c.History, options: NamespaceOptions
    ) -> c.HistoryResult:
        """Centrifugo's history filter (see :class:`~services.realtime.commands.History`)."""
        channel, since, limit = command.channel, command.since, command.limit
        read = self.service.hub.read_history
        if since is None:
            # Forward: from the stream's start (every offset is > 0). Reverse: the newest.
            hist = await read(channel, options, since=None if command.reverse else 0, limit=limit)
            pubs = hist.publications
        elif not command.reverse:
            hist = await read(channel, options, since=since.offset, limit=limit)
            pubs = hist.publications
        else:
            if since.offset == 0:
                raise BadRequest("'since.offset' must be positive with 'reverse'")
            # The ``limit`` offsets just before ``since``: read from below them and keep those
            # before ``since`` (fewer when the older ones are gone from history).
            first = max(0, since.offset - 1 - limit)
            hist = await read(channel, options, since=first, limit=limit)
            pubs = [p for p in hist.publications if p.offset < since.offset]
        if since is not None and since.epoch and since.epoch != hist.position.epoch:
            raise UnrecoverablePosition()
        if command.reverse:
            pubs = pubs[::-1]
        return c.HistoryResult(channel, hist.position, pubs)

    async def publish(self, command: c.Publish) -> c.PublishResult:
        channel = command.channel
        parsed = self._parse(channel)
        if not await self.service.can_publish(self._principal(), parsed):
            raise PermissionDenied("you may not publish to this channel")
        try:
            published = await self.service.hub.publish_raw(channel, command.data)
        except BrokerError:
            raise BrokerUnavailable() from None
        return c.PublishResult(channel, StreamPosition(published.offset, published.epoch))

    # -- access changes --------------------------------------------------------------------

    async def recheck(
        self, channels: Collection[str] | None = None, *, role: str | None = None
    ) -> int:
        """Check the subscriptions (all, or those among ``channels``) against the channel rules
        again and end, with an ``unsubscribe`` push, each one no longer allowed; ``role`` is
        the principal's new role (an administrator changed it). Returns how many were ended.

        A rule that cannot be evaluated (database down) keeps the subscription until the next
        re-check."""
        client, service = self.client, self.service
        principal = client.principal
        if principal is None or client.closed:
            return 0
        if role is not None and role != principal.role:
            principal = client.principal = service.with_role(principal, role)
        ended = 0
        for channel in list(client.subscriptions if channels is None else channels):
            if channel not in client.subscriptions:
                continue
            try:
                allowed = await service.can_subscribe(principal, service.hub.parse(channel))
            except BadChannelName:  # a namespace removed by a configuration change
                allowed = False
            except DATABASE_DOWN:
                log.warning("re-check postponed: database unavailable", extra={"channel": channel})
                continue
            if not allowed and await self.end_subscription(
                channel, UNSUBSCRIBE_REVOKED, UNSUBSCRIBE_REVOKED_REASON
            ):
                ended += 1
        return ended

    async def end_subscription(self, channel: str, code: int, reason: str) -> bool:
        """End the subscription to ``channel`` from the server's side: no more publications,
        an ``unsubscribe`` push with ``code`` and ``reason``, a presence leave. False when
        the client was not subscribed (any more)."""
        client = self.client
        if channel not in client.subscriptions or client.closed:
            return False
        _forget(client, channel)
        # Off the hub first: nothing of the channel is delivered after the push.
        self.service.hub.unsubscribe(client, channel)
        client.unsubscribed(channel, code, reason)
        log.info("subscription ended by the server", extra={"channel": channel, "code": code})
        await self._leave(channel)
        return True

    # -- presence --------------------------------------------------------------------------

    def _entry(self) -> PresenceEntry:
        principal = self._principal()
        return PresenceEntry(self.client.conn_id, principal.user_id, {"role": principal.role})

    async def _join(self, channel: str) -> None:
        presence = self.service.presence
        if presence is None or channel not in self.client.subscriptions:
            return
        try:
            await presence.join(channel, self._entry())
            if self._present is None:
                self._present = set()
            self._present.add(channel)
        except Exception:
            log.warning("presence join failed", exc_info=True, extra={"channel": channel})

    async def _leave(self, channel: str) -> None:
        presence = self.service.presence
        if presence is None or self._present is None or channel not in self._present:
            return
        self._present.discard(channel)
        try:
            await presence.leave(channel, self._entry())
        except Exception:
            log.warning("presence leave failed", exc_info=True, extra={"channel": channel})

    async def _presence_channel(self, channel: str) -> PresenceTracker:
        options = await self._readable(channel)
        presence = self.service.presence
        if presence is None or not options.presence:
            raise NotAvailable("presence is off in this namespace")
        return presence

    async def presence(self, command: c.Presence) -> c.PresenceResult:
        presence = await self._presence_channel(command.channel)
        try:
            entries = await presence.store.entries(command.channel)
        except Exception:
            raise BrokerUnavailable("presence store unavailable") from None
        return c.PresenceResult(command.channel, entries)

    async def presence_stats(self, command: c.PresenceStats) -> c.PresenceStatsResult:
        presence = await self._presence_channel(command.channel)
        try:
            stats = await presence.store.stats(command.channel)
        except Exception:
            raise BrokerUnavailable("presence store unavailable") from None
        return c.PresenceStatsResult(command.channel, stats.clients, stats.users)


#: command type -> handler; one table for every session
_HANDLERS: dict[type[Any], Callable[[Session, Any], Awaitable[c.Result]]] = {
    c.Authenticate: Session.authenticate,
    c.Refresh: Session.refresh,
    c.Subscribe: Session.subscribe,
    c.Unsubscribe: Session.unsubscribe,
    c.History: Session.history,
    c.Presence: Session.presence,
    c.PresenceStats: Session.presence_stats,
    c.Ping: Session.ping,
    c.Publish: Session.publish,
}
