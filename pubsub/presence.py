"""Presence: who is subscribed to a channel right now, on every node, and join/leave events.

A :class:`PresenceStore` keeps, per channel, one entry per subscribed client
(``client_id -> {user, info}``) and a count of clients per user, so that "first tab of this user"
and "last tab of this user" are known cluster-wide:

* :class:`MemoryPresence` for a single node;
* :class:`RedisPresence` for a cluster. Per channel (one hash slot, the channel's)::

      <prefix>:{<channel>}:presence        hash  client_id -> JSON {"user": ..., "info": ...}
      <prefix>:{<channel>}:presence:exp    zset  client_id scored by its expiry (Unix seconds)
      <prefix>:{<channel>}:presence:users  hash  user_id -> number of clients

  On Redis Cluster the base name is ``<prefix>:{<partition tag>}:<channel>:presence``, the
  broker's hash tag of the channel (see :mod:`pubsub.redis_keys`).

  Entries expire ``ttl`` seconds after their last refresh. Each node refreshes all of its own
  entries once per ``ttl / 3`` in one pipelined batch, so Redis traffic depends on the number of
  connections and the interval, never on the message rate. Entries of a crashed node stop being
  refreshed and are removed by the next read or sweep after ``ttl`` seconds: a dead client is
  gone from presence within ``ttl`` plus one sweep interval (``ttl / 3``).

:class:`Presence` ties a store to the hub: it registers local subscriptions, refreshes them,
sweeps expired entries of channels this node serves, and broadcasts join/leave events to every
node through the broker's control channel (no channel offsets are used).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from pubsub.hub import Hub

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    """One subscribed client."""

    client_id: str
    user_id: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PresenceStats:
    clients: int
    users: int


class PresenceStore(abc.ABC):
    """Presence entries per channel. ``add`` and ``remove`` report whether the user's first
    client joined or last client left, counted across every node."""

    @abc.abstractmethod
    async def add(self, channel: str, entry: PresenceEntry) -> bool:
        """Register ``entry``; True when it is the user's first client in ``channel``."""

    @abc.abstractmethod
    async def remove(self, channel: str, entry: PresenceEntry) -> bool:
        """Drop ``entry``; True when it was the user's last client in ``channel``."""

    @abc.abstractmethod
    async def entries(self, channel: str) -> list[PresenceEntry]:
        """Live entries of ``channel`` (expired ones are removed first)."""

    @abc.abstractmethod
    async def stats(self, channel: str) -> PresenceStats:
        """Client and unique-user counts of ``channel``."""

    async def refresh(self, items: list[tuple[str, PresenceEntry]]) -> None:  # noqa: B027
        """Extend the expiry of this node's entries (no-op where entries do not expire)."""

    async def sweep(self, channel: str) -> list[PresenceEntry]:
        """Remove expired entries of ``channel``; returns the users whose last client went."""
        return []


class MemoryPresence(PresenceStore):
    """Single-node presence: entries live exactly as long as their subscriptions."""

    def __init__(self) -> None:
        self._channels: dict[str, dict[str, PresenceEntry]] = {}

    async def add(self, channel: str, entry: PresenceEntry) -> bool:
        clients = self._channels.setdefault(channel, {})
        first = all(other.user_id != entry.user_id for other in clients.values())
        clients[entry.client_id] = entry
        return first

    async def remove(self, channel: str, entry: PresenceEntry) -> bool:
        clients = self._channels.get(channel)
        if clients is None or clients.pop(entry.client_id, None) is None:
            return False
        if not clients:
            del self._channels[channel]
        return all(other.user_id != entry.user_id for other in clients.values())

    async def entries(self, channel: str) -> list[PresenceEntry]:
        return list(self._channels.get(channel, {}).values())

    async def stats(self, channel: str) -> PresenceStats:
        clients = self._channels.get(channel, {})
        return PresenceStats(len(clients), len({entry.user_id for entry in clients.values()}))


