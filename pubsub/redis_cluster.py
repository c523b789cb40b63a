"""The Redis Cluster broker: the Redis broker's scripts on a cluster, live delivery over Redis 7
sharded pub/sub.

Selected by ``REDIS_URL=redis+cluster://host:port,...``. ``docs/redis.md`` ("Redis Cluster")
explains the design; in short:

* **Partitions.** Channels are grouped into a fixed number of partitions
  (:class:`~pubsub.redis_keys.Partitioning`, ``REDIS_CLUSTER_PARTITIONS``); every key of a
  channel and its shard channel carry the partition's hash tag, so the publish script appends,
  assigns the offset and ``SPUBLISH``es in one slot, atomically.
* **Subscriptions.** :class:`ShardedSubscriber` keeps one sharded pub/sub connection per
  cluster master that serves a partition with subscribed channels (not one per channel or per
  slot), and one SSUBSCRIBE per partition on it.
* **Slot moves.** When a slot moves (reshard) Redis ends its shard subscriptions with an
  ``sunsubscribe`` push; when a master dies its connection drops and a replica takes over.
  Either way the subscriber re-reads the slot map, subscribes the partition's channels on the
  new owner and, once Redis confirmed them, asks the hub to refill exactly those channels from
  history (:meth:`~pubsub.broker.BrokerEventHandler.on_resubscribed`). A promoted replica
  starts new epochs (see :mod:`pubsub.redis_scripts`), so a publication its master
  acknowledged but never replicated is reported to subscribers as lost, never skipped silently.
* **Control messages** (disconnects, presence join/leave, analysis cancel) use a classic
  PUBLISH, which Redis Cluster broadcasts to every node: one classic subscription on any node
  reaches all of them, and survives the loss of any other node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import ClusterError, RedisClusterException, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from pubsub.broker import BrokerError, BrokerUnavailable
from pubsub.redis_broker import ScriptedBroker
from pubsub.redis_keys import PartitionedKeySpace, Partitioning, parse_wire
from pubsub.redis_pubsub import SHARDED, PubSubConnection, ReconnectPolicy, Relocated
from pubsub.redis_scripts import CLUSTER_PUBLISH, CLUSTER_PUBLISH_MANY, CLUSTER_READ
from pubsub.redis_url import cluster_client

log = logging.getLogger(__name__)

#: Errors of the topology refresh and the connection setup (the cluster client raises
#: ``RedisClusterException``, which is not a ``RedisError``).
_TOPOLOGY_ERRORS = (RedisError, RedisClusterException, OSError, BrokerError)


def _node_connection(node: ClusterNode) -> AbstractConnection:
    """A new, unconnected connection to ``node`` with the cluster client's settings."""
    kwargs = dict(node.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    connection: AbstractConnection = node.connection_class(**kwargs)
    return connection


def _by_slot(names: list[bytes]) -> Iterable[list[bytes]]:
    """SSUBSCRIBE takes channels of one slot per command: one batch per slot."""
    batches: dict[int, list[bytes]] = {}
    for name in names:
        batches.setdefault(key_slot(name), []).append(name)
    return batches.values()


class ShardedSubscriber:
    """Shard-channel subscriptions of one process: one connection per cluster master that
    serves a partition with subscribed channels.

    ``on_message(name, data)`` gets every ``smessage``; ``on_resubscribed(names)`` is called
    when subscriptions that may have missed messages are in place again (after a slot moved,
    a failover, or a reconnect). A supervisor task re-reads the slot map and moves partitions
    whenever a connection reports a lost connection, a dropped subscription or an error, and
    keeps checking every ``check_interval`` seconds until everything is in place.
    """

    def __init__(
        self,
        cluster: RedisCluster,
        partitions: Partitioning,
        on_message: Callable[[bytes, bytes], None],
        on_resubscribed: Callable[[list[bytes]], None],
        *,
        policy: ReconnectPolicy | None = None,
        subscribe_timeout: float = 5.0,
        keepalive: float = 10.0,
        keepalive_timeout: float = 10.0,
        check_interval: float = 1.0,
    ) -> None:
        self._cluster = cluster
        self._partitions = partitions
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._policy = policy if policy is not None else ReconnectPolicy()
        self._subscribe_timeout = subscribe_timeout
        self._keepalive = keepalive
        self._keepalive_timeout = keepalive_timeout
        self._check_interval = check_interval
        #: per partition: its subscribed shard channels
        self._wanted: list[dict[bytes, None]] = [{} for _ in range(partitions.count)]
        #: partition -> name of the node whose connection carries it
        self._placed: dict[int, str] = {}
        self._links: dict[str, PubSubConnection] = {}
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        #: partitions moved to another node since start, for logs and tests
        self.moves = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor (the cluster client must be initialized)."""
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name="redis-cluster-subscriber"
        )

    async def close(self) -> None:
        """Stop the supervisor and close every connection. Idempotent."""
        self._closed = True
        tasks = [*self._tasks, *([self._supervisor] if self._supervisor else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        self._placed.clear()

    @property
    def nodes(self) -> list[str]:
        """Cluster nodes this process holds a sharded pub/sub connection to."""
        return list(self._links)

    @property
    def settled(self) -> bool:
        """Every subscribed partition sits on a connected link that keeps all its channels."""
        kept: dict[str, set[bytes]] = {}
        for index, names in enumerate(self._wanted):
            if not names:
                continue
            node = self._placed.get(index, "")
            link = self._links.get(node)
            if link is None or not link.connected:
                return False
            if node not in kept:
                kept[node] = set(link.wanted)
            if any(name not in kept[node] for name in names):
                return False
        return True

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(self, partition: int, name: bytes) -> None:
        """Subscribe shard channel ``name`` of ``partition``; returns once the node that owns
        the partition's slot confirmed it. Raises :class:`BrokerUnavailable` when that does
        not happen within ``subscribe_timeout``."""
        if self._closed:
            raise BrokerError("broker closed")
        self._wanted[partition][name] = None
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                while True:
                    async with self._lock:
                        link = await self._place(partition)
                        (waiter,) = await link.request([name])
                    try:
                        await waiter
                        return
                    except Relocated:
                        continue  # the partition moved meanwhile: subscribe where it went
        except BaseException as exc:
            self._wanted[partition].pop(name, None)
            placed = self._links.get(self._placed.get(partition, ""))
            if placed is not None:
                await placed.unsubscribe(name)
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable("Redis did not confirm the subscription in time") from None
            if isinstance(exc, _TOPOLOGY_ERRORS) and not isinstance(exc, BrokerError):
                raise BrokerUnavailable(f"redis cluster subscribe failed: {exc}") from exc
            raise

    async def unsubscribe(self, partition: int, name: bytes) -> None:
        """Stop receiving shard channel ``name``; a connection left without channels closes."""
        self._wanted[partition].pop(name, None)
        async with self._lock:
            link = self._links.get(self._placed.get(partition, ""))
            if link is not None:
                await link.unsubscribe(name)
            if not self._wanted[partition]:
                self._placed.pop(partition, None)
                await self._close_idle()

    async def _close_idle(self) -> None:
        """Close the links that carry no partition any more. Called with the lock held."""
        in_use = set(self._placed.values())
        for name in [name for name in self._links if name not in in_use]:
            await self._links.pop(name).close()
            log.info("redis cluster pub/sub connection closed", extra={"node": name})

    async def _place(self, partition: int) -> PubSubConnection:
        """The link carrying ``partition``, connecting to the slot's owner if needed.
        Called with the lock held."""
        link = self._links.get(self._placed.get(partition, ""))
        if link is not None:
            return link
        node = self._owner(partition)
        link = await self._link(node)
        self._placed[partition] = node.name
        return link

    def _owner(self, partition: int) -> ClusterNode:
        """The master serving the partition's slot, per the client's slot map."""
        slot = self._partitions.slots[partition]
        return self._cluster.nodes_manager.get_node_from_slot(slot)

    async def _link(self, node: ClusterNode) -> PubSubConnection:
        """The (connected) link to ``node``, created if missing. Called with the lock held."""
        link = self._links.get(node.name)
        if link is not None:
            return link
        name = node.name

        def dirty(*_: object) -> None:
            self._dirty.set()

        link = PubSubConnection(
            lambda: _node_connection(node),
            self._on_message,
            lambda: self._on_resubscribed(self._links[name].wanted if name in self._links else []),
            policy=self._policy,
            subscribe_timeout=self._subscribe_timeout,
            keepalive=self._keepalive,
            keepalive_timeout=self._keepalive_timeout,
            flavor=SHARDED,
            batches=_by_slot,
            on_lost=dirty,
            on_dropped=dirty,
            on_error=dirty,
            label=name,
        )
        await link.start([])
        self._links[name] = link
        log.info("redis cluster pub/sub connection opened", extra={"node": name})
        return link

    # -- moving partitions -----------------------------------------------------------------

    async def _supervise(self) -> None:
        attempt = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_interval):
                    await self._dirty.wait()
            if not self._dirty.is_set() and self.settled:
                attempt = 0
                continue
            self._dirty.clear()
            try:
                await self._reconcile()
            except _TOPOLOGY_ERRORS as exc:
                log.warning("redis cluster resubscribe failed", extra={"error": str(exc)})
            if not self.settled:
                # A failover in progress, or a slot map not updated everywhere yet: look again
                # soon, a little later each time (at most check_interval).
                await asyncio.sleep(min(self._check_interval, self._policy.delay(attempt)))
                attempt += 1
                self._dirty.set()
            else:
                attempt = 0

    async def _reconcile(self) -> None:
        """Re-read the slot map and bring every subscribed partition to its owner's link."""
        await self._cluster.nodes_manager.initialize()
        async with self._lock:
            moving: dict[str, list[int]] = {}
            for index, names in enumerate(self._wanted):
                current = self._placed.get(index)
                if not names:
                    self._placed.pop(index, None)
                    continue
                try:
                    owner = self._owner(index).name
                except RedisClusterException:
                    continue  # slot not covered right now; the next round retries
                link = self._links.get(current or "")
                if owner == current and link is not None:
                    kept = set(link.wanted)
                    missing = [name for name in names if name not in kept]
                    if missing:
                        # Redis dropped them (a slot that moved and came back, a MOVED reply);
                        # on a link that is down, the reconnect subscribes them
                        self._spawn(self._resubscribed(missing, await link.request(missing)))
                    continue
                if link is not None:
                    link.forget(list(names))
                self._placed.pop(index, None)
                moving.setdefault(owner, []).append(index)
            for owner, indexes in moving.items():
                node = self._cluster.nodes_manager.get_node(node_name=owner)
                if node is None:
                    continue
                link = await self._link(node)
                moved: list[bytes] = []
                for index in indexes:
                    self._placed[index] = owner
                    moved.extend(self._wanted[index])
                self.moves += len(indexes)
                log.info(
                    "redis cluster partitions moved",
                    extra={"node": owner, "partitions": len(indexes), "channels": len(moved)},
                )
                self._spawn(self._resubscribed(moved, await link.request(moved)))
            await self._close_idle()

    async def _resubscribed(self, names: list[bytes], waiters: list[asyncio.Future[None]]) -> None:
        """Once Redis confirmed ``names`` on their new link, have them refilled; names that
        were not confirmed stay for the next reconcile."""
        if waiters:
            _, pending = await asyncio.wait(waiters, timeout=self._subscribe_timeout)
            for waiter in pending:
                waiter.cancel()  # a later confirmation goes to nobody; the link skips it
        done = [
            name
            for name, waiter in zip(names, waiters, strict=True)
            if not waiter.cancelled() and waiter.exception() is None
        ]
        if len(done) < len(names):
            self._dirty.set()
        if done:
            self._on_resubscribed(done)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class RedisClusterBroker(ScriptedBroker):
    """Broker on a Redis Cluster (Redis >= 7): same contract, scripts and wire format as
    :class:`~pubsub.redis_broker.RedisBroker`, keys grouped into partitions, live delivery by
    sharded pub/sub. Commands are not retried after a connection error (a publish may have
    happened); redirections (MOVED, ASK, TRYAGAIN during a reshard) are followed."""

    name = "redis-cluster"
    errors: ClassVar[tuple[type[BaseException], ...]] = (RedisError, OSError, RedisClusterException)
    unavailable: ClassVar[tuple[type[BaseException], ...]] = (
        *ScriptedBroker.unavailable,
        ClusterError,
        TryAgainError,
        RedisClusterException,
    )

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "arena",
        partitions: int = 64,
        command_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_connections: int = 64,
        subscribe_timeout: float = 5.0,
        keepalive: float = 10.0,
        keepalive_timeout: float = 10.0,
        reconnect: ReconnectPolicy | None = None,
        check_interval: float = 1.0,
    ) -> None:
        self.keys = PartitionedKeySpace(prefix, Partitioning(partitions))
        cluster = cluster_client(
            url,
            # never reached: _run keeps at most max_connections commands in flight (the
            # cluster client has no blocking pool; beyond its limit it fails at once)
            max_connections=max_connections + 16,
            socket_timeout=command_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),
            # RESP2: pub/sub messages arrive as plain replies (see RedisBroker)
            protocol=2,
        )
        super().__init__(cluster, self.keys, CLUSTER_PUBLISH, CLUSTER_READ, CLUSTER_PUBLISH_MANY)
        self._cluster = cluster
        self._command_timeout = command_timeout
        self._in_flight = asyncio.Semaphore(max_connections)
        self._subscriber = ShardedSubscriber(
            cluster,
            self.keys.partitions,
            self._on_message,
            self._on_resubscribed,
            policy=reconnect,
            subscribe_timeout=subscribe_timeout,
            keepalive=keepalive,
            keepalive_timeout=keepalive_timeout,
            check_interval=check_interval,
        )
        self._control = self.keys.control
        self._control_link = PubSubConnection(
            self._control_connection,
            self._on_control,
            self._on_control_reconnected,
            policy=reconnect,
            subscribe_timeout=subscribe_timeout,
            keepalive=keepalive,
            keepalive_timeout=keepalive_timeout,
            label="control",
        )

    @property
    def subscriber(self) -> ShardedSubscriber:
        """The sharded subscriptions (connected nodes, moves), for operators and tests."""
        return self._subscriber

    @property
    def control(self) -> PubSubConnection:
        """The classic pub/sub connection carrying control messages."""
        return self._control_link

    # -- lifecycle -------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Discover the cluster and subscribe the control channel; raises
        :class:`BrokerUnavailable` when no seed node answers."""
        try:
            await self._cluster.initialize()
        except self.errors as exc:
            raise BrokerUnavailable(f"cannot reach the Redis Cluster: {exc}") from exc
        self._subscriber.start()
        await self._control_link.start([self._control])

    async def _disconnect(self) -> None:
        await self._subscriber.close()
        await self._control_link.close()
        await self._cluster.aclose()

    def _control_connection(self) -> AbstractConnection:
        """A connection to any node (a replica will do): PUBLISH reaches all of them. Each
        reconnect picks again, so a dead node is left behind."""
        nodes = self._cluster.get_nodes()
        if not nodes:  # the reconnect loop retries (it handles RedisError)
            raise RedisConnectionError("no Redis Cluster node known")
        return _node_connection(random.choice(nodes))

    # -- subscriptions ---------------------------------------------------------------------

    async def _listen(self, channel: str, name: bytes) -> None:
        await self._subscriber.subscribe(self.keys.partitions.index(channel), name)

    async def _unlisten(self, channel: str, name: bytes) -> None:
        await self._subscriber.unsubscribe(self.keys.partitions.index(channel), name)

    def _on_message(self, name: bytes, data: bytes) -> None:
        channel = self._channels.get(name)
        if channel is not None and self._handler is not None:
            self._handler.on_publication(parse_wire(channel, data))

    def _on_resubscribed(self, names: list[bytes]) -> None:
        channels = [self._channels[name] for name in names if name in self._channels]
        if channels and self._handler is not None:
            self._handler.on_resubscribed(channels)

    def _on_control(self, name: bytes, data: bytes) -> None:
        if name == self._control and self._handler is not None:
            self._handler.on_control(data)

    def _on_control_reconnected(self) -> None:
        # Control messages have no history: what was sent meanwhile is gone (as on one Redis).
        log.info("redis cluster control subscription restored")

    # -- commands --------------------------------------------------------------------------

    async def _run(self, script: AsyncScript, keys: list[str], args: tuple[Any, ...]) -> Any:
        """Like the single-Redis broker's blocking pool: wait up to ``command_timeout`` for one
        of ``max_connections`` command slots instead of failing at once under a burst."""
        try:
            async with asyncio.timeout(self._command_timeout):
                await self._in_flight.acquire()
        except TimeoutError:
            raise BrokerUnavailable("no free Redis Cluster connection in time") from None
        try:
            return await script(keys=keys, args=args)
        finally:
            self._in_flight.release()

    async def ping(self) -> None:
        """Raise :class:`BrokerUnavailable` unless a cluster node answers and the control
        subscription is up. A partition whose master is failing over does not make the node
        unready (the other partitions work); it is logged and retried."""
        self._check()
        nodes = self._cluster.get_nodes()
        random.shuffle(nodes)
        problem: BaseException | None = None
        for node in nodes:
            try:
                await self._cluster.ping(target_nodes=node)
                break
            except self.errors as exc:
                problem = exc
        else:
            raise BrokerUnavailable(f"no Redis Cluster node answers: {problem}")
        if not self._control_link.connected:
            raise BrokerUnavailable("redis cluster control subscription is down")
