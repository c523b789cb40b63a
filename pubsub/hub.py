"""The per-process hub: one upstream subscription per channel, local fan-out, gap-free recovery.

The hub sits between one :class:`~pubsub.broker.Broker` and the local subscribers (WebSocket
connections, in practice). Its guarantees, per channel:

* **Order and no duplicates**: a subscriber sees offsets strictly increasing by one. The hub
  tracks the newest offset it delivered and drops anything at or below it.
* **No silent holes**: a jump in offsets (a message lost by Redis pub/sub during a reconnect) is
  refilled from history before anything newer is delivered. When history no longer has the
  missing publications, subscribers are told with :meth:`Subscriber.lost` instead.
* **Gap-free subscribe**: a subscriber is registered for live publications *before* its
  history/position is read; what arrives meanwhile is buffered and merged by offset, so a
  publication is neither missed nor repeated however publishers race the subscribe.
* **Serialise once per wire protocol**: subscribers are grouped by their :class:`Encoder` (one
  per wire protocol and transport framing); each publication is encoded once per encoder in use
  on the channel and the same bytes go to every subscriber of that group. With a single protocol
  this is one encode per publication, as before.
* **Publications that arrive together go out together**: the broker may hand over several at
  once (:meth:`Hub.on_publications`: one Redis read, a busy loop pass of the memory broker);
  each channel's run is checked publication by publication as above and fanned out in one pass
  (an encoder's ``fanout_many``: one write per subscriber), in the order of arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from pubsub.broker import Broker, HistoryResult, Publication, PublishResult, StreamPosition
from pubsub.coalesce import Coalescer
from pubsub.metrics import HubMetrics
from pubsub.namespaces import ChannelName, NamespaceOptions, parse, parse_channel
from pubsub.stream import (
    ChannelStream,
    Encoder,
    Subscriber,
    SubscribeResult,
    SubscriptionCancelled,
)

if TYPE_CHECKING:  # presence imports the hub; the hub only names the entry type
    from pubsub.presence import PresenceEntry

__all__ = [
    "ControlHandler",
    "Encoder",
    "Hub",
    "SubscribeResult",
    "Subscriber",
    "SubscriptionCancelled",
]

log = logging.getLogger(__name__)


#: handles one decoded control message (a JSON object with ``op``)
ControlHandler = Callable[[dict[str, Any]], None]


class _KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def held(self, key: str) -> bool:
        """Someone holds or waits for ``key``'s lock."""
        return key in self._locks

    @contextlib.asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Hub:
    """Local index of channel → subscribers over one broker.

    Each channel with local subscribers has a :class:`~pubsub.stream.ChannelStream` (its
    delivery and recovery state); the hub keeps the index, one lock per channel for subscribe
    and release, the broker (the streams read history through the hub) and the broker
    callbacks, which it routes to the channel's stream.

    ``encoder`` turns publications into the bytes subscribers receive (whole WebSocket frames,
    for example) for subscribers that do not bring their own (see :meth:`subscribe`); each
    encoder in use on a channel is called once per publication. ``release_delay`` keeps an idle
    channel's upstream subscription for a moment so that a quick unsubscribe/subscribe does not
    flap.
    """

    def __init__(
        self,
        broker: Broker,
        namespaces: dict[str, NamespaceOptions],
        encoder: Encoder,
        *,
        metrics: HubMetrics | None = None,
        release_delay: float = 1.0,
        pending_limit: int = 10_000,
    ) -> None:
        self.broker = broker
        self.namespaces = namespaces
        self._encoder = encoder
        self._metrics = metrics if metrics is not None else HubMetrics.create(None)
        self._release_delay = release_delay
        self._pending_limit = pending_limit
        self._channels: dict[str, ChannelStream] = {}
        self._releases: dict[str, asyncio.TimerHandle] = {}
        #: history reads in flight, shared by concurrent identical requests
        self._reads: dict[tuple[str, int | None, int | None], asyncio.Future[HistoryResult]] = {}
        #: position reads, shared by the subscribes that asked before one was sent
        self._positions: Coalescer[str, StreamPosition] = Coalescer()
        #: the unlimited ``since`` reads among them, by channel and ``since``: a read from an
        #: older offset also answers a newer one
        self._since_reads: dict[str, dict[int, asyncio.Future[HistoryResult]]] = {}
        self._locks = _KeyedLocks()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._control_handlers: dict[str, list[ControlHandler]] = {}
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the broker; publications start flowing."""
        await self.broker.start(self)

    async def close(self) -> None:
        """Stop background work and close the broker."""
        self._closed = True
        for handle in self._releases.values():
            handle.cancel()
        self._releases.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.broker.close()
        self._channels.clear()

    def options(self, channel: str) -> NamespaceOptions:
        """The namespace options of ``channel``; raises ``InvalidChannel`` for a bad name."""
        namespace, _ = parse_channel(channel, self.namespaces)
        return self.namespaces[namespace]

    def parse(self, channel: str) -> ChannelName:
        """``channel`` parsed once (namespace, identifier, options); raises ``InvalidChannel``."""
        return parse(channel, self.namespaces)

    # -- reading ---------------------------------------------------------------------------

    async def position(self, channel: str) -> StreamPosition:
        """The newest offset and epoch of ``channel``. Asking creates the stream (and fixes its
        epoch) when it does not exist yet. Raises ``InvalidChannel`` or ``BrokerError``."""
        return await self.read_position(channel, self.options(channel))

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryResult:
        """Publications still in history, ascending: after ``since`` when it is in the current
        epoch, else the newest ``limit`` (offsets of another epoch mean nothing here).

        One broker read when the epoch matches, a second only for a stale one. Raises
        ``InvalidChannel`` or ``BrokerError``.
        """
        options = self.options(channel)
        after = since.offset if since is not None else None
        hist = await self.read_history(channel, options, since=after, limit=limit)
        if since is not None and hist.position.epoch != since.epoch:
            hist = await self.read_history(channel, options, limit=limit)
        return hist

    async def ping(self) -> None:
        """Raise ``BrokerError`` unless the broker answers (readiness checks)."""
        await self.broker.ping()

    async def read_history(
        self,
        channel: str,
        options: NamespaceOptions,
        *,
        since: int | None = None,
        limit: int | None = None,
    ) -> HistoryResult:
        """One broker history read (the streams' :class:`~pubsub.stream.StreamSource`).

        Single-flight: concurrent reads of a channel share one broker read (a burst of clients
        recovering after a reconnect storm). A caller joins a read in flight with the same
        ``since`` and ``limit``, or, for an unlimited read after ``since``, one after an older
        offset, keeping the publications newer than its own ``since`` (clients that went away
        at different moments are a few offsets apart). Sharing is safe because the subscribe
        merges its buffered live stream afterwards: a read that started a moment before a
        subscriber joined is completed from history. Each caller gets its own list.
        """
        key = (channel, since, limit)
        flight = self._reads.get(key)
        covering = False
        if flight is None and since is not None and limit is None:
            flight = self._covering_read(channel, since)
            covering = flight is not None
        if flight is not None:
            self._metrics.history_reads.labels("shared").inc()
            # shield: one caller being cancelled must not cancel the read the others wait for
            hist = await asyncio.shield(flight)
            if not covering:
                return HistoryResult(list(hist.publications), hist.position)
            if since is not None and since <= hist.position.offset:
                pubs = [p for p in hist.publications if p.offset > since]
                return HistoryResult(pubs, hist.position)
            # The read ended before our offset (we saw a newer publication): read our own.
            flight = None
        self._metrics.history_reads.labels("broker").inc()
        flight = asyncio.ensure_future(
            self.broker.history(channel, options, since=since, limit=limit)
        )
        self._track(key, flight)
        hist = await asyncio.shield(flight)
        return HistoryResult(list(hist.publications), hist.position)

    def _covering_read(self, channel: str, since: int) -> asyncio.Future[HistoryResult] | None:
        """The unlimited read of ``channel`` in flight from the newest offset at or below
        ``since`` (its answer holds everything after ``since``), if any."""
        reads = self._since_reads.get(channel)
        if not reads:
            return None
        best = max((start for start in reads if start <= since), default=None)
        return None if best is None else reads[best]

    def _track(
        self, key: tuple[str, int | None, int | None], flight: asyncio.Future[HistoryResult]
    ) -> None:
        """Make ``flight`` joinable until it is done."""
        channel, since, limit = key
        self._reads[key] = flight
        by_since = None
        if since is not None and limit is None:
            by_since = self._since_reads.setdefault(channel, {})
            by_since[since] = flight

        def done(finished: asyncio.Future[HistoryResult]) -> None:
            if self._reads.get(key) is finished:
                del self._reads[key]
            if by_since is not None and since is not None and by_since.get(since) is finished:
                del by_since[since]
                if not by_since and self._since_reads.get(channel) is by_since:
                    del self._since_reads[channel]

        flight.add_done_callback(done)

    async def read_position(self, channel: str, options: NamespaceOptions) -> StreamPosition:
        """A broker position read sent after this call (the streams'
        :class:`~pubsub.stream.StreamSource`).

        Coalesced (:class:`~pubsub.coalesce.Coalescer`): a burst of subscribes to one channel
        shares one read among the callers that asked before it was sent, so each caller's
        answer is still read after it registered for live publications (gap-free subscribe).
        A broker with :attr:`~pubsub.broker.Broker.instant_reads` (in-process) is read directly:
        its read finishes when called, so coalescing would only cost a task per read.
        """
        broker = self.broker
        if broker.instant_reads:
            return await broker.position(channel, options)
        return await self._positions(channel, lambda: broker.position(channel, options))

    # -- publishing ------------------------------------------------------------------------

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> PublishResult:
        """Serialise ``data`` to JSON once and publish it; returns the offset it got.

        Raises ``InvalidChannel`` for a bad channel name and ``BrokerError`` when the broker
        fails (the publication may then not have happened).
        """
        payload = data if isinstance(data, bytes) else orjson.dumps(data)
        return await self.publish_raw(channel, payload, idempotency_key=idempotency_key)

    async def publish_raw(
        self, channel: str, payload: bytes, *, idempotency_key: str | None = None
    ) -> PublishResult:
        """Publish ``payload``, which must already be JSON bytes."""
        return await self.broker.publish(
            channel, payload, self.options(channel), idempotency_key=idempotency_key
        )

    async def publish_many(
        self, channel: str, items: Sequence[tuple[Any, str | None]]
    ) -> list[PublishResult]:
        """:meth:`publish` each ``(data, idempotency_key)`` of ``items`` in order, in one
        broker round trip (:meth:`~pubsub.broker.Broker.publish_many`). On ``BrokerError`` a
        prefix of them may have been published."""
        payloads = [
            (data if isinstance(data, bytes) else orjson.dumps(data), key) for data, key in items
        ]
        return await self.broker.publish_many(channel, payloads, self.options(channel))

    async def publish_control(self, op: str, fields: dict[str, Any]) -> None:
        """Send control message ``op`` with ``fields`` (JSON-ready) to the handlers of ``op``
        on every node, this one included. Raises ``BrokerError`` when the broker fails."""
        await self.broker.publish_control(orjson.dumps({**fields, "op": op}))

    def add_control_handler(self, op: str, handler: ControlHandler) -> None:
        """Call ``handler(message)`` for every control message ``op`` from any node; the
        message is the decoded JSON object (``op`` included)."""
        self._control_handlers.setdefault(op, []).append(handler)

    # -- subscribing -----------------------------------------------------------------------

    async def subscribe(
        self,
        sub: Subscriber,
        channel: str,
        since: StreamPosition | None = None,
        *,
        encoder: Encoder | None = None,
    ) -> SubscribeResult:
        """Register ``sub`` on ``channel`` and return where it starts.

        ``encoder`` is the wire protocol ``sub`` speaks (the hub's default when None).

        With ``since`` (and recovery allowed in the namespace) the publications after it are
        returned and ``recovered`` says whether all of them were still available in the same
        epoch. The caller must send the reply, then ``tail``, before awaiting anything else:
        from the moment this returns, live publications go straight to ``sub.deliver``.
        Raises ``BrokerError`` when the broker fails; ``sub`` is then not subscribed.
        """
        chosen = self._encoder if encoder is None else encoder
        stream = self._channels.get(channel)
        if stream is not None and not self._locks.held(channel):
            # The common case, a channel already live here that nobody is creating or releasing:
            # what the lock guards runs without awaiting, so taking it (free: it would not
            # suspend) would change nothing but the cost.
            self._keep(stream)
            stream.add_pending(sub, chosen)
        else:
            stream = await self._register(sub, channel, chosen)
        try:
            return await stream.complete(sub, since)
        except BaseException:
            stream.drop_pending(sub)
            self._maybe_release(stream)
            raise

    async def _register(self, sub: Subscriber, channel: str, encoder: Encoder) -> ChannelStream:
        """Add ``sub`` to ``channel``'s stream as pending, under the channel's lock, creating the
        stream (and the broker subscription) when the channel is not live here."""
        async with self._locks(channel):
            stream = self._channels.get(channel)
            if stream is None:
                stream = ChannelStream(
                    channel,
                    self.options(channel),
                    source=self,
                    metrics=self._metrics,
                    pending_limit=self._pending_limit,
                    spawn=self._spawn,
                )
                self._channels[channel] = stream
                stream.add_pending(sub, encoder)
                try:
                    await self.broker.subscribe(channel)
                except BaseException:
                    del self._channels[channel]
                    raise
                self._metrics.channels.inc()
            else:
                self._keep(stream)
                stream.add_pending(sub, encoder)
        return stream

    def _keep(self, stream: ChannelStream) -> None:
        """Cancel a pending release of ``stream``'s upstream subscription (someone rejoined)."""
        release = self._releases.pop(stream.name, None)
        if release is not None:
            release.cancel()

    def unsubscribe(self, sub: Subscriber, channel: str) -> bool:
        """Remove ``sub`` from ``channel``; returns False when it was not subscribed.

        The upstream subscription is released after ``release_delay`` if nobody rejoins.
        """
        stream = self._channels.get(channel)
        if stream is None:
            return False
        found = stream.remove(sub)
        self._maybe_release(stream)
        return found

    def _maybe_release(self, stream: ChannelStream) -> None:
        if not stream.empty() or stream.name in self._releases or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._releases[stream.name] = loop.call_later(
            self._release_delay, self._spawn_release, stream
        )

    def _spawn_release(self, stream: ChannelStream) -> None:
        self._releases.pop(stream.name, None)
        self._spawn(self._release(stream))

    async def _release(self, stream: ChannelStream) -> None:
        async with self._locks(stream.name):
            if self._channels.get(stream.name) is not stream or not stream.empty():
                return
            del self._channels[stream.name]
            self._metrics.channels.dec()
            try:
                await self.broker.unsubscribe(stream.name)
            except Exception:
                log.warning("upstream unsubscribe failed", extra={"channel": stream.name})

    def deliver_presence(self, channel: str, kind: str, entry: PresenceEntry) -> int:
        """Hand a ``join``/``leave`` event to every local subscriber of ``channel`` that is
        receiving live publications, encoded once per encoder; returns how many got it."""
        stream = self._channels.get(channel)
        return 0 if stream is None else stream.deliver_presence(kind, entry)

    def subscriber_count(self, channel: str) -> int:
        """Local subscribers of ``channel`` (live, catching up or subscribing)."""
        stream = self._channels.get(channel)
        return 0 if stream is None else stream.subscriber_count()

    def channels(self) -> list[str]:
        """Channels with an upstream subscription in this process."""
        return list(self._channels)

    # -- broker callbacks ------------------------------------------------------------------

    def on_publication(self, publication: Publication) -> None:
        """A publication from the broker: to its channel's stream, if anyone listens here."""
        stream = self._channels.get(publication.channel)
        if stream is not None:
            stream.on_publication(publication)

    def on_publications(self, publications: list[Publication]) -> None:
        """Publications that arrived together (one socket read of the Redis broker), in the
        order received. Each run of consecutive publications of one channel goes to its stream
        at once (:meth:`~pubsub.stream.ChannelStream.on_publications`: one fan-out pass, so
        one write per subscriber); runs are handed over in order, so what a subscriber of
        several channels receives keeps the order of arrival."""
        channels = self._channels
        count = len(publications)
        start = 0
        while start < count:
            name = publications[start].channel
            end = start + 1
            while end < count and publications[end].channel == name:
                end += 1
            stream = channels.get(name)
            if stream is not None:
                if end - start == 1:
                    stream.on_publication(publications[start])
                else:
                    stream.on_publications(publications[start:end])
            start = end

    def on_control(self, data: bytes) -> None:
        """Decode a control message once and route it by its ``op`` (one discriminator)."""
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            message = None
        op = message.get("op") if isinstance(message, dict) else None
        if not isinstance(op, str):
            log.warning("malformed control message ignored")
            return
        for handler in self._control_handlers.get(op, ()):
            try:
                handler(message)
            except Exception:
                log.exception("control handler failed", extra={"op": op})

    def on_reconnected(self) -> None:
        """Refill every channel: messages may have been published while we were away."""
        self.on_resubscribed(list(self._channels))

    def on_resubscribed(self, channels: list[str]) -> None:
        """Refill ``channels``: their upstream subscription was re-made (a Redis Cluster slot
        moved, or its node's connection came back)."""
        for name in channels:
            stream = self._channels.get(name)
            if stream is not None:
                stream.on_reconnected()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