_ADD = """
local entries, expiry, users = KEYS[1], KEYS[2], KEYS[3]
local ttl = tonumber(ARGV[5])
local added = redis.call('HSET', entries, ARGV[1], ARGV[3])
redis.call('ZADD', expiry, ARGV[4], ARGV[1])
local count = 0
if added == 1 then
  count = redis.call('HINCRBY', users, ARGV[2], 1)
end
redis.call('EXPIRE', entries, ttl)
redis.call('EXPIRE', expiry, ttl)
redis.call('EXPIRE', users, ttl)
return count
"""

_REMOVE = """
local entries, expiry, users = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HDEL', entries, ARGV[1]) == 0 then
  return -1
end
redis.call('ZREM', expiry, ARGV[1])
local left = redis.call('HINCRBY', users, ARGV[2], -1)
if left <= 0 then
  redis.call('HDEL', users, ARGV[2])
end
return left
"""

# Removes expired entries; returns a flat list of [client_id, raw entry, remaining, ...].
_SWEEP = """
local entries, expiry, users = KEYS[1], KEYS[2], KEYS[3]
local dead = redis.call('ZRANGEBYSCORE', expiry, '-inf', ARGV[1])
local out = {}
for _, client in ipairs(dead) do
  local raw = redis.call('HGET', entries, client)
  redis.call('HDEL', entries, client)
  redis.call('ZREM', expiry, client)
  if raw then
    local user = cjson.decode(raw)['user']
    local left = redis.call('HINCRBY', users, user, -1)
    if left <= 0 then
      redis.call('HDEL', users, user)
    end
    table.insert(out, client)
    table.insert(out, raw)
    table.insert(out, left)
  end
end
return out
"""


