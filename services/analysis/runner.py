"""Running analyses: admission, concurrency, streaming to the channel, persistence, cancellation.

Admission happens in two steps so that neither limit can be raced past:

1. :meth:`AnalysisRunner.reserve` (synchronous, per process) refuses when ``concurrency``
   analyses run and ``queue_size`` wait already (``Busy`` → 429);
2. ``storage.analyses.create`` counts the user's active analyses under a per-user advisory lock
   (``TooManyActive`` → 429), across every node.

Each analysis is one task: wait for a slot, mark ``running``, publish ``start``, stream the
provider's text through a :class:`~services.analysis.coalescer.Coalescer` as ``delta`` events,
store the outcome, then publish ``done`` or ``error``. The final event is published only after
the outcome is committed, so a watcher that sees ``done`` can read the same text over REST.

A maintenance task checkpoints partial text, refreshes the heartbeat of every local analysis
and fails analyses whose process stopped refreshing them (a crash) after :data:`LEASE`
seconds; the same sweep runs at startup. Shutdown cancels local analyses and records them as
``failed``/``interrupted``. Cancelling an analysis another node runs goes over the broker's
control channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge

from pubsub.broker import BrokerError
from pubsub.hub import Hub
from services.analysis.coalescer import Coalescer
from services.analysis.providers import (
    CANCELLED,
    INTERNAL,
    INTERRUPTED,
    TIMEOUT,
    Completion,
    Provider,
    ProviderError,
)
from services.channels import names
from services.config import AnalysisConfig
from storage import analyses as store
from storage.analyses import Analysis
from storage.errors import NotFound

log = logging.getLogger(__name__)

#: seconds without a heartbeat after which an active analysis is considered abandoned
LEASE = 15.0
#: seconds between checkpoints and heartbeats
CHECKPOINT_INTERVAL = 1.0
#: characters that trigger a flush before the timer
FLUSH_CHARS = 2048
#: seconds shutdown waits for cancelled analyses to record their state
CLOSE_TIMEOUT = 5.0
PUBLISH_ATTEMPTS = 3
CONTROL_OP = "analysis.cancel"

_MESSAGES = {
    CANCELLED: "the analysis was cancelled",
    INTERRUPTED: "the server running this analysis stopped",
}


class Busy(Exception):
    """No room: every slot and queue place is taken, or the runner is shutting down."""


@dataclass(eq=False, slots=True)
class _Job:
    analysis: Analysis
    state: str = "queued"
    parts: list[str] = field(default_factory=list)
    seq: int = 0
    saved_seq: int = 0
    events: int = 0
    first_token_at: datetime | None = None
    cancel_reason: str | None = None
    task: asyncio.Task[None] | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(frozen=True, slots=True)
class LiveState:
    """The freshest state of an analysis running in this process."""

    status: str
    text: str
    seq: int
    first_token_at: datetime | None


class AnalysisRunner:
    """Runs analyses of this process; see the module docstring for the whole life cycle."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        hub: Hub,
        config: AnalysisConfig,
        provider: Provider,
        *,
        registry: CollectorRegistry | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        lease: float = LEASE,
    ) -> None:
        self.provider = provider
        self.config = config
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pool = pool
        self._hub = hub
        self._slots = asyncio.Semaphore(config.concurrency)
        self._jobs: dict[uuid.UUID, _Job] = {}
        #: every analysis task, including those recording their outcome (no longer in _jobs)
        self._tasks: set[asyncio.Task[None]] = set()
        self._reserved = 0
        self._closing = False
        self._checkpoint_interval = checkpoint_interval
        self._lease = lease
        self._maintenance: asyncio.Task[None] | None = None
        self._finished = Counter(
            "arena_analyses_total",
            "Analyses finished, by provider and status",
            ["provider", "status"],
            registry=registry,
        )
        self._active = Gauge(
            "arena_analyses_active",
            "Analyses queued or running in this process",
            ["state"],
            registry=registry,
            multiprocess_mode="liveall",
        )

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Fail analyses abandoned by a crashed process and start the maintenance task."""
        self._hub.add_control_handler(CONTROL_OP, self._on_control)
        try:
            await self._sweep()
        except Exception:
            log.exception("analysis startup sweep failed")
        self._maintenance = asyncio.create_task(self._maintain(), name="analysis-maintenance")

    async def close(self) -> None:
        """Refuse new work, cancel local analyses (recorded as interrupted), release the
        provider."""
        self._closing = True
        jobs = [job for job in self._jobs.values() if job.task is not None]
        for job in jobs:
            job.cancel_reason = job.cancel_reason or INTERRUPTED
            assert job.task is not None
            job.task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_TIMEOUT)
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self.provider.close()
        log.info("analysis runner stopped", extra={"interrupted": len(jobs)})

    # -- admission -------------------------------------------------------------------------

    def reserve(self) -> None:
        """Hold a place for an analysis about to be created; raises :class:`Busy`.

        Follow with :meth:`launch` or :meth:`release`.
        """
        if self._closing:
            raise Busy("the server is shutting down")
        if len(self._jobs) + self._reserved >= self.config.concurrency + self.config.queue_size:
            raise Busy("too many analyses are running or queued; try again shortly")
        self._reserved += 1

    def release(self) -> None:
        """Give back a place taken by :meth:`reserve` that will not be used."""
        self._reserved -= 1

    def launch(self, analysis: Analysis) -> None:
        """Start the task of a freshly created (``queued``) analysis on a reserved place."""
        self._reserved -= 1
        job = _Job(analysis)
        self._jobs[analysis.id] = job
        self._active.labels("queued").inc()
        job.task = asyncio.create_task(self._execute(job), name=f"analysis-{analysis.id}")
        self._tasks.add(job.task)
        job.task.add_done_callback(self._tasks.discard)

    # -- queries and cancellation ----------------------------------------------------------

    def live(self, analysis_id: uuid.UUID) -> LiveState | None:
        """The in-memory state of a local active analysis (fresher than its checkpoint)."""
        job = self._jobs.get(analysis_id)
        if job is None:
            return None
        return LiveState(job.state, job.text, job.seq, job.first_token_at)

    async def cancel(self, analysis_id: uuid.UUID, *, wait: float = 5.0) -> bool:
        """Cancel an analysis; returns True when it ran here and has finished recording.

        An analysis running elsewhere is asked to stop over the broker's control channel.
        """
        job = self._jobs.get(analysis_id)
        if job is None or job.task is None:
            message = {"id": str(analysis_id), "from": self.node}
            await self._hub.publish_control(CONTROL_OP, message)
            return False
        job.cancel_reason = job.cancel_reason or CANCELLED
        job.task.cancel()
        await asyncio.wait([job.task], timeout=wait)
        return job.task.done()

    def _on_control(self, message: dict[str, Any]) -> None:
        if message.get("from") == self.node:
            return
        try:
            analysis_id = uuid.UUID(str(message.get("id")))
        except ValueError:
            return
        job = self._jobs.get(analysis_id)
        if job is not None and job.task is not None:
            job.cancel_reason = job.cancel_reason or CANCELLED
            job.task.cancel()

    # -- one analysis ----------------------------------------------------------------------

    async def _execute(self, job: _Job) -> None:
        analysis = job.analysis
        coalescer: Coalescer | None = None
        outcome: tuple[str, Completion | None, ProviderError | None]
        try:
            async with self._slots:
                async with self._pool.acquire() as conn:
                    if not await store.mark_running(conn, analysis.id):
                        return  # finished meanwhile (cancelled, or swept as abandoned)
                self._set_state(job, "running")
                start: dict[str, Any] = {
                    "type": "start",
                    "kind": analysis.kind,
                    "provider": analysis.provider,
                    "model": analysis.model,
                }
                if analysis.question is not None:
                    start["question"] = analysis.question
                await self._publish(job, start)
                async with asyncio.timeout(self.config.timeout):
                    async with self._pool.acquire() as conn:
                        data = await store.load_input(conn, analysis.request_id)
                    coalescer = Coalescer(
                        lambda text: self._flush(job, text),
                        interval=self.config.flush_interval,
                        max_chars=FLUSH_CHARS,
                    )

                    def on_text(text: str, coalescer: Coalescer = coalescer) -> None:
                        if job.first_token_at is None:
                            job.first_token_at = datetime.now(UTC)
                        coalescer.add(text)

                    completion = await self.provider.stream(
                        analysis.kind, data, on_text, question=analysis.question
                    )
                    await coalescer.close()
            outcome = ("done", completion, None)
        except asyncio.CancelledError:
            if job.cancel_reason is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            code = job.cancel_reason
            outcome = (
                "cancelled" if code == CANCELLED else "failed",
                None,
                ProviderError(code, _MESSAGES[code]),
            )
        except TimeoutError:
            await self._drain(coalescer)
            message = f"the analysis took longer than {self.config.timeout:g} seconds"
            outcome = ("failed", None, ProviderError(TIMEOUT, message))
        except ProviderError as exc:
            await self._drain(coalescer)
            outcome = ("failed", None, exc)
        except NotFound:
            outcome = ("failed", None, ProviderError(INTERNAL, "the request no longer exists"))
        except Exception:
            log.exception("analysis failed", extra={"analysis_id": str(analysis.id)})
            outcome = ("failed", None, ProviderError(INTERNAL, "the analysis failed unexpectedly"))
        finally:
            if coalescer is not None:
                await coalescer.abort()
            self._forget(job)
        await self._finish(job, *outcome)

    async def _drain(self, coalescer: Coalescer | None) -> None:
        # Text received before a provider failure is real output: publish and keep it.
        if coalescer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(coalescer.close(), CLOSE_TIMEOUT)

    async def _flush(self, job: _Job, text: str) -> None:
        job.parts.append(text)
        job.seq += 1
        await self._publish(job, {"type": "delta", "seq": job.seq, "text": text})

    async def _finish(
        self,
        job: _Job,
        status: str,
        completion: Completion | None,
        error: ProviderError | None,
    ) -> None:
        analysis = job.analysis
        event: dict[str, Any]
        try:
            async with self._pool.acquire() as conn:
                stored = await store.finish(
                    conn,
                    analysis.id,
                    status=status,
                    text=job.text,
                    seq=job.seq,
                    first_token_at=job.first_token_at,
                    usage=completion.usage if completion else None,
                    stop_reason=completion.stop_reason if completion else None,
                    error_code=error.code if error else None,
                    error_message=error.message if error else None,
                )
        except Exception:
            log.exception("could not store an analysis result", extra={"id": str(analysis.id)})
            status, stored = "failed", True
            error = ProviderError(INTERNAL, "the result could not be stored")
        if not stored:
            return  # someone else (a sweep) recorded the outcome and published it
        self._finished.labels(analysis.provider, status).inc()
        if error is None and completion is not None:
            event = {
                "type": "done",
                "seq": job.seq,
                "usage": completion.usage,
                "stop_reason": completion.stop_reason,
            }
        else:
            assert error is not None
            event = {"type": "error", "seq": job.seq, "code": error.code, "message": error.message}
        log.info(
            "analysis finished",
            extra={"analysis_id": str(analysis.id), "status": status, "deltas": job.seq},
        )
        try:
            await self._publish(job, event)
        except BrokerError:
            log.warning("could not publish the end of an analysis", extra={"id": str(analysis.id)})

    async def _publish(self, job: _Job, event: dict[str, Any]) -> None:
        # The idempotency key makes a retry after an ambiguous broker failure safe: a watcher
        # never sees the same event twice.
        job.events += 1
        key = f"{job.analysis.id}:{job.events}"
        channel = names.analysis(job.analysis.id)
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                await self._hub.publish(channel, event, idempotency_key=key)
                return
            except BrokerError:
                if attempt == PUBLISH_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)

    def _set_state(self, job: _Job, state: str) -> None:
        self._active.labels(job.state).dec()
        job.state = state
        self._active.labels(state).inc()

    def _forget(self, job: _Job) -> None:
        if self._jobs.pop(job.analysis.id, None) is not None:
            self._active.labels(job.state).dec()

    # -- maintenance -----------------------------------------------------------------------

    async def _maintain(self) -> None:
        ticks = 0
        sweep_every = max(1, round(self._lease / 3 / self._checkpoint_interval))
        while True:
            await asyncio.sleep(self._checkpoint_interval)
            ticks += 1
            try:
                await self._checkpoint()
                if ticks % sweep_every == 0:
                    await self._sweep()
            except Exception:
                log.warning("analysis maintenance failed", exc_info=True)

    async def _checkpoint(self) -> None:
        jobs = list(self._jobs.values())
        if not jobs:
            return
        async with self._pool.acquire() as conn:
            for job in jobs:
                if job.state == "running" and job.seq > job.saved_seq:
                    seq = job.seq
                    await store.checkpoint(
                        conn,
                        job.analysis.id,
                        text=job.text,
                        seq=seq,
                        first_token_at=job.first_token_at,
                    )
                    job.saved_seq = seq
            await store.heartbeat(conn, [job.analysis.id for job in jobs])

    async def _sweep(self) -> None:
        async with self._pool.acquire() as conn:
            failed = await store.fail_abandoned(
                conn, lease_seconds=self._lease, code=INTERRUPTED, message=_MESSAGES[INTERRUPTED]
            )
        for analysis_id in failed:
            log.warning("abandoned analysis failed", extra={"analysis_id": str(analysis_id)})
            event = {"type": "error", "code": INTERRUPTED, "message": _MESSAGES[INTERRUPTED]}
            with contextlib.suppress(BrokerError):
                await self._hub.publish(
                    names.analysis(analysis_id), event, idempotency_key=f"{analysis_id}:abandoned"
                )
