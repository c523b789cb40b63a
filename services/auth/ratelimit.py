"""Rate limiting shared by every instance: GCRA in Redis, or in process memory in embedded mode.

The Generic Cell Rate Algorithm keeps one number per key, the *theoretical arrival time* (TAT).
``hit(key, limit, period)`` allows ``limit`` events at once and then one every
``period / limit`` seconds, so "at most ``limit`` per ``period``" holds over any sliding window
of that length, without the burst at the boundary a fixed window allows. The Redis backend runs
the whole check-and-update as one Lua script using the Redis server's clock, so instances with
skewed clocks agree and two concurrent hits can never both take the last slot.
"""

from __future__ import annotations

import asyncio
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


_ALLOWED = Decision(True)


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


# KEYS[1]: the key; ARGV: limit, period (ms), n. Counts up to n events arriving at once, in
# order, until one is refused (the ones after it are refused too: nothing frees in between).
# Returns {allowed_count, retry_after_ms of the first refused}.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local n = tonumber(ARGV[3] or '1')
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allowed = 0
local wait = 0
while allowed < n do
  wait = tat - now - (period - interval)
  if wait > 0.001 then break end
  tat = tat + interval
  allowed = allowed + 1
end
if allowed > 0 then
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.max(1, math.ceil(tat - now)))
end
if allowed == n then return {allowed, 0} end
return {allowed, math.ceil(wait)}
"""


class _Batch:
    """Hits of one key and limit waiting to be counted together (in arrival order)."""

    __slots__ = ("sent", "task", "waiters")

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[Decision]] = []
        #: the script call is on its way: later hits go in the next batch
        self.sent = False
        self.task: asyncio.Task[None] | None = None


class RedisRateLimiter:
    """The limiter shared by every instance using the same Redis and prefix.

    Concurrent hits of one key are counted together: while a script call for a key is on its
    way, further hits of that key wait and go in the next call, as one batch the script counts
    in order (the first ones allowed up to the limit, the rest refused, all with the
    ``retry_after`` of the first refused). A burst of N commands of one user costs about two
    round trips instead of N, with the same decisions as N calls made at that moment.
    """

    name = "redis"

    #: most hits counted by one script call
    MAX_BATCH = 1000

    def __init__(self, client: Redis | RedisCluster, prefix: str) -> None:
        self._client = client
        self._prefix = f"{prefix}:rl:"
        self._script = client.register_script(_GCRA_LUA)
        self._batches: dict[tuple[str, int, float], _Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def hit(self, key: str, limit: int, period: float) -> Decision:
        batch_key = (key, limit, period)
        batch = self._batches.get(batch_key)
        if batch is None or batch.sent or len(batch.waiters) >= self.MAX_BATCH:
            previous = batch
            batch = self._batches[batch_key] = _Batch()
            task = batch.task = asyncio.ensure_future(self._send(batch_key, batch, previous))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        waiter: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        return await waiter

    async def _send(
        self, batch_key: tuple[str, int, float], batch: _Batch, previous: _Batch | None
    ) -> None:
        if previous is not None and previous.task is not None and not previous.task.done():
            # one call per key at a time: the hits arriving meanwhile join this batch
            await asyncio.wait((previous.task,))
        batch.sent = True
        if self._batches.get(batch_key) is batch:
            del self._batches[batch_key]
        key, limit, period = batch_key
        waiters = batch.waiters
        try:
            allowed, retry_ms = await self._script(
                keys=[self._prefix + key],
                args=[limit, max(1, round(period * 1000)), len(waiters)],
            )
        except (RedisError, RedisClusterException, OSError) as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(RateLimiterUnavailable(str(exc)))
            return
        except BaseException as exc:  # cancelled (shutdown) or a bug: nobody waits forever
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(RateLimiterUnavailable(repr(exc)))
            raise
        refused = Decision(False, int(retry_ms) / 1000)
        for index, waiter in enumerate(waiters):
            if not waiter.done():  # its caller may have been cancelled
                waiter.set_result(_ALLOWED if index < int(allowed) else refused)

    async def reset(self, key: str) -> None:
        try:
            await self._client.delete(self._prefix + key)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise RateLimiterUnavailable(str(exc)) from exc
