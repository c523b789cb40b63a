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
* **Serialise once**: each publication is encoded once (``encode``) and the same bytes go to
  every subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from pubsub.broker import Broker, HistoryResult, Publication, PublishResult, StreamPosition
from pubsub.metrics import HubMetrics
from pubsub.namespaces import ChannelName, NamespaceOptions, parse, parse_channel

log = logging.getLogger(__name__)


#: handles one decoded control message (a JSON object with ``op``)
ControlHandler = Callable[[dict[str, Any]], None]


class SubscriptionCancelled(Exception):
    """The subscriber was unsubscribed while its subscribe was still in progress."""


class Subscriber(Protocol):
    """A local receiver of publications (a WebSocket connection). Methods must not block."""

    def deliver(self, frame: bytes) -> None:
        """Queue an encoded publication for sending."""

    def lost(self, channel: str, position: StreamPosition) -> None:
        """Publications of ``channel`` were lost for good; continue from ``position``."""


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """The outcome of :meth:`Hub.subscribe`.

    ``publications`` are the recovered ones (send them in the reply); ``tail`` are live
    publications that arrived during the subscribe and must be sent right after the reply.
    ``recovered`` is None when no recovery was asked for.
    """

    position: StreamPosition
    recovered: bool | None
    publications: list[Publication]
    tail: list[Publication]


@dataclass(slots=True)
class _Pending:
    buffer: list[Publication] = field(default_factory=list)
    lost: bool = False


@dataclass(slots=True)
class _Channel:
    name: str
    options: NamespaceOptions
    live: dict[Subscriber, None] = field(default_factory=dict)
    pending: dict[Subscriber, _Pending] = field(default_factory=dict)
    #: subscribers that go live once the stream passes the offset given
    skip: dict[Subscriber, int] = field(default_factory=dict)
    offset: int = -1  # newest offset delivered; -1 while unknown
    epoch: str = ""
    filling: bool = False
    backlog: list[Publication] = field(default_factory=list)
    release: asyncio.TimerHandle | None = None

    def empty(self) -> bool:
        return not (self.live or self.pending or self.skip)


