"""The Redis broker: offsets, history and cross-node delivery for a cluster of nodes.

Offsets and history live in Redis (a meta hash and a stream per channel, see
:mod:`pubsub.redis_keys`); one Lua script (:mod:`pubsub.redis_scripts`) assigns the offset,
appends to the stream and PUBLISHes the live message atomically, so every node sees the same
offsets in the same order. Each process reads live messages over one pub/sub connection
(:mod:`pubsub.redis_pubsub`). ``docs/redis.md`` describes the layout and failure behaviour.

:class:`ScriptedBroker` holds what the single-Redis broker and the Redis Cluster broker
(:mod:`pubsub.redis_cluster`) share: the publish and read scripts and how their replies and
errors become broker results.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pubsub.broker import (
    Broker,
    BrokerError,
    BrokerEventHandler,
    BrokerUnavailable,
    HistoryResult,
    Publication,
    PublishResult,
    StreamPosition,
    hand_over,
)
from pubsub.memory import new_epoch
from pubsub.namespaces import NamespaceOptions
from pubsub.redis_keys import KeySpace, parse_wire
from pubsub.redis_pubsub import PubSubConnection, ReconnectPolicy
from pubsub.redis_scripts import PUBLISH, PUBLISH_MANY, READ

#: At most this many queued publications of one channel go into one ``publish_many`` call.
MAX_PUBLISH_BATCH = 64

#: The meta hash (epoch and offset counter) outlives history by at least this much, so offsets
#: keep counting in one epoch across quiet periods; when it expires a new epoch starts.
META_MIN_TTL = 7 * 24 * 3600


class ChannelKeys(Protocol):
    """Key names of one channel (:class:`~pubsub.redis_keys.KeySpace` or
    :class:`~pubsub.redis_keys.PartitionedKeySpace`)."""

    def meta(self, channel: str) -> str: ...
    def stream(self, channel: str) -> str: ...
    def idempotency(self, channel: str, key: str) -> str: ...
    def live(self, channel: str) -> bytes: ...
    @property
    def control(self) -> bytes: ...


class _Queued:
    """A publish waiting for its channel's call in flight (see :meth:`ScriptedBroker.publish`)."""

    __slots__ = ("answered", "data", "future", "key", "options")

    def __init__(
        self,
        data: bytes,
        key: str | None,
        options: NamespaceOptions,
        future: asyncio.Future[PublishResult],
    ) -> None:
        self.data = data
        self.key = key
        self.options = options
        self.future = future
        #: the batch set the future's outcome (counted in ``ScriptedBroker.answered``)
        self.answered = False


