"""What the analyses API does: start, list, read and cancel analyses, with their access rules.

Only the owner of the analysed request and admins may use an analysis. Starting someone else's
request is :class:`~services.errors.Forbidden`; an analysis of someone else's request is
:class:`~storage.errors.NotFound`, as if it did not exist. A full runner or a user at their
limit is :class:`~services.errors.RateLimited`; cancelling a finished analysis is
:class:`~services.errors.InvalidState`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid4

import asyncpg

from pubsub.broker import BrokerError
from pubsub.hub import Hub
from services.analysis.models import AnalysisOut, StreamStart
from services.analysis.runner import AnalysisRunner, Busy
from services.auth.principal import Principal
from services.channels import names
from services.errors import Forbidden, Invalid, InvalidState, RateLimited
from storage import analyses as store
from storage.analyses import Analysis
from storage.errors import NotFound

#: how long a cancel waits for an analysis running on another node to record its cancellation
REMOTE_CANCEL_WAIT = 3.0
#: what a client is told to wait before starting again when there is no room
RETRY_AFTER = 5


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The state after a cancel; ``confirmed`` is False while the running node has not
    recorded it yet."""

    analysis: AnalysisOut
    confirmed: bool


def may_use(principal: Principal, request_owner: UUID) -> bool:
    """Whether ``principal`` may analyse a request of ``request_owner`` and read its analyses."""
    return principal.is_admin or principal.user_id == str(request_owner)


