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


# KEYS[1]: the key; ARGV: limit, period (ms), pushed, asked. ``pushed`` events were already
# allowed by an instance on its own (SyncedRateLimiter's local-first hits; 0 for
# RedisRateLimiter): they are counted unconditionally. Then up to ``asked`` events arriving at
# once are counted in order until one is refused (the ones after it are refused too: nothing
# frees in between). Returns {allowed of asked, retry_after_ms of the first refused (0 when
# none is), backlog_ms = TAT - now as a string}.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local pushed = tonumber(ARGV[3])
local asked = tonumber(ARGV[4])
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
tat = tat + pushed * interval
local allowed = 0
local wait = 0
while allowed < asked do
  wait = tat - now - (period - interval)
  if wait > 0.001 then break end
  tat = tat + interval
  allowed = allowed + 1
end
if pushed + allowed > 0 then
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.max(1, math.ceil(tat - now)))
end
if allowed == asked then wait = 0 end
return {allowed, math.ceil(wait), tostring(tat - now)}
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
            allowed, retry_ms, _ = await self._script(
                keys=[self._prefix + key],
                args=[limit, max(1, round(period * 1000)), 0, len(waiters)],
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


class _Local:
    """One key's state on this instance (local-first limiter)."""

    __slots__ = (
        "interval",
        "key",
        "limit",
        "period",
        "share",
        "syncing",
        "tat",
        "unsynced",
        "waiters",
    )

    def __init__(self, key: str, limit: int, period: float, share: int, now: float) -> None:
        self.key, self.limit, self.period, self.share = key, limit, period, share
        self.interval = period / limit
        #: the shared TAT as last read from Redis (in this process's monotonic time) plus every
        #: hit allowed here since: never fuller than the truth, so a refusal here is right
        self.tat = now
        #: hits allowed here that Redis has not counted yet (at most ``share``)
        self.unsynced = 0
        #: hits beyond the local share, in arrival order: Redis decides them
        self.waiters: list[asyncio.Future[Decision]] = []
        self.syncing = False


class SyncedRateLimiter:
    """The shared limiter, local-first: each instance decides from what it knows and tells Redis
    afterwards, every ``sync_seconds`` (like Kong's rate-limiting ``sync_rate``).

    Per key, an instance knows the shared TAT as of its last sync plus its own hits since, and
    allows a hit on that alone while fewer than ``share = ceil(limit / period * sync_seconds)``
    of its hits are not yet counted in Redis (the hits the sustained rate allows in one sync
    interval). A background task pushes those hits in one script call per key every
    ``sync_seconds`` and reads the shared state back. A hit beyond the share waits for Redis,
    which decides it exactly (as :class:`RedisRateLimiter`), in the same call that pushes the
    uncounted ones; a refusal by the local view needs no round trip (the truth is at least as
    full). What no instance's decision took into account is, at any moment, at most ``share``
    hits per instance: N instances exceed the shared limit by at most about N * share (2 * N *
    share across a sync boundary), and every allowed hit is counted, so the sustained rate is
    the limit's. One instance alone never exceeds it.

    When a sync fails (Redis unreachable) the hits waiting on it and every hit until a sync
    succeeds again raise :class:`RateLimiterUnavailable`, as each hit of
    :class:`RedisRateLimiter` would; the uncounted hits are dropped. Run :meth:`run` as a
    task for as long as the limiter is used.
    """

    name = "redis"

    #: keys handled by one round of syncs at a time
    SYNC_CONCURRENCY = 100
    #: seconds between sweeps of keys whose state has expired
    SWEEP_SECONDS = 10.0

    def __init__(
        self,
        client: Redis | RedisCluster,
        prefix: str,
        sync_seconds: float,
        *,
        max_keys: int = 100_000,
    ) -> None:
        if sync_seconds <= 0:
            raise ValueError("sync_seconds must be > 0 (use RedisRateLimiter for exact limits)")
        self._client = client
        self._prefix = f"{prefix}:rl:"
        self._script = client.register_script(_GCRA_LUA)
        self.sync_seconds = sync_seconds
        self._max_keys = max_keys
        self._states: dict[tuple[str, int, float], _Local] = {}
        self._dirty: set[_Local] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: why the last sync failed (None while Redis answers)
        self._down: str | None = None

    def share(self, limit: int, period: float) -> int:
        """Hits of one key this instance allows before Redis has counted them."""
        return max(1, math.ceil(limit / period * self.sync_seconds))

    async def hit(self, key: str, limit: int, period: float) -> Decision:
        if self._down is not None:
            raise RateLimiterUnavailable(self._down)
        state = self._states.get((key, limit, period))
        now = time.monotonic()
        if state is None:
            if len(self._states) >= self._max_keys:
                self._sweep(now, full=True)
            state = _Local(key, limit, period, self.share(limit, period), now)
            self._states[key, limit, period] = state
        if not state.waiters:
            allowed, tat, retry = _gcra(state.tat, now, limit, period)
            if not allowed:
                return Decision(False, retry)
            if state.unsynced < state.share:
                state.tat = tat
                state.unsynced += 1
                self._dirty.add(state)
                return _ALLOWED
        waiter: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        if not state.syncing:
            self._spawn(state)
        return await waiter

    async def reset(self, key: str) -> None:
        for state_key in [k for k in self._states if k[0] == key]:
            del self._states[state_key]
        try:
            await self._client.delete(self._prefix + key)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise RateLimiterUnavailable(str(exc)) from exc

    def _spawn(self, state: _Local) -> None:
        task = asyncio.ensure_future(self._sync(state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """The background sync: every ``sync_seconds``, push every key's uncounted hits."""
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.sync_seconds)
            if self._down is not None:
                try:
                    await self._client.ping()
                except (RedisError, RedisClusterException, OSError):
                    continue
                self._down = None
            dirty, self._dirty = self._dirty, set()
            due = [state for state in dirty if state.unsynced and not state.syncing]
            for start in range(0, len(due), self.SYNC_CONCURRENCY):
                await asyncio.gather(
                    *(self._sync(state) for state in due[start : start + self.SYNC_CONCURRENCY])
                )
            now = time.monotonic()
            if now - last_sweep >= self.SWEEP_SECONDS:
                last_sweep = now
                self._sweep(now)

    async def close(self) -> None:
        """Stop the syncs started by hits (the caller cancels :meth:`run`'s task)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._states.values():  # a sync cancelled before it started
            for waiter in state.waiters:
                if not waiter.done():
                    waiter.set_exception(RateLimiterUnavailable("shutting down"))
            state.waiters = []

    def _sweep(self, now: float, full: bool = False) -> None:
        """Forget keys this instance has nothing to tell about (an expired TAT is an absent key;
        ``full``: also the unexpired ones, rather than growing without bound)."""
        self._states = {
            k: s
            for k, s in self._states.items()
            if s.unsynced or s.syncing or s.waiters or (s.tat > now and not full)
        }

    async def _sync(self, state: _Local) -> None:
        """Push ``state``'s uncounted hits and have Redis decide its waiters, until none wait."""
        if state.syncing:
            return
        state.syncing = True
        try:
            while state.unsynced or state.waiters:
                pushed, waiters = state.unsynced, state.waiters
                state.unsynced, state.waiters = 0, []
                try:
                    allowed, retry_ms, backlog_ms = await self._script(
                        keys=[self._prefix + state.key],
                        args=[
                            state.limit,
                            max(1, round(state.period * 1000)),
                            pushed,
                            len(waiters),
                        ],
                    )
                except (RedisError, RedisClusterException, OSError) as exc:
                    self._down = str(exc) or type(exc).__name__
                    state.unsynced = 0  # fail open: what Redis missed is forgotten
                    for waiter in (*waiters, *state.waiters):
                        if not waiter.done():
                            waiter.set_exception(RateLimiterUnavailable(self._down))
                    state.waiters = []
                    return
                except BaseException as exc:  # cancelled (shutdown) or a bug: nobody waits forever
                    for waiter in (*waiters, *state.waiters):
                        if not waiter.done():
                            waiter.set_exception(RateLimiterUnavailable(repr(exc)))
                    state.waiters = []
                    raise
                # what Redis knows now, plus what was allowed here while the call was on its way
                state.tat = (
                    time.monotonic() + float(backlog_ms) / 1000 + state.unsynced * state.interval
                )
                refused = Decision(False, int(retry_ms) / 1000)
                for index, waiter in enumerate(waiters):
                    if not waiter.done():  # its caller may have been cancelled
                        waiter.set_result(_ALLOWED if index < int(allowed) else refused)
                if not state.waiters:
                    break  # what was allowed meanwhile goes with the next periodic sync
        finally:
            state.syncing = False
            if state.unsynced:
                self._dirty.add(state)
