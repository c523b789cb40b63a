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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from pubsub.broker import Broker, HistoryResult, Publication, PublishResult, StreamPosition
from pubsub.metrics import HubMetrics
from pubsub.namespaces import ChannelName, NamespaceOptions, parse, parse_channel

if TYPE_CHECKING:  # presence imports the hub; the hub only names the entry type
    from pubsub.presence import PresenceEntry

log = logging.getLogger(__name__)


#: handles one decoded control message (a JSON object with ``op``)
ControlHandler = Callable[[dict[str, Any]], None]


class SubscriptionCancelled(Exception):
    """The subscriber was unsubscribed while its subscribe was still in progress."""


class Encoder(Protocol):
    """How one wire protocol (over one transport framing) encodes what the hub delivers.

    The hub groups a channel's subscribers by encoder and calls each method at most once per
    publication or event per encoder, so encoders are long-lived objects (one per protocol and
    framing in the process) compared by identity.
    """

    def publication(self, pub: Publication) -> bytes:
        """The bytes a subscriber receives for ``pub``."""
        ...

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        """The bytes of a ``join`` or ``leave`` event in ``channel``."""
        ...


class Subscriber(Protocol):
    """A local receiver of publications (a WebSocket connection). Methods must not block."""

    def deliver(self, frame: bytes) -> None:
        """Queue bytes made by the subscriber's encoder for sending."""

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
    encoder: Encoder
    buffer: list[Publication] = field(default_factory=list)
    lost: bool = False


@dataclass(slots=True)
class _Channel:
    name: str
    options: NamespaceOptions
    #: live subscribers grouped by encoder (one group per wire protocol; empty groups removed)
    live: dict[Encoder, dict[Subscriber, None]] = field(default_factory=dict)
    pending: dict[Subscriber, _Pending] = field(default_factory=dict)
    #: subscribers that go live once the stream passes the offset given, with their encoder
    skip: dict[Subscriber, tuple[int, Encoder]] = field(default_factory=dict)
    offset: int = -1  # newest offset delivered; -1 while unknown
    epoch: str = ""
    filling: bool = False
    backlog: list[Publication] = field(default_factory=list)
    release: asyncio.TimerHandle | None = None

    def empty(self) -> bool:
        return not (self.live or self.pending or self.skip)

    def go_live(self, sub: Subscriber, encoder: Encoder) -> None:
        group = self.live.get(encoder)
        if group is None:
            group = self.live[encoder] = {}
        group[sub] = None

    def receiving(self) -> int:
        """Subscribers that receive live publications (live or catching up)."""
        return sum(len(group) for group in self.live.values()) + len(self.skip)


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
        options = self.options(channel)
        pending = _Pending(self._encoder if encoder is None else encoder)
        async with self._locks(channel):
            state = self._channels.get(channel)
            if state is None:
                state = _Channel(channel, options)
                self._channels[channel] = state
                state.pending[sub] = pending
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
                state.pending[sub] = pending
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
            # live stream is behind this subscriber: wait for it
            state.skip[sub] = (cursor, pending.encoder)
        else:
            state.go_live(sub, pending.encoder)
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
        found = state.skip.pop(sub, None) is not None
        for encoder, group in state.live.items():
            if sub in group:
                del group[sub]
                if not group:
                    del state.live[encoder]
                found = True
                break
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

    def deliver_presence(self, channel: str, kind: str, entry: PresenceEntry) -> int:
        """Hand a ``join``/``leave`` event to every local subscriber of ``channel`` that is
        receiving live publications, encoded once per encoder; returns how many got it."""
        state = self._channels.get(channel)
        if state is None:
            return 0
        frames: dict[Encoder, bytes] = {}
        for encoder, group in state.live.items():
            frame = frames[encoder] = encoder.presence(kind, channel, entry)
            for sub in group:
                sub.deliver(frame)
        for sub, (_, encoder) in state.skip.items():
            frame_or_none = frames.get(encoder)
            if frame_or_none is None:
                frame_or_none = frames[encoder] = encoder.presence(kind, channel, entry)
            sub.deliver(frame_or_none)
        return state.receiving()

    def subscriber_count(self, channel: str) -> int:
        """Local subscribers of ``channel`` (live, catching up or subscribing)."""
        state = self._channels.get(channel)
        return 0 if state is None else state.receiving() + len(state.pending)

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
        self.on_resubscribed(list(self._channels))

    def on_resubscribed(self, channels: list[str]) -> None:
        """Refill ``channels``: their upstream subscription was re-made (a Redis Cluster slot
        moved, or its node's connection came back)."""
        for name in channels:
            state = self._channels.get(name)
            if state is not None and state.offset >= 0 and not state.filling:
                self._spawn_fill(state, None)

    # -- delivery --------------------------------------------------------------------------

    def _dispatch(self, state: _Channel, pub: Publication) -> None:
        state.offset = pub.offset
        state.epoch = pub.epoch
        delivered = 0
        # Subscribers catching up need the frames of this publication too (rare).
        frames: dict[Encoder, bytes] | None = {} if state.skip else None
        # One group per wire protocol in use (usually one): encode once, write to all of them.
        for encoder, group in state.live.items():
            frame = encoder.publication(pub)
            if frames is not None:
                frames[encoder] = frame
            for sub in group:
                sub.deliver(frame)
            delivered += len(group)
        if frames is not None:
            delivered += self._dispatch_skipped(state, pub, frames)
        if state.pending:
            for pending in state.pending.values():
                if len(pending.buffer) < self._pending_limit:
                    pending.buffer.append(pub)
                else:
                    pending.lost = True
        if delivered:
            self._metrics.deliveries.inc(delivered)
            self._metrics.latency.observe(max(0.0, time.time() - pub.time))

    def _dispatch_skipped(
        self, state: _Channel, pub: Publication, frames: dict[Encoder, bytes]
    ) -> int:
        """Move the subscribers the stream has caught up with to live and deliver ``pub`` to
        them; ``frames`` holds the encodings made for the live groups (reused, so ``pub`` is
        encoded at most once per encoder)."""
        delivered = 0
        for sub, (start, encoder) in list(state.skip.items()):
            if pub.offset <= start:
                continue
            del state.skip[sub]
            frame = frames.get(encoder)
            if frame is None:
                frame = frames[encoder] = encoder.publication(pub)
            state.go_live(sub, encoder)
            sub.deliver(frame)
            delivered += 1
        return delivered

    def _lose(self, state: _Channel, position: StreamPosition) -> None:
        """Tell everyone on ``state`` that publications up to ``position`` are gone."""
        self._metrics.gaps.labels("lost").inc()
        log.warning(
            "publications lost, subscribers told to resync",
            extra={"channel": state.name, "offset": position.offset},
        )
        state.offset, state.epoch = position.offset, position.epoch
        subs = [sub for group in state.live.values() for sub in group]
        for sub in subs + list(state.skip):
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
