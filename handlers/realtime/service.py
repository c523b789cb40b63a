"""Wiring of the real-time sessions' shared dependencies from the application (once, at
startup): every transport and protocol uses the same :class:`RealtimeService`
(``app[keys.realtime]``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from handlers import keys
from pubsub.namespaces import ChannelName
from services.auth.principal import Principal
from services.auth.ratelimit import RateLimiter, RateLimiterUnavailable
from services.auth.tokens import TokenError, TokenExpiredError
from services.realtime.client import Identity
from services.realtime.errors import TokenExpired, Unauthenticated
from services.realtime.session import RealtimeService, SessionLimits


class _SharedLimiter:
    """``services.auth.ratelimit`` behind the session's ``UserRateLimiter`` (fails open)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    async def allow(self, key: str, limit: int, period: float) -> bool:
        try:
            decision = await self._limiter.hit(key, limit, period)
        except RateLimiterUnavailable:
            return True
        return decision.allowed


def realtime_service(app: web.Application) -> RealtimeService:
    """The session's dependencies, wired from the application (once, at startup)."""
    config = app[keys.config].ws
    metrics = app[keys.http_metrics]
    tokens = app[keys.tokens]

    def verify(token: str) -> Identity:
        try:
            return tokens.principal(token)
        except TokenExpiredError as exc:
            raise TokenExpired(exc.reason) from None
        except TokenError as exc:
            raise Unauthenticated(exc.reason) from None

    rules = app[keys.channel_rules]

    async def can_subscribe(principal: Identity, channel: ChannelName) -> bool:
        assert isinstance(principal, Principal)  # what ``verify`` returns
        return await rules.can_subscribe(principal, channel)

    # The label children, looked up once: ``labels()`` validates and locks on every call, and
    # every command of every connection is counted.
    counters: dict[tuple[str, str], Any] = {}

    async def can_publish(principal: Identity, channel: ChannelName) -> bool:
        """Clients publish only in namespaces with ``client_publish``, to channels they may
        read (``CHANNEL_NAMESPACES``); everything else is published by backends over HTTP."""
        if not channel.options.client_publish:
            return False
        return await can_subscribe(principal, channel)

    def count_command(command: str, outcome: str) -> None:
        counter = counters.get((command, outcome))
        if counter is None:
            counter = counters[command, outcome] = metrics.ws_commands.labels(command, outcome)
        counter.inc()

    def with_role(principal: Identity, role: str) -> Identity:
        assert isinstance(principal, Principal)
        return dataclasses.replace(principal, role=role)

    return RealtimeService(
        hub=app[keys.hub],
        registry=app[keys.connections],
        verify_token=verify,
        can_subscribe=can_subscribe,
        can_publish=can_publish,
        user_limiter=_SharedLimiter(app.get(keys.local_first_limiter) or app[keys.rate_limiter]),
        limits=SessionLimits(
            auth_timeout=config.auth_timeout,
            heartbeat=config.heartbeat,
            max_subscriptions=config.max_subscriptions,
            max_connections_per_user=config.max_connections_per_user,
            command_rate=config.command_rate,
            command_burst=config.command_burst,
            user_command_rate=config.user_command_rate,
            user_command_burst=config.user_command_burst,
        ),
        presence=app.get(keys.presence),
        count_command=count_command,
        with_role=with_role,
    )