class AnalysisService:
    """The analyses of every request, for one caller at a time."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        hub: Hub,
        runner: AnalysisRunner,
        *,
        remote_cancel_wait: float = REMOTE_CANCEL_WAIT,
    ) -> None:
        self._pool = pool
        self._hub = hub
        self._runner = runner
        self._remote_cancel_wait = remote_cancel_wait

    async def stream_start(self, analysis_id: UUID) -> StreamStart:
        """The position before the first event of the analysis' channel.

        Asking the broker creates the stream (and fixes its epoch) if needed, so it can be
        handed out before anything is published. Raises ``BrokerError``.
        """
        position = await self._hub.position(names.analysis(analysis_id))
        return StreamStart(offset=0, epoch=position.epoch)

    def current(self, analysis: Analysis) -> Analysis:
        """``analysis`` with the live state of this process when it runs here (fresher than
        the last checkpoint)."""
        live = self._runner.live(analysis.id)
        if live is None or analysis.status not in store.ACTIVE or live.seq < analysis.seq:
            return analysis
        return dataclasses.replace(
            analysis,
            status=live.status,
            text=live.text,
            seq=live.seq,
            first_token_at=analysis.first_token_at or live.first_token_at,
        )

    async def start(
        self, principal: Principal, request_id: UUID, kind: str, question: str | None = None
    ) -> AnalysisOut:
        """Queue an analysis of request ``request_id`` and launch it; ``question`` is what is
        asked for kind ``question`` (and only for it).

        Raises ``Invalid`` (a question missing or out of place), ``NotFound`` (no such
        request), ``Forbidden`` (someone else's), ``RateLimited`` (the runner is full or the
        caller has too many active analyses) and ``BrokerError``.
        """
        if (kind == "question") != (question is not None):
            problem = "required when kind is question" if question is None else "not allowed"
            raise Invalid("request validation failed", {"question": [problem]})
        async with self._pool.acquire() as conn:
            owner = await store.request_owner(conn, request_id)
        if not may_use(principal, owner):
            raise Forbidden("only the request's owner may analyse it")
        runner = self._runner
        try:
            runner.reserve()
        except Busy as exc:
            raise RateLimited(str(exc), RETRY_AFTER) from None
        analysis_id = uuid4()
        try:
            # Fix the stream's epoch before the row exists: a broker failure then leaves nothing.
            since = await self.stream_start(analysis_id)
            async with self._pool.acquire() as conn, conn.transaction():
                analysis = await store.create(
                    conn,
                    analysis_id=analysis_id,
                    request_id=request_id,
                    owner_id=UUID(principal.user_id),
                    kind=kind,
                    provider=runner.provider.name,
                    model=runner.provider.model,
                    node=runner.node,
                    per_user_limit=runner.config.per_user,
                    question=question,
                )
        except store.TooManyActive as exc:
            runner.release()
            raise RateLimited(str(exc), RETRY_AFTER) from None
        except BaseException:
            runner.release()
            raise
        runner.launch(analysis)
        return AnalysisOut.of(analysis, since=since)

    async def list_for_request(
        self, principal: Principal, request_id: UUID, *, limit: int
    ) -> list[AnalysisOut]:
        """The newest ``limit`` analyses of a request, without their text.

        Raises ``NotFound`` (no such request) and ``Forbidden`` (someone else's).
        """
        async with self._pool.acquire() as conn:
            owner = await store.request_owner(conn, request_id)
            if not may_use(principal, owner):
                raise Forbidden("only the request's owner may read its analyses")
            rows = await store.list_for_request(conn, request_id, limit=limit)
        return [AnalysisOut.of(self.current(row), with_text=False) for row in rows]

    async def list_all(
        self,
        principal: Principal,
        *,
        kind: str | None = None,
        status: str | None = None,
        request_id: UUID | None = None,
        after: tuple[datetime, UUID] | None = None,
        limit: int = 20,
    ) -> list[AnalysisOut]:
        """The caller's analyses (those of their requests; admins: all), newest first, without
        their text, strictly after the keyset position ``after``; at most ``limit``."""
        if principal.is_service:
            # A service (token or signed request) owns no request and may read no analysis
            # (``may_use``); its id is not a user id either.
            return []
        async with self._pool.acquire() as conn:
            rows = await store.list_analyses(
                conn,
                viewer_id=None if principal.is_admin else UUID(principal.user_id),
                kind=kind,
                status=status,
                request_id=request_id,
                after=after,
                limit=limit,
            )
        return [AnalysisOut.of(self.current(row), with_text=False) for row in rows]

    async def _readable(self, principal: Principal, analysis_id: UUID) -> Analysis:
        async with self._pool.acquire() as conn:
            analysis = await store.get(conn, analysis_id)
            owner = await store.request_owner(conn, analysis.request_id)
        if not may_use(principal, owner):
            raise NotFound("analysis")
        return analysis

    async def get(self, principal: Principal, analysis_id: UUID) -> AnalysisOut:
        """Status, text (final, or so far), usage, timings and where to replay the stream from.

        Raises ``NotFound`` (unknown, or of someone else's request).
        """
        analysis = await self._readable(principal, analysis_id)
        try:
            since: StreamStart | None = await self.stream_start(analysis.id)
        except BrokerError:
            since = None  # the text is still readable; only the replay is unavailable
        return AnalysisOut.of(self.current(analysis), since=since)

    async def cancel(self, principal: Principal, analysis_id: UUID) -> Cancelled:
        """Stop a queued or running analysis; its text so far is kept.

        Waits for the node running it to record the cancellation (at most
        ``remote_cancel_wait`` seconds when it runs elsewhere). Raises ``NotFound`` and
        ``InvalidState`` (it had already finished).
        """
        analysis = await self._readable(principal, analysis_id)
        if analysis.status not in store.ACTIVE:
            raise InvalidState(f"the analysis has already finished ({analysis.status})")
        local = await self._runner.cancel(analysis_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (0 if local else self._remote_cancel_wait)
        while True:
            async with self._pool.acquire() as conn:
                analysis = await store.get(conn, analysis_id)
            if analysis.status not in store.ACTIVE or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        confirmed = analysis.status not in store.ACTIVE
        return Cancelled(AnalysisOut.of(self.current(analysis)), confirmed)
