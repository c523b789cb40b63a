"""Publishes transactional-outbox events to channels, in order, at least once.

Exactly one relay publishes at a time across all instances (a PostgreSQL advisory lock held
on a dedicated connection), so events of one channel go out in id order. Each publication
uses the idempotency key ``outbox:{id}``: if the relay dies between publishing and marking,
the next one re-publishes and the broker drops the repeat. Events carry ``event_id`` so
clients can drop duplicates that outlive the idempotency window.

If the broker is down, the relay stops at the first event it cannot publish and retries
later: nothing is skipped and order is kept, however long the outage lasts. Any other failure
(a bug, not an outage) is retried the same way ``max_attempts`` times; then the event is set
aside with an error log naming it, so one poisoned event cannot hold back every later one.
Its row stays in the ``outbox`` table (marked published) and can be re-published by id.

**Hand-off.** A writer that has just committed events (the webhook group commit) can give
them to the relay of its own process with :meth:`OutboxRelay.hand_off`: if this relay is the
leader, it publishes them at once (one ``publish_many`` per channel, the same idempotency keys)
without waiting for the ``NOTIFY`` and the fetch, and a round soon after marks them
published (with its fetch, in one statement; ``MARK_DELAY`` after the first unmarked one, so one
``UPDATE`` marks many). The writer's commit sends no ``NOTIFY`` while this relay leads (it is
``quiet``: storage migration ``0009``), so PostgreSQL does not serialise those commits on its
notification lock and the relay is not woken for a round per commit. The
outbox stays the durable record: an event handed off but not published (a crash, a broker
outage, a lost leadership) is still unpublished in the table, and a round publishes it (a
repeat of one that did go out is dropped by its idempotency key).

Order is kept: the writer also passes the events that were unpublished when its statement
started (committed before its events), and a hand-off publishes only once each of them is
published by this relay or goes out with it, ahead of it. Hand-offs go out in the order they
came, as many together as may (one ``publish_many`` per channel); the first one that may not
waits (with those behind it) for up to three rounds, whose lanes stop at events handed off and
not published yet, then leaves its events to the rounds. Rounds and hand-offs publish one at
a time (one lock). So an event committed
before another one was written still goes out before it; events of concurrent transactions go
out in the order they reach the relay (as before: in id order only among what one fetch saw).
A relay that is not the leader refuses every hand-off (the caller kicks it; the leader's
round publishes the events after its ``NOTIFY``; a quiet commit whose relay lost the lead
meanwhile sends that ``NOTIFY`` itself, and a leader that crashed leaves its events to the next
one's first round).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from typing import Any

import asyncpg

from pubsub.broker import BrokerError
from pubsub.hub import Hub
from pubsub.namespaces import InvalidChannel
from storage import outbox
from storage.connections import mark_session_state

log = logging.getLogger(__name__)

#: How many published event ids a relay remembers (to accept hand-offs behind them).
_KNOWN_LIMIT = 8192
#: How many rounds a hand-off waits for an earlier event before it leaves its events to them.
_HAND_OFF_ROUNDS = 3
#: Seconds after a hand-off before the relay marks its events published, and how many unmarked
#: events wake it at once: marking is one UPDATE (a commit) for what piled up meanwhile.
MARK_DELAY = 0.1
MARK_BATCH = 256


class OutboxRelay:
    """Background task body; run :meth:`run` as a task and cancel it to stop."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        hub: Hub,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 500,
        retry_delay: float = 0.5,
        max_attempts: int = 5,
    ) -> None:
        self._pool = pool
        self._hub = hub
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._retry_delay = retry_delay
        self._max_attempts = max_attempts
        #: failed attempts of events that failed with something other than a broker outage
        self._attempts: dict[int, int] = {}
        self._wakeup = asyncio.Event()
        #: the next batch, fetched with the last mark (None: fetch before the next round)
        self._prefetched: list[outbox.OutboxEvent] | None = None
        self.published = 0
        #: events set aside after ``max_attempts`` failures
        self.set_aside = 0
        #: whether this relay holds the leader lock (hand-offs are refused otherwise)
        self._leading = False
        #: one publisher at a time: a round's lanes or a hand-off (FIFO)
        self._publishing = asyncio.Lock()
        #: ids handed off and not published yet
        self._handed: set[int] = set()
        #: ids published by hand-off and not marked yet (the next round marks them)
        self._unmarked: set[int] = set()
        #: ids this relay published lately (insertion order; the oldest are forgotten)
        self._known: dict[int, None] = {}
        #: NOTIFYs on their way (see :meth:`kick`)
        self._notifying: set[asyncio.Task[None]] = set()
        #: wakes the relay to mark what hand-offs published (see :meth:`_mark_soon`)
        self._mark_timer: asyncio.TimerHandle | None = None
        #: hand-offs not published yet, in the order they came, and the task publishing them
        self._queue: collections.deque[_HandOff] = collections.deque()
        self._drainer: asyncio.Task[None] | None = None
        #: set (then replaced) when a round is over or a hand-off published, for hand-offs
        #: waiting for an earlier event
        self._progress = asyncio.Event()
        #: rounds so far (a hand-off waits for a few at most)
        self._rounds = 0
        #: events published by hand-off, and hand-offs refused (for tests and metrics)
        self.handed_off = 0
        self.refused = 0

    @property
    def leading(self) -> bool:
        """Whether this relay is the leader (publishes; takes hand-offs)."""
        return self._leading

    def kick(self, *, notify: bool = False) -> None:
        """Wake the relay now (called after a commit that wrote events); with ``notify``, also
        send the outbox's ``NOTIFY`` (in the background) for the leader in another process: the
        commit skipped it (``quiet``) while this relay led, and it no longer does."""
        self._wakeup.set()
        if notify:
            task = asyncio.create_task(self._notify(), name="outbox-notify")
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)

    async def _notify(self) -> None:
        try:
            await self._pool.execute("SELECT pg_notify($1, '')", outbox.NOTIFY_CHANNEL)
        except Exception:  # the leader's next poll finds the events all the same
            log.warning("outbox NOTIFY failed; the leader polls", exc_info=True)

    def hand_off(self, events: list[outbox.OutboxEvent], pending: list[int] | None) -> bool:
        """Publish ``events`` (just committed, in id order) at once; ``pending``: the events
        unpublished when they were written (None: too many to tell). Returns False, and does
        nothing, when the relay cannot take them (not the leader, or ``pending`` is None):
        the caller kicks the relay, whose round publishes them. A pending event this relay
        has not published holds them back until a hand-off or a round has (a few rounds at
        most; then the rounds publish them too). See the module docstring."""
        if not self._leading or pending is None or not events:
            self.refused += 1
            return False
        self._handed.update(e.id for e in events)
        self._queue.append(_HandOff(events, pending, self._rounds))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="outbox-hand-off")
        return True

    async def _drain(self) -> None:
        """Publish the hand-offs in the order they came, as many at once as may go (one
        ``publish_many`` per channel for all of them)."""
        while self._queue:
            async with self._publishing:
                if not self._leading:
                    self._leave(len(self._queue))
                    return
                taken: list[_HandOff] = []
                ahead: set[int] = set()
                for entry in self._queue:
                    if not all(i in self._known or i in ahead for i in entry.pending):
                        break
                    taken.append(entry)
                    ahead.update(e.id for e in entry.events)
                if taken:
                    todo = [e for t in taken for e in t.events if e.id not in self._known]
                    out = False
                    try:
                        out = not todo or await self._publish_now(todo)
                    finally:
                        self._leave(len(taken), all_out=out)
                    continue
                # An event committed before the first hand-off's is not out yet (it failed,
                # or came another way): wait for a round to publish it (a round's lanes stop
                # at events handed off); after a few rounds, leave this one to them too.
                if self._rounds - self._queue[0].rounds >= _HAND_OFF_ROUNDS:
                    self._leave(1)
                    continue
                progress = self._progress
            self._wakeup.set()
            await progress.wait()

    def _leave(self, count: int, *, all_out: bool = False) -> None:
        """Drop the first ``count`` hand-offs (done, or left to the rounds) and wake the relay:
        at once if some of their events did not go out (its round publishes them), else soon
        (:meth:`_mark_soon`) to mark what went out."""
        for _ in range(count):
            entry = self._queue.popleft()
            self._handed.difference_update(e.id for e in entry.events)
        if all_out:
            self._mark_soon()
        else:
            self._wakeup.set()

    def _mark_soon(self) -> None:
        """Wake the relay to mark hand-offs' events published after :data:`MARK_DELAY`, or at
        once when :data:`MARK_BATCH` wait: one ``UPDATE`` (one commit) for many webhooks, not
        one each. Until marked, an event is only at risk of being published again after a
        crash, which its idempotency key drops."""
        if len(self._unmarked) >= MARK_BATCH:
            self._wakeup.set()
        elif self._mark_timer is None:
            self._mark_timer = asyncio.get_running_loop().call_later(MARK_DELAY, self._marking)

    def _marking(self) -> None:
        self._mark_timer = None
        self._wakeup.set()

    async def _publish_now(self, todo: list[outbox.OutboxEvent]) -> bool:
        """One ``publish_many`` per channel; what goes out is marked by the next round, what
        does not is left to it. Returns whether everything went out."""
        lanes: dict[str, list[outbox.OutboxEvent]] = {}
        for event in todo:
            for channel in event.channels:
                lanes.setdefault(channel, []).append(event)
        channels = list(lanes)
        outcomes = await asyncio.gather(
            *(
                self._hub.publish_many(
                    channel,
                    [({**e.payload, "event_id": e.id}, f"outbox:{e.id}") for e in lanes[channel]],
                )
                for channel in channels
            ),
            return_exceptions=True,
        )
        failed: set[str] = set()
        for channel, outcome in zip(channels, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed.add(channel)
                if not isinstance(outcome, Exception):
                    raise outcome
                log.warning(
                    "outbox hand-off failed; the relay publishes the events",
                    exc_info=outcome if not isinstance(outcome, BrokerError) else None,
                    extra={"event_id": lanes[channel][0].id},
                )
        published = [e.id for e in todo if failed.isdisjoint(e.channels)]
        self._remember(published)
        self._unmarked.update(published)
        self.handed_off += len(published)
        self._progressed()
        return not failed

    def _progressed(self) -> None:
        """Wake the hand-offs waiting for an earlier event to go out."""
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    def _end_round(self) -> None:
        self._rounds += 1
        self._progressed()

    def _remember(self, ids: list[int]) -> None:
        known = self._known
        for event_id in ids:
            known[event_id] = None
        excess = len(known) - _KNOWN_LIMIT
        if excess > 0:
            for event_id in list(itertools.islice(known, excess)):
                del known[event_id]

    def _on_notify(self, *_: Any) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        """Relay forever: take the lock, listen for new events, publish; retry on any failure."""
        while True:
            try:
                async with self._pool.acquire() as conn:
                    # A session lock and a LISTEN: the pool must reset them on release.
                    mark_session_state(conn)
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", outbox.RELAY_LOCK_ID):
                        try:
                            await self._lead(conn)
                        finally:
                            with contextlib.suppress(Exception):
                                await conn.execute(
                                    "SELECT pg_advisory_unlock($1)", outbox.RELAY_LOCK_ID
                                )
            except asyncio.CancelledError:
                self._stopped()
                raise
            except Exception:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Stopping, and the way out failed (giving back the connection, say): the
                    # cancellation became this error. Still stop, or shutdown waits forever.
                    log.warning("outbox relay failed while stopping", exc_info=True)
                    self._stopped()
                    raise asyncio.CancelledError from None
                log.warning("outbox relay failed; retrying", exc_info=True)
            # A standby (or failed) relay only retries leadership; kicks are for the leader, and
            # waiting on them here would spin once one arrives.
            await asyncio.sleep(self._poll_interval)

    def _stopped(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
        if self._mark_timer is not None:
            self._mark_timer.cancel()
        for task in self._notifying:
            task.cancel()
        log.info(
            "outbox relay stopped",
            extra={
                "published": self.published,
                "handed_off": self.handed_off,
                "hand_offs_refused": self.refused,
            },
        )

    async def _lead(self, conn: asyncpg.Connection) -> None:
        await conn.add_listener(outbox.NOTIFY_CHANNEL, self._on_notify)
        self._prefetched = None
        self._leading = True
        try:
            while True:
                self._wakeup.clear()
                _, complete = await self.relay_once(conn)
                if complete and self._prefetched:
                    continue
                await self._wait(self._poll_interval if complete else self._retry_delay)
        finally:
            self._leading = False
            self._end_round()
            # Unmarked hand-offs stay unpublished in the table: the next leader publishes
            # them again (their idempotency keys drop the repeats).
            self._unmarked.clear()
            # On a connection the server ended, this drops the callback too (and gives the
            # connection back to the pool): see ArenaConnection.remove_listener.
            with contextlib.suppress(Exception):
                await conn.remove_listener(outbox.NOTIFY_CHANNEL, self._on_notify)

    async def _wait(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # races the event being set, and the relay then never stops (shutdown hangs on it).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()

    async def relay_once(self, conn: asyncpg.Connection) -> tuple[int, bool]:
        """Publish one batch; returns (events marked published, whether nothing stopped it).

        One statement fetches up to ``batch_size`` events and one marks the done ones and
        fetches the next batch (used by the next round, so a busy relay makes one database
        round trip per batch; an empty prefetch is fetched again, nothing is missed). Each
        channel of the batch is a lane that publishes its events in id order; lanes run
        concurrently, and a lane's events go to the broker together (one round trip for the
        Redis brokers). A failing event stops only its lane: later events of that channel wait
        (order), others go on. An event is done once every channel of it has published it (or
        it was set aside).
        """
        try:
            return await self._round(conn)
        finally:
            self._end_round()

    async def _round(self, conn: asyncpg.Connection) -> tuple[int, bool]:
        events, self._prefetched = self._prefetched, None
        marked_first = 0
        if not events:
            if self._unmarked:
                # Mark what hand-offs published and fetch, in one round trip.
                first = sorted(self._unmarked)
                events = await outbox.mark_published_and_fetch(conn, first, self._batch_size)
                self._unmarked.difference_update(first)
                self.published += len(first)
                marked_first = len(first)
            else:
                events = await outbox.fetch_unpublished(conn, self._batch_size)
        if not events and not self._unmarked:
            return marked_first, True
        round_ = _Round(dict(self._attempts), self._max_attempts)
        async with self._publishing:
            # Events published by hand-off are only marked (also those this fetch missed). A
            # lane stops at an event handed off but not published yet: that hand-off runs
            # next and wakes the relay, whose next round goes on (order, no repeats).
            handed = set(self._unmarked)
            todo = [e for e in events if e.id not in handed]
            lanes: dict[str, list[outbox.OutboxEvent]] = {}
            stopped: set[str] = set()
            for event in todo:
                if event.id in self._handed:
                    stopped.update(event.channels)
                for channel in event.channels:
                    if channel not in stopped:
                        lanes.setdefault(channel, []).append(event)
            await asyncio.gather(
                *(self._lane(channel, items, round_) for channel, items in lanes.items())
            )
            done = [e.id for e in todo if round_.handled.get(e.id, 0) == len(e.channels)]
            self._remember(done)
        for event_id, attempts in round_.failed.items():
            self._attempts[event_id] = attempts
        for event_id in done:
            self._attempts.pop(event_id, None)
        marked = done + sorted(handed)
        if marked:
            self._prefetched = await outbox.mark_published_and_fetch(conn, marked, self._batch_size)
            self._unmarked.difference_update(handed)
            self.published += len(marked)
        self.set_aside += len(round_.set_aside)
        return marked_first + len(marked), round_.complete

    async def _lane(self, channel: str, events: list[outbox.OutboxEvent], round_: _Round) -> None:
        """Publish ``events`` (all of ``channel``, in id order) in one broker round trip; if
        that fails other than by a broker outage, one by one, so that only the event that
        fails is retried (and set aside in the end)."""
        items = [({**e.payload, "event_id": e.id}, f"outbox:{e.id}") for e in events]
        try:
            await self._hub.publish_many(channel, items)
        except BrokerError:
            # Some may have gone out: the next round publishes them again, and their
            # idempotency keys make the broker drop the repeats.
            log.warning("broker unavailable; outbox events wait", extra={"event_id": events[0].id})
            round_.complete = False
            return
        except Exception:
            await self._lane_one_by_one(channel, events, round_)
            return
        for event in events:
            round_.handled[event.id] = round_.handled.get(event.id, 0) + 1

    async def _lane_one_by_one(
        self, channel: str, events: list[outbox.OutboxEvent], round_: _Round
    ) -> None:
        """Publish ``events`` one by one until one cannot go out."""
        for event in events:
            message = {**event.payload, "event_id": event.id}
            try:
                await self._hub.publish(channel, message, idempotency_key=f"outbox:{event.id}")
            except BrokerError:
                log.warning("broker unavailable; outbox events wait", extra={"event_id": event.id})
                round_.complete = False
                return
            except InvalidChannel:
                # A bad channel name is a bug in the writer; retrying cannot fix it.
                log.error("outbox event names an invalid channel", extra={"event_id": event.id})
            except Exception:
                attempts = round_.attempts.get(event.id, 0) + 1
                if attempts < round_.max_attempts:
                    round_.failed[event.id] = attempts
                    log.warning(
                        "outbox event failed; retrying",
                        exc_info=True,
                        extra={"event_id": event.id, "attempt": attempts},
                    )
                    round_.complete = False
                    return
                if event.id not in round_.set_aside:
                    round_.set_aside.add(event.id)
                    log.error(
                        "outbox event set aside after repeated failures",
                        exc_info=True,
                        extra={
                            "event_id": event.id,
                            "attempt": attempts,
                            "channels": event.channels,
                        },
                    )
            round_.handled[event.id] = round_.handled.get(event.id, 0) + 1


class _HandOff:
    """Events handed off together, the events unpublished before them, and the relay's round
    count when they came."""

    __slots__ = ("events", "pending", "rounds")

    def __init__(self, events: list[outbox.OutboxEvent], pending: list[int], rounds: int) -> None:
        self.events = events
        self.pending = pending
        self.rounds = rounds


class _Round:
    """What the lanes of one :meth:`OutboxRelay.relay_once` found out."""

    def __init__(self, attempts: dict[int, int], max_attempts: int) -> None:
        #: failed attempts before this round (read only while the lanes run)
        self.attempts = attempts
        self.max_attempts = max_attempts
        #: events that failed this round (not a broker outage) -> their attempt count
        self.failed: dict[int, int] = {}
        #: event id -> how many of its channels are done with it
        self.handled: dict[int, int] = {}
        self.set_aside: set[int] = set()
        self.complete = True
