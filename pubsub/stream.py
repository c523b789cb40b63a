"""One channel's local stream: who receives it, where it is, and how it recovers.

A :class:`ChannelStream` is the per-channel state machine behind :class:`pubsub.hub.Hub`: the
newest offset and epoch delivered, the live subscribers grouped by encoder, the subscribers still
subscribing (their live publications buffered) or catching up (skipped until the stream passes
their cursor), and the refill from history when the live stream jumps. The hub keeps the index of
channels, the per-channel locks and the broker; the stream reads history only through the
:class:`StreamSource` the hub gives it (the hub is the only door to the broker).

The guarantees are those listed in :mod:`pubsub.hub`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pubsub.broker import HistoryResult, Publication, StreamPosition
from pubsub.metrics import HubMetrics
from pubsub.namespaces import NamespaceOptions

if TYPE_CHECKING:  # presence imports the hub; the stream only names the entry type
    from pubsub.presence import PresenceEntry

log = logging.getLogger(__name__)


class SubscriptionCancelled(Exception):
    """The subscriber was unsubscribed while its subscribe was still in progress."""


class Encoder(Protocol):
    """How one wire protocol (over one transport framing) encodes what the hub delivers.

    The hub groups a channel's subscribers by encoder and calls each method at most once per
    publication or event per encoder, so encoders are long-lived objects (one per protocol and
    framing in the process) compared by identity.

    An encoder may also have a ``fanout(subscribers, frame)`` attribute, a function that must
    behave exactly like ``sub.deliver(frame)`` for each subscriber in order; the hub then hands
    each publication to a live group with one call (the transport's own, faster loop). And a
    ``fanout_many(subscribers, frames)`` attribute, which must behave like ``fanout`` of each
    of ``frames`` in turn (the same bytes, in the same order, for each subscriber): the hub
    uses it for publications that arrived together (:meth:`ChannelStream.on_publications`), so
    a transport can write them with one call per subscriber.
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


class StreamSource(Protocol):
    """Where a stream reads what the live feed did not bring (the hub, over its broker)."""

    async def read_history(
        self,
        channel: str,
        options: NamespaceOptions,
        *,
        since: int | None = None,
        limit: int | None = None,
    ) -> HistoryResult:
        """Publications of ``channel`` after offset ``since`` (at most ``limit``)."""
        ...

    async def read_position(self, channel: str, options: NamespaceOptions) -> StreamPosition:
        """The newest offset and epoch of ``channel``."""
        ...


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """The outcome of :meth:`pubsub.hub.Hub.subscribe`.

    ``publications`` are the recovered ones (send them in the reply); ``tail`` are live
    publications that arrived during the subscribe and must be sent right after the reply.
    ``recovered`` is None when no recovery was asked for. ``position`` is where the subscriber
    stands once it has the reply (after ``publications``): the tail, and then the live stream,
    continue at ``position.offset + 1``.
    """

    position: StreamPosition
    recovered: bool | None
    publications: list[Publication]
    tail: list[Publication]


def _fan_out(encoder: Encoder, group: dict[Subscriber, None], frame: bytes) -> None:
    """``frame`` to every subscriber of ``group``, with the encoder's ``fanout`` if it has one."""
    fanout = getattr(encoder, "fanout", None)
    if fanout is not None:
        fanout(group, frame)
    else:
        for sub in group:
            sub.deliver(frame)


@dataclass(slots=True)
class _Pending:
    encoder: Encoder
    buffer: list[Publication] = field(default_factory=list)
    lost: bool = False


class ChannelStream:
    """The local stream of one channel: ordered, gap-free delivery to its subscribers.

    ``spawn`` runs background work (the history refill) under the hub's supervision.
    """

    __slots__ = (
        "_metrics",
        "_pending_limit",
        "_source",
        "_spawn",
        "backlog",
        "epoch",
        "filling",
        "live",
        "name",
        "offset",
        "options",
        "pending",
        "skip",
    )

    def __init__(
        self,
        name: str,
        options: NamespaceOptions,
        *,
        source: StreamSource,
        metrics: HubMetrics,
        pending_limit: int,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.name = name
        self.options = options
        #: live subscribers grouped by encoder (one group per wire protocol; empty groups removed)
        self.live: dict[Encoder, dict[Subscriber, None]] = {}
        #: subscribers still subscribing, with the live publications buffered for them
        self.pending: dict[Subscriber, _Pending] = {}
        #: subscribers that go live once the stream passes the offset given, with their encoder
        self.skip: dict[Subscriber, tuple[int, Encoder]] = {}
        self.offset = -1  # newest offset delivered; -1 while unknown
        self.epoch = ""
        self.filling = False
        self.backlog: list[Publication] = []
        self._source = source
        self._metrics = metrics
        self._pending_limit = pending_limit
        self._spawn = spawn

    # -- membership ------------------------------------------------------------------------

    def empty(self) -> bool:
        """No subscriber at all (live, catching up or subscribing)."""
        return not (self.live or self.pending or self.skip)

    def receiving(self) -> int:
        """Subscribers that receive live publications (live or catching up)."""
        return sum(len(group) for group in self.live.values()) + len(self.skip)

    def subscriber_count(self) -> int:
        """Subscribers of any kind (live, catching up or subscribing)."""
        return self.receiving() + len(self.pending)

    def add_pending(self, sub: Subscriber, encoder: Encoder) -> None:
        """Start buffering live publications for ``sub`` (its subscribe is in progress)."""
        self.pending[sub] = _Pending(encoder)

    def drop_pending(self, sub: Subscriber) -> None:
        """Forget ``sub``'s subscribe in progress (it failed)."""
        self.pending.pop(sub, None)

    def remove(self, sub: Subscriber) -> bool:
        """Remove ``sub``; returns False when it was not subscribed (nor subscribing)."""
        found = self.skip.pop(sub, None) is not None
        for encoder, group in self.live.items():
            if sub in group:
                del group[sub]
                if not group:
                    del self.live[encoder]
                found = True
                break
        if found:
            self._metrics.subscriptions.dec()
        elif self.pending.pop(sub, None) is not None:
            found = True  # still subscribing: complete() notices and gives up
        return found

    def _go_live(self, sub: Subscriber, encoder: Encoder) -> None:
        group = self.live.get(encoder)
        if group is None:
            group = self.live[encoder] = {}
        group[sub] = None

    def _still_pending(self, sub: Subscriber) -> _Pending:
        pending = self.pending.get(sub)
        if pending is None:
            raise SubscriptionCancelled(self.name)
        return pending

    # -- subscribing -----------------------------------------------------------------------

    async def complete(self, sub: Subscriber, since: StreamPosition | None) -> SubscribeResult:
        """Finish the subscribe of pending ``sub``: read where it starts (recovering from
        ``since`` when asked and allowed), merge what was buffered meanwhile, and put it live.
        Raises ``SubscriptionCancelled`` when ``sub`` was unsubscribed meanwhile."""
        options = self.options
        recovering = since is not None and options.recovery
        recovered: bool | None = None
        publications: list[Publication] = []
        if recovering:
            assert since is not None
            hist = await self._source.read_history(self.name, options, since=since.offset)
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
        elif self.offset >= 0 and not self.filling:
            # The stream is live: every publication after its offset reaches it (a hole is
            # refilled from history, a loss is told), so this subscriber can start there, as if it
            # had been live all along, without a broker read.
            position = StreamPosition(self.offset, self.epoch)
            cursor = position.offset
        else:
            position = await self._source.read_position(self.name, options)
            cursor = position.offset
        pending = self._still_pending(sub)
        # Make the buffered live stream contiguous with ``cursor``: anything between the cursor
        # and the first buffered publication was dropped as already-delivered by the channel
        # before this subscriber joined, so fetch it from history (a rare, bounded loop).
        while self.offset >= 0 and self.epoch == position.epoch and not pending.lost:
            first = pending.buffer[0].offset if pending.buffer else self.offset + 1
            if cursor + 1 >= first:
                break
            missing = await self._source.read_history(
                self.name, options, since=cursor, limit=first - cursor - 1
            )
            pending = self._still_pending(sub)
            got = [p for p in missing.publications if p.epoch == position.epoch]
            if not got or got[0].offset != cursor + 1:
                pending.lost = True
                break
            publications.extend(got)
            cursor = got[-1].offset
        del self.pending[sub]
        if self.offset < 0:
            self.offset, self.epoch = cursor, position.epoch
        tail = [p for p in pending.buffer if p.offset > cursor and p.epoch == position.epoch]
        if pending.lost and recovered:
            recovered = False
        if self.offset < cursor and self.epoch == position.epoch:
            # live stream is behind this subscriber: wait for it
            self.skip[sub] = (cursor, pending.encoder)
        else:
            self._go_live(sub, pending.encoder)
        self._metrics.subscriptions.inc()
        # The position the reply reports: the tail follows it (the next publication the client
        # receives has offset ``cursor + 1``), so a client that starts from the reply's offset
        # and drops offsets at or below it as duplicates keeps the tail.
        return SubscribeResult(
            StreamPosition(cursor, position.epoch), recovered, publications, tail
        )

    # -- live feed -------------------------------------------------------------------------

    def on_publication(self, publication: Publication) -> None:
        """A publication from the broker's live feed: deliver it, drop a duplicate, or refill
        the hole before it from history."""
        self._metrics.publications.inc()
        if self._follows(publication):
            self._dispatch(publication)

    def on_publications(self, publications: list[Publication]) -> None:
        """Publications of this channel that arrived together from the live feed, in the
        order received: what one :meth:`on_publication` call each does, except that each run
        of them that follows on from the stream goes to the subscribers in one fan-out pass
        (:meth:`_dispatch_many`). A duplicate is dropped and a hole is refilled from history
        before anything after it is delivered, as for single publications."""
        self._metrics.publications.inc(len(publications))
        run: list[Publication] = []
        for pub in publications:
            if run:
                last = run[-1]
                if pub.offset == last.offset + 1 and pub.epoch == last.epoch:
                    run.append(pub)
                    continue
                self._dispatch_run(run)
                run = []
            if self._follows(pub):
                run.append(pub)
        if run:
            self._dispatch_run(run)

    def _follows(self, publication: Publication) -> bool:
        """Whether ``publication`` is the next one to deliver; if not, it is kept for after a
        refill in progress, dropped as a duplicate, or starts a refill of the hole before it."""
        if self.filling:
            self.backlog.append(publication)
            return False
        if self.offset >= 0:
            if publication.epoch != self.epoch:
                self._spawn_fill(publication)
                return False
            if publication.offset <= self.offset:
                self._metrics.drops.inc()
                return False
            if publication.offset != self.offset + 1:
                self._spawn_fill(publication)
                return False
        return True

    def on_reconnected(self) -> None:
        """The live feed was interrupted: refill whatever was published meanwhile."""
        if self.offset >= 0 and not self.filling:
            self._spawn_fill(None)

    def deliver_presence(self, kind: str, entry: PresenceEntry) -> int:
        """Hand a ``join``/``leave`` event to every subscriber receiving live publications,
        encoded once per encoder; returns how many got it."""
        frames: dict[Encoder, bytes] = {}
        for encoder, group in self.live.items():
            frame = frames[encoder] = encoder.presence(kind, self.name, entry)
            for sub in group:
                sub.deliver(frame)
        for sub, (_, encoder) in self.skip.items():
            frame_or_none = frames.get(encoder)
            if frame_or_none is None:
                frame_or_none = frames[encoder] = encoder.presence(kind, self.name, entry)
            sub.deliver(frame_or_none)
        return self.receiving()

    # -- delivery --------------------------------------------------------------------------

    def _dispatch(self, pub: Publication) -> None:
        self.offset = pub.offset
        self.epoch = pub.epoch
        delivered = 0
        # Subscribers catching up need the frames of this publication too (rare).
        frames: dict[Encoder, bytes] | None = {} if self.skip else None
        # One group per wire protocol in use (usually one): encode once, write to all of them.
        for encoder, group in self.live.items():
            frame = encoder.publication(pub)
            if frames is not None:
                frames[encoder] = frame
            _fan_out(encoder, group, frame)
            delivered += len(group)
        if frames is not None:
            delivered += self._dispatch_skipped(pub, frames)
        if self.pending:
            self._buffer_pending(pub)
        if delivered:
            self._metrics.deliveries.inc(delivered)
            self._metrics.latency.observe(max(0.0, time.time() - pub.time))

    def _dispatch_run(self, pubs: list[Publication]) -> None:
        if len(pubs) == 1:
            self._dispatch(pubs[0])
        else:
            self._dispatch_many(pubs)

    def _dispatch_many(self, pubs: list[Publication]) -> None:
        """Deliver ``pubs``, consecutive offsets following the stream's, as :meth:`_dispatch`
        of each in turn would, but in one pass over each live group: an encoder with a
        ``fanout_many`` gets all of their frames in one call (one write per subscriber)."""
        if self.skip:
            # Subscribers catching up go live in the middle of the run (rare): one by one.
            for pub in pubs:
                self._dispatch(pub)
            return
        last = pubs[-1]
        self.offset = last.offset
        self.epoch = last.epoch
        delivered = 0
        for encoder, group in self.live.items():
            frames = [encoder.publication(pub) for pub in pubs]
            fanout_many = getattr(encoder, "fanout_many", None)
            if fanout_many is not None:
                fanout_many(group, frames)
            else:
                for frame in frames:
                    _fan_out(encoder, group, frame)
            delivered += len(group)
        if self.pending:
            for pub in pubs:
                self._buffer_pending(pub)
        if delivered:
            self._metrics.deliveries.inc(delivered * len(pubs))
            now = time.time()
            observe = self._metrics.latency.observe
            for pub in pubs:
                observe(max(0.0, now - pub.time))

    def _buffer_pending(self, pub: Publication) -> None:
        """Keep ``pub`` for the subscribers still subscribing (up to the pending limit)."""
        for pending in self.pending.values():
            if len(pending.buffer) < self._pending_limit:
                pending.buffer.append(pub)
            else:
                pending.lost = True

    def _dispatch_skipped(self, pub: Publication, frames: dict[Encoder, bytes]) -> int:
        """Move the subscribers the stream has caught up with to live and deliver ``pub`` to
        them; ``frames`` holds the encodings made for the live groups (reused, so ``pub`` is
        encoded at most once per encoder)."""
        delivered = 0
        for sub, (start, encoder) in list(self.skip.items()):
            if pub.offset <= start:
                continue
            del self.skip[sub]
            frame = frames.get(encoder)
            if frame is None:
                frame = frames[encoder] = encoder.publication(pub)
            self._go_live(sub, encoder)
            sub.deliver(frame)
            delivered += 1
        return delivered

    def _lose(self, position: StreamPosition) -> None:
        """Tell every subscriber that publications up to ``position`` are gone."""
        self._metrics.gaps.labels("lost").inc()
        log.warning(
            "publications lost, subscribers told to resync",
            extra={"channel": self.name, "offset": position.offset},
        )
        self.offset, self.epoch = position.offset, position.epoch
        subs = [sub for group in self.live.values() for sub in group]
        for sub in subs + list(self.skip):
            sub.lost(self.name, position)
        for pending in self.pending.values():
            pending.lost = True

    def _spawn_fill(self, trigger: Publication | None) -> None:
        self.filling = True
        if trigger is not None:
            self.backlog.append(trigger)
        self._spawn(self._fill())

    async def _fill(self) -> None:
        """Deliver what the live stream skipped, from history, then the buffered backlog."""
        stale_epoch_checked = False
        try:
            while True:
                try:
                    hist = await self._source.read_history(
                        self.name, self.options, since=self.offset
                    )
                    if hist.position.epoch != self.epoch:
                        # A new stream: our offset means nothing in it, take all it has.
                        hist = await self._source.read_history(self.name, self.options, since=0)
                except Exception:
                    log.warning("history refill failed; retrying", extra={"channel": self.name})
                    await asyncio.sleep(0.5)
                    continue
                position = hist.position
                pubs = [p for p in hist.publications if p.epoch == position.epoch]
                start = self.offset if position.epoch == self.epoch else 0
                if pubs and pubs[0].offset != start + 1:
                    self._lose(StreamPosition(pubs[0].offset - 1, position.epoch))
                elif not pubs and (position.offset > start or position.epoch != self.epoch):
                    self._lose(position)
                elif position.epoch != self.epoch:
                    self._lose(StreamPosition(0, position.epoch))
                elif pubs:
                    self._metrics.gaps.labels("filled").inc()
                for pub in pubs:
                    if pub.offset == self.offset + 1:
                        self._dispatch(pub)
                backlog, self.backlog = self.backlog, []
                gap = False
                for pub in backlog:
                    if gap:
                        self.backlog.append(pub)
                    elif pub.epoch != self.epoch and stale_epoch_checked:
                        # History was just read and is in another epoch: this one is stale.
                        self._metrics.drops.inc()
                    elif pub.epoch != self.epoch or pub.offset > self.offset + 1:
                        gap = True
                        stale_epoch_checked = pub.epoch != self.epoch
                        self.backlog.append(pub)
                    elif pub.offset == self.offset + 1:
                        self._dispatch(pub)
                if not gap:
                    return
        finally:
            self.filling = False
