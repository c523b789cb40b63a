"""Resources created at startup and disposed at shutdown (aiohttp cleanup contexts)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis

from handlers import keys
from handlers.realtime.transport import Flusher
from handlers.realtime.websocket import ARENA_WEBSOCKET, realtime_service
from pubsub.broker import Broker
from pubsub.hub import Hub
from pubsub.memory import MemoryBroker
from pubsub.metrics import HubMetrics
from pubsub.presence import MemoryPresence, Presence, PresenceStore, RedisPresence
from server.settings import Settings
from services.analysis.factory import build_provider
from services.analysis.runner import AnalysisRunner
from services.auth.ratelimit import MemoryRateLimiter, RedisRateLimiter
from services.channels.rules import channel_rules
from services.mail.mailer import Mailer, make_backend
from services.outbox.relay import OutboxRelay
from services.realtime.registry import ConnectionRegistry
from storage.auth_tokens import purge_expired
from storage.db import create_pool
from storage.embedded import start_embedded
from storage.migrate import migrate

log = logging.getLogger("arena.lifecycle")

settings_key = web.AppKey("settings", Settings)


async def database(app: web.Application) -> AsyncIterator[None]:
    """PostgreSQL: ``DATABASE_URL`` or an embedded server in ``DATA_DIR``; migrations applied."""
    settings = app[settings_key]
    embedded = None
    url = settings.database_url
    kind = "postgres"
    if url is None:
        embedded = await asyncio.to_thread(start_embedded, settings.data_dir)
        url, kind = embedded.url, "embedded"
    try:
        pool = await create_pool(url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
        if settings.migrate_on_start:
            async with pool.acquire() as conn:
                applied = await migrate(conn)
            log.info("migrations applied", extra={"applied": applied})
        app[keys.pool] = pool
        app[keys.backends]["database"] = kind
        log.info("database ready", extra={"backend": kind})
        try:
            yield
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def make_broker(settings: Settings) -> Broker:
    """The Redis broker when ``REDIS_URL`` is set, the in-process one otherwise."""
    if settings.redis_url:
        from pubsub.redis_broker import RedisBroker

        return RedisBroker(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryBroker()


async def channels(app: web.Application) -> AsyncIterator[None]:
    """Broker, hub, presence, the connection registry and the real-time sessions' services."""
    settings = app[settings_key]
    broker = make_broker(settings)
    hub = Hub(
        broker,
        settings.namespaces,
        ARENA_WEBSOCKET,
        metrics=HubMetrics.create(app[keys.registry]),
    )
    await hub.start()
    app[keys.hub] = hub
    app[keys.channel_rules] = channel_rules(app[keys.pool])
    app[keys.connections] = ConnectionRegistry(hub)
    app[keys.flusher] = Flusher()
    app[keys.backends]["broker"] = broker.name
    presence_redis = None
    store: PresenceStore = MemoryPresence()
    if settings.redis_url:
        # Its own blocking pool: thousands of joins/leaves at once wait for a connection
        # instead of failing.
        pool = BlockingConnectionPool.from_url(settings.redis_url, max_connections=32, timeout=10)
        presence_redis = Redis(connection_pool=pool)
        store = RedisPresence(presence_redis, settings.redis_prefix, ttl=settings.presence_ttl)
    presence = Presence(
        hub,
        store,
        refresh_interval=settings.presence_ttl / 3,
        unique_users=settings.presence_unique_users,
    )
    presence.start()
    app[keys.presence] = presence
    app[keys.realtime] = realtime_service(app)
    expiry = asyncio.create_task(app[keys.connections].expire_forever(), name="ws-token-expiry")
    recheck = asyncio.create_task(
        app[keys.connections].recheck_forever(app[keys.config].ws.recheck_seconds),
        name="ws-access-recheck",
    )
    log.info("broker ready", extra={"backend": broker.name})
    try:
        yield
    finally:
        for task in (expiry, recheck):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await presence.close()
        await hub.close()
        if presence_redis is not None:
            await presence_redis.aclose()


async def outbox_relay(app: web.Application) -> AsyncIterator[None]:
    """The background task that publishes outbox events."""
    relay = OutboxRelay(app[keys.pool], app[keys.hub])
    app[keys.relay] = relay
    task = asyncio.create_task(relay.run(), name="outbox-relay")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def close_websockets(app: web.Application) -> None:
    """``on_shutdown``: close every WebSocket with 1001 before connections are torn down."""
    registry = app.get(keys.connections)
    if registry is not None:
        closed = registry.close_all()
        log.info("websockets closed for shutdown", extra={"count": closed})


async def redis_client(app: web.Application) -> AsyncIterator[None]:
    """The shared Redis client (when ``REDIS_URL`` is set) and the rate limiter built on it;
    without Redis the rate limiter lives in process memory."""
    settings = app[settings_key]
    if not settings.redis_url:
        app[keys.rate_limiter] = MemoryRateLimiter()
        yield
        return
    from redis.asyncio import Redis

    client = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    app[keys.redis] = client
    app[keys.rate_limiter] = RedisRateLimiter(client, settings.redis_prefix)
    try:
        yield
    finally:
        await client.aclose()


#: Seconds between purges of long-expired magic links and refresh tokens.
AUTH_PURGE_INTERVAL = 3600.0


async def _purge_auth_tokens(app: web.Application) -> None:
    while True:
        await asyncio.sleep(AUTH_PURGE_INTERVAL)
        try:
            async with app[keys.pool].acquire() as conn:
                removed = await purge_expired(conn)
            log.info("expired auth tokens purged", extra={"rows": removed})
        except Exception:
            # Next hour will do; a failed purge only leaves dead rows a little longer.
            log.warning("purging expired auth tokens failed", exc_info=True)


async def auth_janitor(app: web.Application) -> AsyncIterator[None]:
    """Background task deleting long-expired magic links and refresh tokens every hour."""
    task = asyncio.create_task(_purge_auth_tokens(app), name="auth-janitor")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def mail(app: web.Application) -> AsyncIterator[None]:
    """The mailer; messages still queued at shutdown get a few seconds to go out."""
    settings = app[settings_key]
    email = settings.handlers.email
    mailer = Mailer(make_backend(email), email.sender)
    app[keys.mailer] = mailer
    try:
        yield
    finally:
        await mailer.drain(grace=min(10.0, settings.shutdown_timeout))


async def analyses(app: web.Application) -> AsyncIterator[None]:
    """The analysis runner: fails analyses a crashed process left behind at start, and
    records running ones as interrupted at stop. Needs the database and the hub."""
    settings = app[settings_key]
    config = settings.handlers.analysis
    runner = AnalysisRunner(
        app[keys.pool], app[keys.hub], config, build_provider(config), registry=app[keys.registry]
    )
    await runner.start()
    app[keys.analysis_runner] = runner
    log.info("analysis runner ready", extra={"provider": runner.provider.name})
    try:
        yield
    finally:
        await runner.close()


async def freeze_startup_objects(app: web.Application) -> None:
    """``on_startup``, after every resource is open: move everything allocated so far (imported
    modules, the SDKs, pydantic models, pools) out of the garbage collector's sight.

    Full collections then only scan what connections and requests allocate, so their pauses
    (which stall every WebSocket on the loop) shrink with the startup heap they no longer walk.
    """
    gc.collect()
    gc.freeze()
    log.info(
        "startup objects frozen for the garbage collector", extra={"objects": gc.get_freeze_count()}
    )