class _KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

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

    ``encode`` turns a publication into the bytes subscribers receive (a whole WebSocket frame,
    for example); it is called once per publication. ``release_delay`` keeps an idle channel's
    upstream subscription for a moment so that a quick unsubscribe/subscribe does not flap.
    """

    def __init__(
        self,
        broker: Broker,
        namespaces: dict[str, NamespaceOptions],
        encode: Callable[[Publication], bytes],
        *,
        metrics: HubMetrics | None = None,
        release_delay: float = 1.0,
        pending_limit: int = 10_000,
    ) -> None:
        self.broker = broker
        self.namespaces = namespaces
        self._encode = encode
        self._metrics = metrics if metrics is not None else HubMetrics.create(None)
        self._release_delay = release_delay
        self._pending_limit = pending_limit
        self._channels: dict[str, _Channel] = {}
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
        for state in self._channels.values():
            if state.release is not None:
                state.release.cancel()
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
        return await self.broker.position(channel, self.options(channel))

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
        hist = await self.broker.history(channel, options, since=after, limit=limit)
        if since is not None and hist.position.epoch != since.epoch:
            hist = await self.broker.history(channel, options, limit=limit)
        return hist

    async def ping(self) -> None:
        """Raise ``BrokerError`` unless the broker answers (readiness checks)."""
        await self.broker.ping()

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
        self, sub: Subscriber, channel: str, since: StreamPosition | None = None
    ) -> SubscribeResult:
        """Register ``sub`` on ``channel`` and return where it starts.

        With ``since`` (and recovery allowed in the namespace) the publications after it are
        returned and ``recovered`` says whether all of them were still available in the same
        epoch. The caller must send the reply, then ``tail``, before awaiting anything else:
        from the moment this returns, live publications go straight to ``sub.deliver``.
        Raises ``BrokerError`` when the broker fails; ``sub`` is then not subscribed.
        """
        options = self.options(channel)
        async with self._locks(channel):
            state = self._channels.get(channel)
            if state is None:
                state = _Channel(channel, options)
                self._channels[channel] = state
                state.pending[sub] = _Pending()
                try:
                    await self.broker.subscribe(channel)
                except BaseException:
                    del self._channels[channel]
                    raise
                self._metrics.channels.inc()
            else:
                if state.release is not None:
                    state.release.cancel()
                    state.release = None
                state.pending[sub] = _Pending()
        try:
            return await self._complete(sub, state, since)
        except BaseException:
            state.pending.pop(sub, None)
            self._maybe_release(state)
            raise

    async def _complete(
        self, sub: Subscriber, state: _Channel, since: StreamPosition | None
    ) -> SubscribeResult:
        options = state.options
        recovering = since is not None and options.recovery
        recovered: bool | None = None
        publications: list[Publication] = []
        if recovering:
            assert since is not None
            hist = await self.broker.history(state.name, options, since=since.offset)
            position = hist.position
            if hist.position.epoch != since.epoch or since.offset > position.offset:
                recovered = False
                cursor = position.offset
            else:
                publications = hist.publications
                first = publications[0].offset if publications else position.offset + 1
                recovered = first == since.offset + 1
                cursor = publications[-1].offset if publications else position.offset
                if not recovered:
                    # What is left of history still goes out, but the client is told.
                    cursor = max(cursor, since.offset)
            self._metrics.recoveries.labels("recovered" if recovered else "lost").inc()
        else:
            position = await self.broker.position(state.name, options)
            cursor = position.offset
        pending = self._still_pending(state, sub)
        # Make the buffered live stream contiguous with ``cursor``: anything between the cursor
        # and the first buffered publication was dropped as already-delivered by the channel
        # before this subscriber joined, so fetch it from history (a rare, bounded loop).
        while state.offset >= 0 and state.epoch == position.epoch and not pending.lost:
            first = pending.buffer[0].offset if pending.buffer else state.offset + 1
            if cursor + 1 >= first:
                break
            missing = await self.broker.history(
                state.name, options, since=cursor, limit=first - cursor - 1
            )
            pending = self._still_pending(state, sub)
            got = [p for p in missing.publications if p.epoch == position.epoch]
            if not got or got[0].offset != cursor + 1:
                pending.lost = True
                break
            publications.extend(got)
            cursor = got[-1].offset
        del state.pending[sub]
        if state.offset < 0:
            state.offset, state.epoch = cursor, position.epoch
        tail = [p for p in pending.buffer if p.offset > cursor and p.epoch == position.epoch]
        if pending.lost and recovered:
            recovered = False
        if state.offset < cursor and state.epoch == position.epoch:
            state.skip[sub] = cursor  # live stream is behind this subscriber: wait for it
        else:
            state.live[sub] = None
        self._metrics.subscriptions.inc()
        if tail:
            position = StreamPosition(tail[-1].offset, position.epoch)
        elif publications:
            position = StreamPosition(max(position.offset, publications[-1].offset), position.epoch)
        return SubscribeResult(position, recovered, publications, tail)

    @staticmethod
    def _still_pending(state: _Channel, sub: Subscriber) -> _Pending:
        pending = state.pending.get(sub)
        if pending is None:
            raise SubscriptionCancelled(state.name)
        return pending

    def unsubscribe(self, sub: Subscriber, channel: str) -> bool:
        """Remove ``sub`` from ``channel``; returns False when it was not subscribed.

        The upstream subscription is released after ``release_delay`` if nobody rejoins.
        """
        state = self._channels.get(channel)
        if state is None:
            return False
        found = False
        for index in (state.live, state.skip):
            if sub in index:
                del index[sub]
                found = True
        if found:
            self._metrics.subscriptions.dec()
        elif state.pending.pop(sub, None) is not None:
            found = True  # still subscribing: _complete notices and gives up
        self._maybe_release(state)
        return found

    def _maybe_release(self, state: _Channel) -> None:
        if not state.empty() or state.release is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        state.release = loop.call_later(self._release_delay, self._spawn_release, state)

    def _spawn_release(self, state: _Channel) -> None:
        state.release = None
        self._spawn(self._release(state))

    async def _release(self, state: _Channel) -> None:
        async with self._locks(state.name):
            if self._channels.get(state.name) is not state or not state.empty():
                return
            del self._channels[state.name]
            self._metrics.channels.dec()
            try:
                await self.broker.unsubscribe(state.name)
            except Exception:
                log.warning("upstream unsubscribe failed", extra={"channel": state.name})

    def deliver_local(self, channel: str, frame: bytes) -> int:
        """Hand ``frame`` to every local subscriber of ``channel`` that is receiving live
        publications (used for events that are not publications, e.g. join/leave)."""
        state = self._channels.get(channel)
        if state is None:
            return 0
        for sub in state.live:
            sub.deliver(frame)
        for sub in state.skip:
            sub.deliver(frame)
        return len(state.live) + len(state.skip)

    def subscriber_count(self, channel: str) -> int:
        """Local subscribers of ``channel`` (live, catching up or subscribing)."""
        state = self._channels.get(channel)
        return 0 if state is None else len(state.live) + len(state.skip) + len(state.pending)

    def channels(self) -> list[str]:
        """Channels with an upstream subscription in this process."""
        return list(self._channels)

    # -- broker callbacks ------------------------------------------------------------------

    def on_publication(self, publication: Publication) -> None:
        state = self._channels.get(publication.channel)
        if state is None:
            return
        self._metrics.publications.inc()
        if state.filling:
            state.backlog.append(publication)
            return
        if state.offset >= 0:
            if publication.epoch != state.epoch:
                self._spawn_fill(state, publication)
                return
            if publication.offset <= state.offset:
                self._metrics.drops.inc()
                return
            if publication.offset != state.offset + 1:
                self._spawn_fill(state, publication)
                return
        self._dispatch(state, publication)

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
        for state in list(self._channels.values()):
            if state.offset >= 0 and not state.filling:
                self._spawn_fill(state, None)

    # -- delivery --------------------------------------------------------------------------

    def _dispatch(self, state: _Channel, pub: Publication) -> None:
        state.offset = pub.offset
        state.epoch = pub.epoch
        frame = self._encode(pub)
        live = state.live
        for sub in live:
            sub.deliver(frame)
        delivered = len(live)
        if state.skip:
            for sub, start in list(state.skip.items()):
                if pub.offset > start:
                    del state.skip[sub]
                    live[sub] = None
                    sub.deliver(frame)
                    delivered += 1
        if state.pending:
            for pending in state.pending.values():
                if len(pending.buffer) < self._pending_limit:
                    pending.buffer.append(pub)
                else:
                    pending.lost = True
        if delivered:
            self._metrics.deliveries.inc(delivered)
            self._metrics.latency.observe(max(0.0, time.time() - pub.time))

    def _lose(self, state: _Channel, position: StreamPosition) -> None:
        """Tell everyone on ``state`` that publications up to ``position`` are gone."""
        self._metrics.gaps.labels("lost").inc()
        log.warning(
            "publications lost, subscribers told to resync",
            extra={"channel": state.name, "offset": position.offset},
        )
        state.offset, state.epoch = position.offset, position.epoch
        for sub in list(state.live) + list(state.skip):
            sub.lost(state.name, position)
        for pending in state.pending.values():
            pending.lost = True

    def _spawn_fill(self, state: _Channel, trigger: Publication | None) -> None:
        state.filling = True
        if trigger is not None:
            state.backlog.append(trigger)
        self._spawn(self._fill(state))

    async def _fill(self, state: _Channel) -> None:
        """Deliver what the live stream skipped, from history, then the buffered backlog."""
        stale_epoch_checked = False
        try:
            while True:
                try:
                    hist = await self.broker.history(state.name, state.options, since=state.offset)
                    if hist.position.epoch != state.epoch:
                        # A new stream: our offset means nothing in it, take all it has.
                        hist = await self.broker.history(state.name, state.options, since=0)
                except Exception:
                    log.warning("history refill failed; retrying", extra={"channel": state.name})
                    await asyncio.sleep(0.5)
                    continue
                position = hist.position
                pubs = [p for p in hist.publications if p.epoch == position.epoch]
                start = state.offset if position.epoch == state.epoch else 0
                if pubs and pubs[0].offset != start + 1:
                    self._lose(state, StreamPosition(pubs[0].offset - 1, position.epoch))
                elif not pubs and (position.offset > start or position.epoch != state.epoch):
                    self._lose(state, position)
                elif position.epoch != state.epoch:
                    self._lose(state, StreamPosition(0, position.epoch))
                elif pubs:
                    self._metrics.gaps.labels("filled").inc()
                for pub in pubs:
                    if pub.offset == state.offset + 1:
                        self._dispatch(state, pub)
                backlog, state.backlog = state.backlog, []
                gap = False
                for pub in backlog:
                    if gap:
                        state.backlog.append(pub)
                    elif pub.epoch != state.epoch and stale_epoch_checked:
                        # History was just read and is in another epoch: this one is stale.
                        self._metrics.drops.inc()
                    elif pub.epoch != state.epoch or pub.offset > state.offset + 1:
                        gap = True
                        stale_epoch_checked = pub.epoch != state.epoch
                        state.backlog.append(pub)
                    elif pub.offset == state.offset + 1:
                        self._dispatch(state, pub)
                if not gap:
                    return
        finally:
            state.filling = False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
