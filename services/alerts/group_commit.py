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

import asyncpg

from services.alerts.ingest import insert_many_with_created_events, insert_with_created_event
from services.outbox.relay import OutboxRelay
from storage import alerts
from storage.errors import UNAVAILABLE

log = logging.getLogger(__name__)


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
    ) -> None:
        self._pool = pool
        self._relay = relay
        self._max_batch = max_batch
        self._max_flushes = max_flushes
        self._queue: list[tuple[alerts.NewAlert, asyncio.Future[alerts.InsertResult]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        #: transactions committed (for tests and metrics)
        self.transactions = 0
        #: alerts handed to :meth:`insert` whose outcome is not known yet
        self.waiting = 0

    async def insert(self, new: alerts.NewAlert) -> alerts.InsertResult:
        """Insert ``new`` (idempotent by its webhook id) with its ``alert.created`` event;
        returns once committed. Body de-duplication is not supported here (it needs its lock
        first). Raises what the insert raises (``NotFound``, an ``UNAVAILABLE`` error...)."""
        future: asyncio.Future[alerts.InsertResult] = asyncio.get_running_loop().create_future()
        self._queue.append((new, future))
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
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            try:
                await self._commit(batch)
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _commit(
        self, batch: list[tuple[alerts.NewAlert, asyncio.Future[alerts.InsertResult]]]
    ) -> None:
        outcomes: list[alerts.InsertResult | BaseException]
        async with self._pool.acquire() as conn:
            if len(batch) == 1:
                outcomes = [await insert_with_created_event(conn, batch[0][0])]
            else:
                try:
                    outcomes = list(
                        await insert_many_with_created_events(conn, [new for new, _ in batch])
                    )
                except UNAVAILABLE:
                    raise
                except Exception:
                    # One statement failed and took the others' work with it: each alone.
                    log.info("group commit rolled back; committing alone", exc_info=True)
                    outcomes = []
                    for new, _ in batch:
                        try:
                            outcomes.append(await insert_with_created_event(conn, new))
                        except UNAVAILABLE:
                            raise
                        except Exception as exc:
                            outcomes.append(exc)
        self.transactions += 1
        if any(isinstance(o, alerts.InsertResult) and not o.duplicate for o in outcomes):
            self._relay.kick()
        for (_, future), outcome in zip(batch, outcomes, strict=True):
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
