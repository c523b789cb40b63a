"""Resources created at startup and disposed at shutdown (aiohttp cleanup contexts)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from handlers import keys
from handlers.metrics import AlertCommitMetrics
from handlers.realtime.service import realtime_service
from handlers.realtime.transport import Flusher
from pubsub.broker import Broker
from pubsub.hub import Hub
from pubsub.memory import MemoryBroker
from pubsub.metrics import HubMetrics
from pubsub.presence import MemoryPresence, Presence, PresenceStore, RedisPresence
from pubsub.redis_keys import KeySpace, PartitionedKeySpace, Partitioning
from pubsub.redis_url import cluster_client
from pubsub.redis_url import redis_client as make_redis_client
from server.settings import Settings
from services.alerts.group_commit import GroupCommit
from services.analysis.factory import build_provider
from services.analysis.runner import AnalysisRunner
from services.auth.ratelimit import MemoryRateLimiter, RedisRateLimiter, SyncedRateLimiter
from services.auth.service_signature import MemoryReplayCache, RedisReplayCache
from services.channels.rules import channel_rules
from services.mail.mailer import Mailer, make_backend
from services.outbox.relay import OutboxRelay
from services.realtime.codecs import arena
from services.realtime.framing import websocket_text_frame
from services.realtime.registry import ConnectionRegistry
from services.realtime.wire import wire
from storage.auth_tokens import purge_expired
from storage.db import open_database

log = logging.getLogger("arena.lifecycle")

settings_key = web.AppKey("settings", Settings)


async def database(app: web.Application) -> AsyncIterator[None]:
    """PostgreSQL: ``DATABASE_URL`` or an embedded server in ``DATA_DIR``; migrations applied."""
    settings = app[settings_key]
    async with open_database(
        settings.database_url,
        settings.data_dir,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        connect_timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
        apply_migrations=settings.migrate_on_start,
    ) as database:
        if settings.migrate_on_start:
            log.info("migrations applied", extra={"applied": database.applied})
        app[keys.pool] = database.pool
        app[keys.backends]["database"] = database.kind
        log.info("database ready", extra={"backend": database.kind})
        yield


def make_broker(settings: Settings) -> Broker:
    """The Redis Cluster broker for a ``redis+cluster://`` URL, the Redis broker for another
    ``REDIS_URL``, the in-process one without."""
    if settings.redis_url and settings.redis_cluster:
        from pubsub.redis_cluster import RedisClusterBroker

        return RedisClusterBroker(
            settings.redis_url,
            prefix=settings.redis_prefix,
            partitions=settings.redis_cluster_partitions,
            command_timeout=settings.redis_command_timeout,
            connect_timeout=settings.redis_connect_timeout,
            subscribe_timeout=settings.redis_subscribe_timeout,
            keepalive=settings.redis_keepalive_interval,
            keepalive_timeout=settings.redis_keepalive_timeout,
        )
    if settings.redis_url:
        from pubsub.redis_broker import RedisBroker

        return RedisBroker(
            settings.redis_url,
            prefix=settings.redis_prefix,
            command_timeout=settings.redis_command_timeout,
            connect_timeout=settings.redis_connect_timeout,
            subscribe_timeout=settings.redis_subscribe_timeout,
            keepalive=settings.redis_keepalive_interval,
            keepalive_timeout=settings.redis_keepalive_timeout,
        )
    return MemoryBroker(collect_under_load=True)


def _presence_store(settings: Settings) -> tuple[PresenceStore, Redis | RedisCluster | None]:
    """Presence in Redis (keys next to the channel's, same hash tag) with ``REDIS_URL``,
    in memory without; and the client to close at shutdown."""
    url = settings.redis_url
    if not url:
        return MemoryPresence(), None
    client: Redis | RedisCluster
    keys: KeySpace | PartitionedKeySpace
    timeouts = {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_command_timeout,
    }
    if settings.redis_cluster:
        # at most 32 calls at once, on at most 32 connections per node; the rest wait
        client = cluster_client(url, max_connections=32, **timeouts)
        keys = PartitionedKeySpace(
            settings.redis_prefix, Partitioning(settings.redis_cluster_partitions)
        )
    else:
        # Its own blocking pool: thousands of joins/leaves at once wait for a connection
        # instead of failing.
        pool = BlockingConnectionPool.from_url(url, max_connections=32, timeout=10, **timeouts)
        client = Redis(connection_pool=pool)
        keys = KeySpace(settings.redis_prefix)
    store = RedisPresence(
        client,
        keys.presence,
        ttl=settings.presence_ttl,
        max_concurrency=32 if settings.redis_cluster else None,
    )
    return store, client


async def channels(app: web.Application) -> AsyncIterator[None]:
    """Broker, hub, presence, the connection registry and the real-time sessions' services."""
    settings = app[settings_key]
    broker = make_broker(settings)
    hub = Hub(
        broker,
        settings.namespaces,
        # The encoder of subscribers that name none (sessions always name their wire): any
        # Subscriber, so the plain one-by-one delivery, not Connection.deliver_all.
        wire(arena.CODEC, websocket_text_frame),
        metrics=HubMetrics.create(app[keys.registry]),
    )
    await hub.start()
    app[keys.hub] = hub
    app[keys.channel_rules] = channel_rules(app[keys.pool])
    app[keys.connections] = ConnectionRegistry(hub)
    app[keys.flusher] = Flusher()
    app[keys.backends]["broker"] = broker.name
    store, presence_redis = _presence_store(settings)
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
    """The background task that publishes outbox events, and the group commit of
    webhooks that wakes it."""
    relay = OutboxRelay(app[keys.pool], app[keys.hub])
    app[keys.relay] = relay
    group = GroupCommit(
        app[keys.pool], relay, timings=AlertCommitMetrics.create(app[keys.registry])
    )
    app[keys.group_commit] = group
    task = asyncio.create_task(relay.run(), name="outbox-relay")
    try:
        yield
    finally:
        await group.close()
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
    """The shared Redis client (when ``REDIS_URL`` is set; a cluster client for a cluster URL)
    and the rate limiter and signature replay cache built on it; without Redis both live in
    process memory."""
    settings = app[settings_key]
    if not settings.redis_url:
        app[keys.rate_limiter] = app[keys.local_first_limiter] = MemoryRateLimiter()
        app[keys.replay_cache] = MemoryReplayCache()
        yield
        return
    # A cluster client fails commands beyond max_connections per node instead of waiting;
    # like the plain client's pool, allow what the rate limiter's bursts need.
    extra = {"max_connections": 1024} if settings.redis_cluster else {}
    client = make_redis_client(
        settings.redis_url,
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_command_timeout,
        **extra,
    )
    app[keys.redis] = client
    app[keys.rate_limiter] = RedisRateLimiter(client, settings.redis_prefix)
    app[keys.replay_cache] = RedisReplayCache(client, settings.redis_prefix)
    sync: asyncio.Task[None] | None = None
    if settings.rate_limit_sync_seconds > 0:
        # The per-user command and per-IP webhook limits decide locally and sync with Redis in
        # the background (docs/security.md); login, verify and invite limits stay exact.
        synced = SyncedRateLimiter(client, settings.redis_prefix, settings.rate_limit_sync_seconds)
        app[keys.local_first_limiter] = synced
        sync = asyncio.create_task(synced.run(), name="rate-limit-sync")
    else:
        app[keys.local_first_limiter] = app[keys.rate_limiter]
    try:
        yield
    finally:
        if sync is not None:
            sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sync
            await synced.close()
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