class ScriptedBroker(Broker):
    """Publish, history and position through the Lua scripts, on a Redis or RedisCluster
    client, and the bookkeeping of start, close and subscriptions. Subclasses connect
    (:meth:`_connect`, :meth:`_disconnect`), carry live messages (:meth:`_listen`,
    :meth:`_unlisten`) and deliver them to the handler.

    Concurrent publishes to one channel share round trips: the publishes of a channel made in
    one event-loop iteration (the requests that one pass of the loop handled) go out together
    in one ``publish_many`` script call, in the order they were made, each caller getting its
    own result. The first publish of an iteration yields once (``sleep(0)``) to let the others
    join; alone, it is sent as a single publish. Batches are not serialised: several may be in
    flight, as single publishes were. Under load the Redis command path (redis-py, the round
    trip, Redis's script call) is paid once per batch instead of once per publication.

    :attr:`waiting` counts the publish calls of this process that have not returned yet (their
    callers wait for an acknowledgement) and :attr:`answered` those among them whose batch is
    done but which have not resumed yet; the pub/sub reader uses them to let those callers
    answer before it fans out the echo (see :meth:`RedisBroker._deliver_read`).
    """

    #: errors of the client library that a command may raise
    errors: ClassVar[tuple[type[BaseException], ...]] = (RedisError, OSError)
    #: those meaning "Redis cannot be reached right now" (the rest are :class:`BrokerError`)
    unavailable: ClassVar[tuple[type[BaseException], ...]] = (
        RedisConnectionError,
        RedisTimeoutError,
        OSError,
    )

    def __init__(
        self,
        client: Redis | RedisCluster,
        keys: ChannelKeys,
        publish: str,
        read: str,
        publish_many: str,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._publish = client.register_script(publish)
        self._publish_many = client.register_script(publish_many)
        self._read = client.register_script(read)
        self._started = False
        self._closed = False
        #: live (pub/sub) channel name -> channel, for the channels subscribed here
        self._channels: dict[bytes, str] = {}
        self._handler: BrokerEventHandler | None = None
        #: per (channel, idempotency TTL): the publishes joining this iteration's first one
        self._queued: dict[tuple[str, int], list[_Queued]] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        #: publish and publish_many calls in progress (callers waiting for their result)
        self.waiting = 0
        #: batched publishes whose result is set but whose caller has not resumed yet
        self.answered = 0

    def _check(self) -> None:
        if self._closed or not self._started:
            raise BrokerError(f"{self.name} broker is not running")

    # -- lifecycle and subscriptions -------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        """Connect (:meth:`_connect`); on failure close what was opened and raise (a
        :class:`BrokerUnavailable` when Redis does not answer now: fail fast)."""
        self._handler = handler
        try:
            await self._connect()
        except BaseException:
            await self.close()
            raise
        self._started = True

    async def close(self) -> None:
        """Stop the readers and close every connection (:meth:`_disconnect`). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._disconnect()
        self._channels.clear()
        self._handler = None

    async def subscribe(self, channel: str) -> None:
        self._check()
        name = self._keys.live(channel)
        self._channels[name] = channel
        try:
            await self._listen(channel, name)
        except BaseException:
            self._channels.pop(name, None)
            raise

    async def unsubscribe(self, channel: str) -> None:
        name = self._keys.live(channel)
        if self._channels.pop(name, None) is not None:
            await self._unlisten(channel, name)

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Check that Redis answers and subscribe the control channel."""

    @abc.abstractmethod
    async def _disconnect(self) -> None:
        """Close the readers and every connection."""

    @abc.abstractmethod
    async def _listen(self, channel: str, name: bytes) -> None:
        """Receive the live messages of ``channel`` (pub/sub channel ``name``); returns once
        Redis confirmed the subscription."""

    @abc.abstractmethod
    async def _unlisten(self, channel: str, name: bytes) -> None:
        """Stop receiving pub/sub channel ``name``."""

    async def _run(self, script: AsyncScript, keys: list[str], args: tuple[Any, ...]) -> Any:
        """Run ``script`` (a hook for brokers that limit concurrent commands)."""
        return await script(keys=keys, args=args)

    def _failure(self, what: str, exc: BaseException) -> BrokerError:
        if isinstance(exc, self.unavailable):
            return BrokerUnavailable(f"{what} failed: {exc}")
        return BrokerError(f"{what} failed: {exc}")

    async def publish(
        self,
        channel: str,
        data: bytes,
        options: NamespaceOptions,
        *,
        idempotency_key: str | None = None,
        idempotency_ttl: int = 300,
    ) -> PublishResult:
        """Publish ``data``, sharing one script call with the publishes of ``channel`` made in
        the same event-loop iteration (see the class docstring). A batch that fails fails each
        of its callers with the batch's error (a prefix of it may have been published, as a
        single publish that timed out may have been)."""
        self._check()
        self.waiting += 1
        try:
            batch_key = (channel, idempotency_ttl)
            queue = self._queued.get(batch_key)
            if queue is not None:
                future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
                joined = _Queued(data, idempotency_key, options, future)
                queue.append(joined)
                return await self._answer_of(joined)
            # The first publish of the channel in this iteration: let the others made in it join.
            queue = self._queued[batch_key] = []
            try:
                await asyncio.sleep(0)
            except BaseException:
                del self._queued[batch_key]
                if queue:
                    self._spawn_batch(batch_key, queue)
                raise
            del self._queued[batch_key]
            if not queue:
                return await self._publish_one(
                    channel,
                    data,
                    options,
                    idempotency_key=idempotency_key,
                    idempotency_ttl=idempotency_ttl,
                )
            mine = _Queued(
                data, idempotency_key, options, asyncio.get_running_loop().create_future()
            )
            self._spawn_batch(batch_key, [mine, *queue])
            return await self._answer_of(mine)
        finally:
            self.waiting -= 1

    async def _answer_of(self, queued: _Queued) -> PublishResult:
        try:
            return await queued.future
        finally:
            if queued.answered:
                self.answered -= 1

    def _answer(
        self, queued: _Queued, result: PublishResult | None, error: BaseException | None = None
    ) -> None:
        """Set the outcome of ``queued`` unless its caller went away (cancelled)."""
        if queued.future.done():
            return
        if error is not None:
            queued.future.set_exception(error)
        else:
            assert result is not None
            queued.future.set_result(result)
        queued.answered = True
        self.answered += 1

    def _spawn_batch(self, batch_key: tuple[str, int], queue: list[_Queued]) -> None:
        task = asyncio.get_running_loop().create_task(self._send_batch(batch_key, queue))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _send_batch(self, batch_key: tuple[str, int], queue: list[_Queued]) -> None:
        """Publish ``queue`` in order, :data:`MAX_PUBLISH_BATCH` per script call, and hand each
        caller its result (callers cancelled meanwhile are left out)."""
        channel, idempotency_ttl = batch_key
        batch: list[_Queued] = []
        try:
            while queue:
                batch = [q for q in queue[:MAX_PUBLISH_BATCH] if not q.future.done()]
                del queue[:MAX_PUBLISH_BATCH]
                if not batch:  # every caller of it was cancelled before it was sent
                    continue
                try:
                    results = await self.publish_many(
                        channel,
                        [(q.data, q.key) for q in batch],
                        batch[0].options,
                        idempotency_ttl=idempotency_ttl,
                    )
                except BrokerError as exc:
                    for q in batch + queue:
                        error = type(exc)(*exc.args)
                        error.__cause__ = exc.__cause__
                        self._answer(q, None, error)
                    return
                for q, result in zip(batch, results, strict=True):
                    self._answer(q, result)
                batch = []
        finally:
            # Cancelled (the broker is closing) or an unexpected error: nobody may wait forever.
            for q in batch + queue:
                self._answer(q, None, BrokerError("redis publish was interrupted"))

    async def _publish_one(
        self,
        channel: str,
        data: bytes,
        options: NamespaceOptions,
        *,
        idempotency_key: str | None,
        idempotency_ttl: int,
    ) -> PublishResult:
        keys = self._keys
        script_keys = [keys.meta(channel), keys.stream(channel)]
        if idempotency_key is not None:
            script_keys.append(keys.idempotency(channel, idempotency_key))
        args = (
            data,
            options.history_size,
            max(1, options.history_ttl),
            max(options.history_ttl, META_MIN_TTL),
            new_epoch(),
            repr(time.time()),
            max(1, idempotency_ttl) if idempotency_key is not None else 0,
            keys.live(channel),
        )
        try:
            offset, epoch, duplicate = await self._run(self._publish, script_keys, args)
        except self.errors as exc:
            raise self._failure("redis publish", exc) from exc
        return PublishResult(int(offset), epoch.decode(), duplicate=bool(duplicate))

    async def publish_many(
        self,
        channel: str,
        items: Sequence[tuple[bytes, str | None]],
        options: NamespaceOptions,
        *,
        idempotency_ttl: int = 300,
    ) -> list[PublishResult]:
        """All of ``items`` in one script call (one round trip, atomic)."""
        self._check()
        if not items:
            return []
        keys = self._keys
        script_keys = [keys.meta(channel), keys.stream(channel)]
        args: list[Any] = [
            options.history_size,
            max(1, options.history_ttl),
            max(options.history_ttl, META_MIN_TTL),
            new_epoch(),
            repr(time.time()),
            max(1, idempotency_ttl),
            keys.live(channel),
        ]
        for data, key in items:
            if key is not None:
                script_keys.append(keys.idempotency(channel, key))
            args += (data, b"1" if key is not None else b"0")
        self.waiting += 1
        try:
            reply = await self._run(self._publish_many, script_keys, tuple(args))
        except self.errors as exc:
            raise self._failure("redis publish", exc) from exc
        finally:
            self.waiting -= 1
        return [
            PublishResult(int(reply[i]), reply[i + 1].decode(), duplicate=bool(reply[i + 2]))
            for i in range(0, len(reply), 3)
        ]

    async def history(
        self,
        channel: str,
        options: NamespaceOptions,
        *,
        since: int | None = None,
        limit: int | None = None,
    ) -> HistoryResult:
        count = "" if limit is None else str(limit)
        if limit is not None and limit <= 0:
            mode, start = "pos", ""
        elif since is not None:
            mode, start = "since", f"{max(since + 1, 0)}-0"
        elif limit is not None:
            mode, start = "last", ""
        else:
            mode, start = "all", ""
        epoch, offset, entries = await self._run_read(channel, options, mode, start, count)
        publications = [
            Publication(channel, int(entry_id[:-2]), epoch, fields[1], float(fields[3]))
            for entry_id, fields in entries
        ]
        if mode == "last":
            publications.reverse()
        return HistoryResult(publications, StreamPosition(offset, epoch))

    async def position(self, channel: str, options: NamespaceOptions) -> StreamPosition:
        epoch, offset, _ = await self._run_read(channel, options, "pos", "", "")
        return StreamPosition(offset, epoch)

    async def _run_read(
        self, channel: str, options: NamespaceOptions, mode: str, start: str, count: str
    ) -> tuple[str, int, list[Any]]:
        self._check()
        keys = self._keys
        args = (new_epoch(), max(options.history_ttl, META_MIN_TTL), mode, start, count)
        try:
            epoch, offset, entries = await self._run(
                self._read, [keys.meta(channel), keys.stream(channel)], args
            )
        except self.errors as exc:
            raise self._failure("redis history read", exc) from exc
        return epoch.decode(), int(offset), entries

    async def publish_control(self, data: bytes) -> None:
        """PUBLISH on the control channel (on a cluster, Redis broadcasts it to every node)."""
        self._check()
        try:
            await self._redis.publish(self._keys.control, data)
        except self.errors as exc:
            raise self._failure("redis control publish", exc) from exc


class RedisBroker(ScriptedBroker):
    """Broker backed by Redis; every node using the same URL and prefix shares channels.

    ``start`` fails fast (:class:`BrokerUnavailable`) when Redis is unreachable, so a
    misconfigured node does not boot; once running, connection losses are survived (commands
    raise :class:`BrokerUnavailable` meanwhile, the pub/sub connection reconnects by itself).
    Commands are never retried by the client: a publish that timed out may or may not have
    happened, and only the caller can decide to retry (with an idempotency key).
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "arena",
        command_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_connections: int = 64,
        subscribe_timeout: float = 5.0,
        keepalive: float = 10.0,
        keepalive_timeout: float = 10.0,
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        self.keys = KeySpace(prefix)
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=command_timeout,
            socket_timeout=command_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),
            # RESP2: pub/sub messages arrive as plain replies on the reader's connection
            # instead of taking redis-py's RESP3 push-notification path.
            protocol=2,
        )
        self._pool = pool
        super().__init__(Redis(connection_pool=pool), self.keys, PUBLISH, READ, PUBLISH_MANY)
        self._pubsub = PubSubConnection(
            self._pool.make_connection,
            self._on_message,
            self._on_reconnected,
            policy=reconnect,
            subscribe_timeout=subscribe_timeout,
            keepalive=keepalive,
            keepalive_timeout=keepalive_timeout,
            on_drained=self._deliver_read,
        )
        self._control = self.keys.control
        #: publications read from pub/sub and not handed to the hub yet (:meth:`_on_message`)
        self._read_batch: list[Publication] = []
        self._hand_over_scheduled = False

    @property
    def pubsub(self) -> PubSubConnection:
        """The pub/sub connection (its ``client_id`` and ``reconnects`` help operators)."""
        return self._pubsub

    # -- lifecycle -------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Connect and subscribe the control channel; raises :class:`BrokerUnavailable` when
        Redis does not answer now."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"cannot reach Redis: {exc}") from exc
        await self._pubsub.start([self._control])

    async def _disconnect(self) -> None:
        await self._pubsub.close()
        await self._redis.aclose()
        await self._pool.disconnect()

    # -- subscriptions ---------------------------------------------------------------------

    async def _listen(self, channel: str, name: bytes) -> None:
        await self._pubsub.subscribe(name)

    async def _unlisten(self, channel: str, name: bytes) -> None:
        await self._pubsub.unsubscribe(name)

    def _on_message(self, name: bytes, data: bytes) -> None:
        """A pub/sub message. Publications are collected and handed to the hub together once
        the reader has taken everything one socket read brought (:meth:`_deliver_read`), so a
        channel's subscribers get them in one fan-out pass; anything else first hands over
        what was collected, so the hub sees every callback in the order Redis sent them."""
        handler = self._handler
        if handler is None:
            return
        channel = self._channels.get(name)
        if channel is not None:
            self._read_batch.append(parse_wire(channel, data))
        elif name == self._control:
            self._hand_over()
            handler.on_control(data)

    def _deliver_read(self) -> None:
        """The reader took everything one socket read brought and is about to wait for more:
        hand the publications collected to the hub, at once when nobody in this process waits
        for a publish, else once the publishers answered in the meantime have resumed.

        The pub/sub echo of a publication arrives with the script's reply. Fanning it out
        first would hold the publishers' replies behind a pass over every subscriber
        (milliseconds with thousands of them); answering them first costs the subscribers
        only those replies' writes, and under load keeps the publishers in step, so that their
        next publications arrive together and share one pass (one write per subscriber)
        instead of trickling in, one pass each. The hand-over waits one pass of the event loop
        (the callers resumed by a reply read before the echo run in it), and one more if a
        reply was read in that pass, never longer. Traffic from other nodes, with nobody
        waiting here, is handed over at once."""
        if not self._read_batch or self._hand_over_scheduled:
            return
        if self.waiting:
            self._hand_over_scheduled = True
            asyncio.get_running_loop().call_soon(self._hand_over_later, 1)
        else:
            self._hand_over()

    def _hand_over_later(self, again: int) -> None:
        if again and self.answered:
            # Replies read in this pass: their callers resume in the next one, let them first.
            asyncio.get_running_loop().call_soon(self._hand_over_later, again - 1)
        else:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the hub every publication collected so far, in the order read."""
        self._hand_over_scheduled = False
        batch, self._read_batch = self._read_batch, []
        if self._handler is not None:
            hand_over(self._handler, batch)

    def _on_reconnected(self) -> None:
        self._hand_over()
        if self._handler is not None:
            self._handler.on_reconnected()

    # -- commands --------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise :class:`BrokerUnavailable` unless Redis answers and the pub/sub connection is
        up (a node without it would miss live publications)."""
        self._check()
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis ping failed: {exc}") from exc
        if not self._pubsub.connected:
            raise BrokerUnavailable("redis pub/sub connection is down")
