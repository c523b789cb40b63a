"""Group commit: concurrent webhooks' alerts committed together in one transaction.

Each commit costs PostgreSQL a WAL flush (an fsync with the default ``synchronous_commit``),
which is most of its CPU per webhook. :class:`GroupCommit` lets up to ``max_flushes``
transactions run at once; alerts that arrive while they are busy wait and go into the next
transaction together (at most ``max_batch``). Nothing is delayed on purpose: a webhook that
finds a free slot is committed at once, alone. A group is one statement (one round trip, one
commit: :func:`~services.alerts.ingest.insert_many_with_created_events`); a webhook id repeated
inside it is stored once, and the repeats answer like any replay.

Guarantees, per webhook, as without grouping:

* :meth:`GroupCommit.insert` returns only after the transaction holding the alert and its
  outbox event committed (a 2xx still means durable).
* If the transaction fails, or the database is unreachable, every alert of it gets the
  exception (the handler answers 503) and nothing of it was committed, so nothing of it is
  published. (A connection lost while ``COMMIT`` is under way leaves the outcome unknown, as
  for a single statement; the sender's retry with the same ``webhook-id`` then finds the
  alert and gets 200.)
* If one alert's row fails (a deleted strategy, a deadlock between two groups that replay the
  same webhook ids), the group's statement is rolled back and each of its alerts is committed
  again alone, so only that alert gets its error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import asyncpg

from services.alerts.ingest import insert_many_with_created_events, store_alone
from services.outbox.relay import OutboxRelay
from storage import alerts
from storage.errors import UNAVAILABLE

log = logging.getLogger(__name__)


#: an alert, its caller's future and when it arrived (``time.perf_counter()``)
_Waiter = tuple[alerts.NewAlert, "asyncio.Future[alerts.InsertResult]", float]


class CommitTimings(Protocol):
    """Where a webhook's acknowledgement waits (the server passes Prometheus histograms)."""

    def waited(self, seconds: float) -> None:
        """One alert waited ``seconds`` from arriving to its group's transaction starting
        (for a free transaction slot, or for the group before it to be taken)."""

    def committed(self, seconds: float, size: int) -> None:
        """One group of ``size`` alerts took ``seconds``: a pooled connection, the statement
        and the commit (the flush to disk)."""


class GroupCommit:
    """Commits concurrent :class:`~storage.alerts.NewAlert`\\ s (with their outbox events)
    in shared transactions; see the module docstring."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        relay: OutboxRelay,
        *,
        max_batch: int = 64,
        max_flushes: int = 4,
        timings: CommitTimings | None = None,
    ) -> None:
        self._pool = pool
        self._relay = relay
        self._timings = timings
        self._max_batch = max_batch
        self._max_flushes = max_flushes
        #: waiting alerts by de-duplication window (0: by webhook id only); a group holds
        #: alerts of one window
        self._queues: dict[int, list[_Waiter]] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        #: transactions committed (for tests and metrics)
        self.transactions = 0
        #: alerts handed to :meth:`insert` whose outcome is not known yet
        self.waiting = 0

    async def insert(self, new: alerts.NewAlert, dedup_seconds: int = 0) -> alerts.InsertResult:
        """Insert ``new`` with its ``alert.created`` event unless it repeats an earlier alert
        (the same webhook id; without one and with ``dedup_seconds > 0``, an identical body of
        the strategy inside that window); returns once committed. Raises what the insert
        raises (``NotFound``, an ``UNAVAILABLE`` error...)."""
        future: asyncio.Future[alerts.InsertResult] = asyncio.get_running_loop().create_future()
        window = dedup_seconds if new.webhook_id is None and dedup_seconds > 0 else 0
        self._queues.setdefault(window, []).append((new, future, time.perf_counter()))
        if len(self._flushes) < self._max_flushes:
            task = asyncio.create_task(self._flush(), name="alerts-group-commit")
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        self.waiting += 1
        try:
            return await future
        finally:
            self.waiting -= 1

    async def _flush(self) -> None:
        while self._queues:
            window, queue = next(iter(self._queues.items()))
            batch = queue[: self._max_batch]
            del queue[: self._max_batch]
            if not queue:
                del self._queues[window]
            try:
                await self._commit(batch, window)
            except BaseException as exc:
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _commit(self, batch: list[_Waiter], window: int) -> None:
        outcomes: list[alerts.InsertResult | BaseException]
        news = [new for new, _, _ in batch]
        pending: list[int] | None = None
        started = time.perf_counter()
        if self._timings is not None:
            for _, _, arrived in batch:
                self._timings.waited(started - arrived)
        # While the relay of this process leads, it publishes the events as soon as they are
        # committed (below), so the commit sends no NOTIFY: see storage migration 0009.
        quiet = self._relay.leading
        async with self._pool.acquire() as conn:
            try:
                inserted = await _insert_group(conn, news, window, quiet)
                outcomes = list(inserted.results)
                pending = inserted.pending
            except UNAVAILABLE:
                raise
            except Exception:
                if len(batch) == 1:
                    raise
                # One row failed and took the others' work with it: each alone.
                log.info("group commit rolled back; committing alone", exc_info=True)
                outcomes = []
                for new in news:
                    try:
                        outcomes.append(await store_alone(conn, new, window))
                    except UNAVAILABLE:
                        raise
                    except Exception as exc:
                        outcomes.append(exc)
        self.transactions += 1
        if self._timings is not None:
            self._timings.committed(time.perf_counter() - started, len(batch))
        # Committed: hand the new events to the relay to publish at once (before answering,
        # so that a webhook sent after this answer is published after these); if it cannot
        # take them (or they were committed one by one), wake it to fetch them.
        events = [o.event for o in outcomes if isinstance(o, alerts.InsertResult) and o.event]
        if events:
            if not self._relay.hand_off(events, pending):
                # A quiet commit whose relay stopped leading meanwhile: tell the new leader.
                self._relay.kick(notify=quiet and not self._relay.leading)
        elif any(isinstance(o, alerts.InsertResult) and not o.duplicate for o in outcomes):
            self._relay.kick()
        for (_, future, _), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the request was cancelled meanwhile; its alert is stored
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def close(self) -> None:
        """Wait for the transactions in progress (at shutdown)."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._flushes, return_exceptions=True)


async def _insert_group(
    conn: asyncpg.Connection, news: list[alerts.NewAlert], window: int, quiet: bool
) -> alerts.InsertedMany:
    """One statement for the group (committed on its own); with body de-duplication, in a
    transaction that first takes the bodies' locks in key order (``BEGIN`` and the locks in
    one round trip, then the statement, then ``COMMIT``)."""
    locks = alerts.lock_dedup_many_statement(news) if window > 0 else ""
    if not locks:
        return await insert_many_with_created_events(conn, news, window, quiet=quiet)
    await conn.execute("BEGIN; " + locks)
    try:
        results = await insert_many_with_created_events(conn, news, window, quiet=quiet)
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return results
