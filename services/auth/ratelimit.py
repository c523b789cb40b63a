"""Rate limiting shared by every instance: GCRA in Redis, or in process memory in embedded mode.

The Generic Cell Rate Algorithm keeps one number per key, the *theoretical arrival time* (TAT).
``hit(key, limit, period)`` allows ``limit`` events at once and then one every
``period / limit`` seconds, so "at most ``limit`` per ``period``" holds over any sliding window
of that length, without the burst at the boundary a fixed window allows. The Redis backend runs
the whole check-and-update as one Lua script using the Redis server's clock, so instances with
skewed clocks agree and two concurrent hits can never both take the last slot.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError


class RateLimiterUnavailable(Exception):
    """The shared limiter's store cannot be reached; callers choose to fail open or closed."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one event: ``allowed``, else how long until it would be."""

    allowed: bool
    retry_after: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` value: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


class RateLimiter(Protocol):
    """Counts events per key; ``name`` is ``memory`` or ``redis``."""

    name: str

    async def hit(self, key: str, limit: int, period: float) -> Decision:
        """Record one event for ``key`` if at most ``limit`` happened within ``period`` seconds.

        A refused event is not counted. Raises :class:`RateLimiterUnavailable`.
        """
        ...

    async def reset(self, key: str) -> None:
        """Forget ``key`` (used after a successful action that should not count)."""
        ...


_EPSILON = 1e-6


def _gcra(tat: float, now: float, limit: int, period: float) -> tuple[bool, float, float]:
    """``(allowed, new_tat, retry_after)`` for one event at ``now``."""
    interval = period / limit
    tat = max(tat, now)
    wait = tat - now - (period - interval)
    if wait > _EPSILON:  # not 0: float rounding must not refuse an exactly-due event
        return False, tat, wait
    return True, tat + interval, 0.0


class MemoryRateLimiter:
    """One process's limiter (embedded mode); state is lost on restart."""

    name = "memory"

    def __init__(self, max_keys: int = 100_000) -> None:
        self._tats: dict[str, float] = {}
        self._max_keys = max_keys

    async def hit(self, key: str, limit: int, period: float) -> Decision:
        now = time.monotonic()
        allowed, tat, retry = _gcra(self._tats.get(key, now), now, limit, period)
        if allowed:
            if len(self._tats) >= self._max_keys:
                self._evict(now)
            self._tats[key] = tat
        return Decision(allowed, retry)

    async def reset(self, key: str) -> None:
        self._tats.pop(key, None)

    def _evict(self, now: float) -> None:
        # A key whose TAT has passed is equivalent to an absent key.
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        if len(self._tats) >= self._max_keys:
            self._tats.clear()  # under a flood of distinct keys, forgetting beats growing


# KEYS[1]: the key; ARGV: limit, period (ms). Returns {allowed, retry_after_ms}.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - now - (period - interval)
if wait > 0.001 then
  return {0, math.ceil(wait)}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return {1, 0}
"""


class RedisRateLimiter:
    """The limiter shared by every instance using the same Redis and prefix."""

    name = "redis"

    def __init__(self, client: Redis | RedisCluster, prefix: str) -> None:
        self._client = client
        self._prefix = f"{prefix}:rl:"
        self._script = client.register_script(_GCRA_LUA)

    async def hit(self, key: str, limit: int, period: float) -> Decision:
        try:
            allowed, retry_ms = await self._script(
                keys=[self._prefix + key], args=[limit, max(1, round(period * 1000))]
            )
        except (RedisError, RedisClusterException, OSError) as exc:
            raise RateLimiterUnavailable(str(exc)) from exc
        return Decision(bool(allowed), int(retry_ms) / 1000)

    async def reset(self, key: str) -> None:
        try:
            await self._client.delete(self._prefix + key)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise RateLimiterUnavailable(str(exc)) from exc
