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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from pubsub.broker import BrokerError
from pubsub.hub import Hub
from pubsub.namespaces import InvalidChannel
from storage import outbox
from storage.connections import mark_session_state

log = logging.getLogger(__name__)


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

    def kick(self) -> None:
        """Wake the relay now (called after a commit that wrote events)."""
        self._wakeup.set()

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
                raise
            except Exception:
                log.warning("outbox relay failed; retrying", exc_info=True)
            # A standby (or failed) relay only retries leadership; kicks are for the leader, and
            # waiting on them here would spin once one arrives.
            await asyncio.sleep(self._poll_interval)

    async def _lead(self, conn: asyncpg.Connection) -> None:
        await conn.add_listener(outbox.NOTIFY_CHANNEL, self._on_notify)
        self._prefetched = None
        try:
            while True:
                self._wakeup.clear()
                _, complete = await self.relay_once(conn)
                if complete and self._prefetched:
                    continue
                await self._wait(self._poll_interval if complete else self._retry_delay)
        finally:
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
        events, self._prefetched = self._prefetched, None
        if not events:
            events = await outbox.fetch_unpublished(conn, self._batch_size)
        if not events:
            return 0, True
        lanes: dict[str, list[outbox.OutboxEvent]] = {}
        for event in events:
            for channel in event.channels:
                lanes.setdefault(channel, []).append(event)
        round_ = _Round(dict(self._attempts), self._max_attempts)
        await asyncio.gather(
            *(self._lane(channel, items, round_) for channel, items in lanes.items())
        )
        for event_id, attempts in round_.failed.items():
            self._attempts[event_id] = attempts
        done = [e.id for e in events if round_.handled.get(e.id, 0) == len(e.channels)]
        for event_id in done:
            self._attempts.pop(event_id, None)
        if done:
            self._prefetched = await outbox.mark_published_and_fetch(conn, done, self._batch_size)
            self.published += len(done)
        self.set_aside += len(round_.set_aside)
        return len(done), round_.complete

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
