"""The local-first per-user limiter (``SyncedRateLimiter``, ``RATE_LIMIT_SYNC_SECONDS``) on
real Redis: hits decided locally and counted in Redis afterwards, the bound on what N
instances together allow, fail-open when Redis is down, and a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from handlers import keys
from server import lifecycle
from server.app import create_app
from services.auth.ratelimit import (
    RateLimiterUnavailable,
    RedisRateLimiter,
    SyncedRateLimiter,
)
from tests.helpers import connect, eventually, make_user, request


@contextlib.asynccontextmanager
async def running(limiter: SyncedRateLimiter) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(limiter.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await limiter.close()


async def _burst(limiter: SyncedRateLimiter, key: str, n: int, limit: int, period: float) -> int:
    decisions = await asyncio.gather(*(limiter.hit(key, limit, period) for _ in range(n)))
    return sum(decision.allowed for decision in decisions)


async def test_hits_within_the_local_share_ask_redis_nothing_and_are_counted_by_the_sync(
    redis_url: str, redis_prefix: str
) -> None:
    client = Redis.from_url(redis_url)
    try:
        limiter = SyncedRateLimiter(client, redis_prefix, 1.0)
        assert limiter.share(100, 10.0) == 10  # 10/s for one 1 s interval
        for _ in range(5):
            assert (await limiter.hit("user:1", 100, 10.0)).allowed
        # nothing was sent: the hits were decided here
        assert await client.exists(f"{redis_prefix}:rl:user:1") == 0
        async with running(limiter):
            await eventually(lambda: client.exists(f"{redis_prefix}:rl:user:1"), what="the sync")
        # the shared TAT holds the 5 hits (0.1 s each), as 5 exact hits would have left it
        ttl_ms = await client.pttl(f"{redis_prefix}:rl:user:1")
        assert 0 < ttl_ms <= 500
        # another instance sees them: its share of 10 is not the whole burst any more
        other = SyncedRateLimiter(Redis.from_url(redis_url), redis_prefix, 1.0)
        try:
            exact = RedisRateLimiter(other._client, redis_prefix)
            assert sum([(await exact.hit("user:1", 100, 10.0)).allowed for _ in range(100)]) < 100
        finally:
            await other._client.aclose()
    finally:
        await client.aclose()


async def test_one_instance_never_exceeds_the_limit(redis_url: str, redis_prefix: str) -> None:
    client = Redis.from_url(redis_url)
    limit, period = 30, 3.0  # 10/s, burst 30; share 5 per 0.5 s interval
    try:
        limiter = SyncedRateLimiter(client, redis_prefix, 0.5)
        assert limiter.share(limit, period) == 5
        async with running(limiter):
            start = time.monotonic()
            allowed = 0
            for _ in range(20):
                allowed += await _burst(limiter, "one", 10, limit, period)
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - start
        # GCRA: at most the burst plus what the rate refilled meanwhile
        assert limit <= allowed <= limit + int(elapsed * limit / period) + 1
    finally:
        await client.aclose()


async def test_two_instances_stay_within_the_documented_bound(
    redis_url: str, redis_prefix: str
) -> None:
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    limit, period = 40, 40.0  # 1/s, burst 40; share 5 per 5 s interval
    limiters = [SyncedRateLimiter(client, redis_prefix, 5.0) for client in clients]
    share = limiters[0].share(limit, period)
    assert share == 5
    try:
        async with running(limiters[0]), running(limiters[1]):
            start = time.monotonic()
            allowed = 0
            for _ in range(10):
                counts = await asyncio.gather(
                    *(_burst(limiter, "two", 12, limit, period) for limiter in limiters)
                )
                allowed += sum(counts)
            elapsed = time.monotonic() - start
        # each instance alone would allow its whole burst of 40 on its own view; together they
        # allow at most the shared burst, the refill, and 2 x share per instance
        # (docs/security.md)
        assert allowed >= limit
        assert allowed <= limit + int(elapsed * limit / period) + 1 + 2 * len(limiters) * share
    finally:
        for client in clients:
            await client.aclose()


async def test_redis_down_fails_open() -> None:
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        limiter = SyncedRateLimiter(down, "x", 1.0)
        # within the share: decided here, no call
        assert (await limiter.hit("k", 10, 10.0)).allowed
        # beyond it: Redis must decide and cannot
        with pytest.raises(RateLimiterUnavailable):
            await limiter.hit("k", 10, 10.0)
        # and until a sync succeeds, every hit fails open at once (no call per hit)
        with pytest.raises(RateLimiterUnavailable):
            await limiter.hit("other", 10, 10.0)
        async with running(limiter):
            with pytest.raises(RateLimiterUnavailable):
                await limiter.hit("k", 10, 10.0)
    finally:
        await down.aclose()


async def test_cancelled_sync_leaves_nobody_waiting(redis_url: str, redis_prefix: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        limiter = SyncedRateLimiter(client, redis_prefix, 1.0)
        share = limiter.share(100, 10.0)
        for _ in range(share):
            assert (await limiter.hit("c", 100, 10.0)).allowed
        waiting = asyncio.ensure_future(limiter.hit("c", 100, 10.0))  # beyond the share
        await asyncio.sleep(0)
        await limiter.close()  # shutdown while its sync is on its way
        with pytest.raises(RateLimiterUnavailable):
            await waiting
    finally:
        await client.aclose()


def _limiter_on(redis: Redis, prefix: str) -> Any:
    """A cleanup context (right after ``redis_client``'s, before the sessions are wired) that
    makes the per-user command limiter a local-first one on ``redis``."""

    async def install(app: Any) -> AsyncIterator[None]:
        limiter = SyncedRateLimiter(redis, prefix, 0.1)
        app[keys.local_first_limiter] = limiter
        async with running(limiter):
            yield

    return install


async def test_websocket_commands_fail_open_when_the_limiter_redis_is_down(
    make_settings: Any, aiohttp_client: Any
) -> None:
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    app = create_app(make_settings(WS_USER_COMMAND_BURST="4", WS_USER_COMMAND_RATE="1"))
    app.cleanup_ctx.insert(
        app.cleanup_ctx.index(lifecycle.redis_client) + 1, _limiter_on(down, "x")
    )
    try:
        client = await aiohttp_client(app)
        _, token = await make_user(client)
        ws = await connect(client, token)
        # 10 commands, more than the user's burst of 4: served (the per-connection bucket of
        # 100 still holds), as with the exact limiter when Redis is down
        for _ in range(10):
            assert "result" in await request(ws, "ping")
        await ws.close()
    finally:
        await down.aclose()


async def test_the_setting_chooses_the_limiter_and_the_sync_task_stops_on_shutdown(
    make_settings: Any, redis_url: str, redis_prefix: str, aiohttp_client: Any
) -> None:
    exact = await aiohttp_client(
        create_app(
            make_settings(
                REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, RATE_LIMIT_SYNC_SECONDS="0"
            )
        )
    )
    assert isinstance(exact.server.app[keys.local_first_limiter], RedisRateLimiter)
    await exact.close()

    synced = await aiohttp_client(
        create_app(make_settings(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix))
    )
    limiter = synced.server.app[keys.local_first_limiter]
    assert isinstance(limiter, SyncedRateLimiter)
    assert limiter.sync_seconds == 0.1
    # login limits stay exact
    assert isinstance(synced.server.app[keys.rate_limiter], RedisRateLimiter)
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "rate-limit-sync"]
    assert not task.done()
    await synced.close()
    assert task.cancelled()