class RedisPresence(PresenceStore):
    """Cluster-wide presence in Redis (see the module docstring for the layout).

    ``keys`` is a key prefix (the single-Redis layout) or a function giving a channel's base
    key name (``PartitionedKeySpace.presence`` on Redis Cluster). ``max_concurrency`` makes
    calls beyond that many wait their turn: a ``RedisCluster`` client has no blocking pool and
    would fail them instead (a plain client gets a ``BlockingConnectionPool``).
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        keys: str | Callable[[str], str],
        ttl: float = 30.0,
        *,
        max_concurrency: int | None = None,
    ) -> None:
        self._redis = redis
        self._turns: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
        )
        if isinstance(keys, str):
            prefix = keys
            self._base: Callable[[str], str] = lambda channel: f"{prefix}:{{{channel}}}:presence"
        else:
            self._base = keys
        self.ttl = ttl
        self._add = redis.register_script(_ADD)
        self._remove = redis.register_script(_REMOVE)
        self._sweep = redis.register_script(_SWEEP)

    def _keys(self, channel: str) -> list[str]:
        base = self._base(channel)
        return [base, f"{base}:exp", f"{base}:users"]

    def _key_ttl(self) -> int:
        return max(int(self.ttl * 4), 60)

    async def add(self, channel: str, entry: PresenceEntry) -> bool:
        raw = orjson.dumps({"user": entry.user_id, "info": entry.info})
        async with self._turns:
            count = await self._add(
                keys=self._keys(channel),
                args=[entry.client_id, entry.user_id, raw, time.time() + self.ttl, self._key_ttl()],
            )
        return int(count) == 1

    async def remove(self, channel: str, entry: PresenceEntry) -> bool:
        async with self._turns:
            left = await self._remove(
                keys=self._keys(channel), args=[entry.client_id, entry.user_id]
            )
        return int(left) == 0

    async def sweep(self, channel: str) -> list[PresenceEntry]:
        async with self._turns:
            out = await self._sweep(keys=self._keys(channel), args=[time.time()])
        gone: list[PresenceEntry] = []
        for index in range(0, len(out), 3):
            client, raw, left = out[index], out[index + 1], int(out[index + 2])
            if left <= 0:
                data = orjson.loads(raw)
                gone.append(PresenceEntry(_text(client), str(data["user"]), data.get("info", {})))
        return gone

    async def entries(self, channel: str) -> list[PresenceEntry]:
        # Expired entries are filtered, not removed: the sweeping node announces their leave.
        keys = self._keys(channel)
        async with self._turns, self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys[0])
            pipe.zrangebyscore(keys[1], time.time(), "+inf")
            raw, alive = await pipe.execute()
        live = {_text(client) for client in alive}
        result = []
        for client, value in raw.items():
            if _text(client) in live:
                data = orjson.loads(value)
                result.append(PresenceEntry(_text(client), str(data["user"]), data.get("info", {})))
        return result

    async def stats(self, channel: str) -> PresenceStats:
        entries = await self.entries(channel)
        return PresenceStats(len(entries), len({entry.user_id for entry in entries}))

    async def refresh(self, items: list[tuple[str, PresenceEntry]]) -> None:
        if not items:
            return
        until = time.time() + self.ttl
        key_ttl = self._key_ttl()
        async with self._turns, self._redis.pipeline(transaction=False) as pipe:
            channels: set[str] = set()
            for channel, entry in items:
                pipe.zadd(self._keys(channel)[1], {entry.client_id: until}, xx=True)
                channels.add(channel)
            for channel in channels:
                for key in self._keys(channel):
                    pipe.expire(key, key_ttl)
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Presence:
    """Presence and join/leave for one node.

    ``join``/``leave`` events go to the local live subscribers of the channel on every node
    (through the broker's control channel), each encoded by the hub once per wire protocol in
    use (:meth:`~pubsub.hub.Hub.deliver_presence`). ``unique_users`` sends join only for a
    user's first client and leave only for the last (several tabs of one user look like one
    presence).
    """

    def __init__(
        self,
        hub: Hub,
        store: PresenceStore,
        *,
        refresh_interval: float = 10.0,
        unique_users: bool = True,
    ) -> None:
        self.hub = hub
        self.store = store
        self._interval = refresh_interval
        self._unique = unique_users
        self._local: dict[tuple[str, str], PresenceEntry] = {}
        self._task: asyncio.Task[None] | None = None
        hub.add_control_handler("presence", self._on_control)

    def start(self) -> None:
        """Begin the periodic refresh-and-sweep loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def join(self, channel: str, entry: PresenceEntry) -> None:
        """Register a subscription; announce it when the namespace has join/leave on."""
        options = self.hub.options(channel)
        if not options.presence:
            return
        self._local[(channel, entry.client_id)] = entry
        first = await self.store.add(channel, entry)
        if options.join_leave and (first or not self._unique):
            await self._announce("join", channel, entry)

    async def leave(self, channel: str, entry: PresenceEntry) -> None:
        """Unregister a subscription; announce it when the namespace has join/leave on."""
        options = self.hub.options(channel)
        if not options.presence or self._local.pop((channel, entry.client_id), None) is None:
            return
        last = await self.store.remove(channel, entry)
        if options.join_leave and (last or not self._unique):
            await self._announce("leave", channel, entry)

    async def _announce(self, kind: str, channel: str, entry: PresenceEntry) -> None:
        message = {
            "kind": kind,
            "channel": channel,
            "client": entry.client_id,
            "user": entry.user_id,
            "info": entry.info,
        }
        await self.hub.publish_control("presence", message)

    def _on_control(self, message: dict[str, Any]) -> None:
        entry = PresenceEntry(message["client"], message["user"], message.get("info") or {})
        self.hub.deliver_presence(message["channel"], message["kind"], entry)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.store.refresh(
                    [(channel, entry) for (channel, _), entry in self._local.items()]
                )
                for channel in {channel for channel, _ in self._local}:
                    for gone in await self.store.sweep(channel):
                        if self.hub.options(channel).join_leave:
                            await self._announce("leave", channel, gone)
            except (RedisError, RedisClusterException, OSError):
                log.warning("presence refresh failed; retrying next interval", exc_info=True)
