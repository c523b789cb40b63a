"""The rate limiter contract, run against the memory and the Redis backend alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from services.auth.ratelimit import (
    MemoryRateLimiter,
    RateLimiter,
    RateLimiterUnavailable,
    RedisRateLimiter,
)


def _use_limiter(key: Any, client: Redis, prefix: str) -> Callable[[web.Application], Any]:
    """An ``on_startup`` hook (runs after the cleanup contexts) installing a Redis limiter."""

    async def install(app: web.Application) -> None:
        app[key] = RedisRateLimiter(client, prefix)

    return install


@pytest.fixture(params=["memory", "redis"])
async def limiter(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    client = Redis.from_url(redis_url)
    try:
        yield RedisRateLimiter(client, redis_prefix)
    finally:
        await client.aclose()


async def test_allows_the_limit_then_refuses_with_retry_after(limiter: RateLimiter) -> None:
    results = [await limiter.hit("k", 3, 60) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert 15 <= results[-1].retry_after <= 20  # one slot frees every 60 / 3 seconds
    assert results[-1].retry_after_header in {"20", "19", "18", "17", "16", "15"}


async def test_keys_are_independent_and_reset_forgets(limiter: RateLimiter) -> None:
    assert (await limiter.hit("a", 1, 60)).allowed
    assert not (await limiter.hit("a", 1, 60)).allowed
    assert (await limiter.hit("b", 1, 60)).allowed
    await limiter.reset("a")
    assert (await limiter.hit("a", 1, 60)).allowed


async def test_a_slot_frees_after_the_emission_interval(limiter: RateLimiter) -> None:
    # 2 per 2 s: one slot every second. The three hits must land within that second, which a
    # busy machine manages; a 0.1 s interval it did not always.
    assert (await limiter.hit("k", 2, 2.0)).allowed
    assert (await limiter.hit("k", 2, 2.0)).allowed
    refused = await limiter.hit("k", 2, 2.0)
    assert not refused.allowed
    assert 0 < refused.retry_after <= 1.0, "a slot frees within one emission interval"
    await asyncio.sleep(refused.retry_after + 0.05)
    assert (await limiter.hit("k", 2, 2.0)).allowed


async def test_concurrent_hits_never_exceed_the_limit(limiter: RateLimiter) -> None:
    results = await asyncio.gather(*(limiter.hit("k", 10, 60) for _ in range(50)))
    assert sum(r.allowed for r in results) == 10


async def test_concurrent_hits_are_decided_in_arrival_order(limiter: RateLimiter) -> None:
    results = await asyncio.gather(*(limiter.hit("k", 3, 60) for _ in range(8)))
    assert [r.allowed for r in results] == [True] * 3 + [False] * 5
    assert all(15 <= r.retry_after <= 20 for r in results[3:])


async def test_a_burst_of_one_key_costs_few_redis_calls(redis_url: str, redis_prefix: str) -> None:
    """Hits that arrive while a call for their key is on its way share the next call; other
    keys are not held up, and two instances still share one limit."""
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    try:
        one, two = (RedisRateLimiter(c, redis_prefix) for c in clients)
        calls = 0
        script = one._script

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return await script(*args, **kwargs)

        one._script = counting  # type: ignore[assignment]
        burst = [one.hit("user:1", 150, 60) for _ in range(200)]
        other = [two.hit("user:1", 150, 60) for _ in range(20)]
        elsewhere = one.hit("user:2", 1, 60)
        results = await asyncio.gather(*burst, *other, elsewhere)
        assert calls <= 3  # user:1 in about two batches, user:2 in its own call
        assert sum(r.allowed for r in results[:220]) == 150
        assert results[-1].allowed
        assert not (await one.hit("user:1", 150, 60)).allowed
    finally:
        for c in clients:
            await c.aclose()


async def test_a_cancelled_hit_does_not_stall_the_others(redis_url: str, redis_prefix: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        limiter = RedisRateLimiter(client, redis_prefix)
        first = asyncio.create_task(limiter.hit("k", 5, 60))
        second = asyncio.create_task(limiter.hit("k", 5, 60))
        await asyncio.sleep(0)
        first.cancel()
        assert (await second).allowed
        assert (await limiter.hit("k", 5, 60)).allowed
    finally:
        await client.aclose()


async def test_redis_limit_is_shared_between_instances(redis_url: str, redis_prefix: str) -> None:
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    try:
        one, two = (RedisRateLimiter(c, redis_prefix) for c in clients)
        assert (await one.hit("login:ip:1.2.3.4", 2, 60)).allowed
        assert (await two.hit("login:ip:1.2.3.4", 2, 60)).allowed
        assert not (await one.hit("login:ip:1.2.3.4", 2, 60)).allowed
        assert not (await two.hit("login:ip:1.2.3.4", 2, 60)).allowed
    finally:
        for c in clients:
            await c.aclose()


async def test_unreachable_redis_raises_unavailable() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        with pytest.raises(RateLimiterUnavailable):
            await RedisRateLimiter(client, "x").hit("k", 1, 1)
    finally:
        await client.aclose()


async def test_login_limit_holds_across_two_app_instances(
    make_settings: Any, redis_url: str, redis_prefix: str, aiohttp_client: Any
) -> None:
    from handlers import keys
    from server.app import create_app

    # Two instances, each with its own Redis client, as two processes would have. (The broker
    # stays in memory so that this test is about the limiter alone.)
    settings = make_settings(LOGIN_RATE_PER_EMAIL="2")
    redis_clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    apps = [create_app(settings), create_app(settings)]
    for app, redis_client in zip(apps, redis_clients, strict=True):
        app.on_startup.append(_use_limiter(keys.rate_limiter, redis_client, redis_prefix))
    one, two = [await aiohttp_client(app) for app in apps]
    try:
        statuses = []
        for client in (one, two, one, two):
            resp = await client.post("/api/v1/auth/login", json={"email": "multi@example.com"})
            statuses.append(resp.status)
        assert statuses == [202, 202, 429, 429]
    finally:
        for redis_client in redis_clients:
            await redis_client.aclose()


async def test_login_fails_closed_when_the_limiter_is_down(
    make_settings: Any, aiohttp_client: Any
) -> None:
    from handlers import keys
    from server.app import create_app

    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    app = create_app(make_settings())
    app.on_startup.append(_use_limiter(keys.rate_limiter, down, "x"))
    client = await aiohttp_client(app)
    try:
        resp = await client.post("/api/v1/auth/login", json={"email": "down@example.com"})
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        async with client.server.app[keys.pool].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM magic_links") == 0
    finally:
        await down.aclose()
