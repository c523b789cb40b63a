"""REST endpoints of analyses and the permission rule of the ``analysis`` channel namespace.

::

    POST   /api/v1/requests/{id}/analyses   start one (202); 429 when full
    GET    /api/v1/requests/{id}/analyses   list a request's analyses, newest first
    GET    /api/v1/analyses/{id}            status, text so far or final, usage, timings
    DELETE /api/v1/analyses/{id}            cancel a queued or running analysis

Only the owner of the analysed request and admins may use them (and watch ``analysis:{id}``).
Starting answers 404 for an unknown request and 403 for someone else's; an analysis of someone
else's request answers 404, as if it did not exist.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Literal
from uuid import UUID, uuid4

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from handlers import keys
from handlers.auth_context import require_principal
from handlers.errors import ApiError, json_response
from handlers.openapi import describe
from handlers.paging import path_uuid
from handlers.validation import parse_body, query_params
from pubsub.broker import BrokerError
from services.analysis.runner import Busy
from services.auth.principal import Principal
from services.channels import names
from storage import analyses as store
from storage.analyses import Analysis

TAGS = ("analyses",)
#: how long DELETE waits for an analysis running on another node to record its cancellation
REMOTE_CANCEL_WAIT = 3.0


class AnalysisStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["compare_proposals", "summarize_request"] = Field(
        description="compare_proposals: ranked, cited comparison; summarize_request: summary"
    )


class StreamStart(BaseModel):
    offset: int
    epoch: str


class AnalysisCreated(BaseModel):
    id: UUID
    request_id: UUID
    kind: str
    channel: str = Field(description="Subscribe to it to watch the text stream")
    since: StreamStart = Field(
        description="Subscribe with this position to receive the stream from its first event"
    )
    status: str
    provider: str = Field(description="anthropic, or offline when no API key is configured")
    model: str


class AnalysisError(BaseModel):
    code: str
    message: str


class AnalysisTimings(BaseModel):
    queued_ms: int | None = Field(description="From creation to start")
    first_token_ms: int | None = Field(description="From start to the first text")
    duration_ms: int | None = Field(description="From start to the end")


class AnalysisOut(BaseModel):
    id: UUID
    request_id: UUID
    owner_id: UUID = Field(description="Who started it")
    kind: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    channel: str
    since: StreamStart | None = Field(
        description="Subscribe with it to replay the stream from the start (if still in history)"
    )
    provider: str
    model: str
    text: str | None = Field(description="Final text, or the text so far; omitted in lists")
    text_chars: int
    seq: int = Field(description="Delta events included in the text")
    usage: dict[str, Any] | None
    stop_reason: str | None
    error: AnalysisError | None
    created_at: datetime
    started_at: datetime | None
    first_token_at: datetime | None
    finished_at: datetime | None
    timings: AnalysisTimings


class AnalysisList(BaseModel):
    items: list[AnalysisOut]


class AnalysisListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000)


async def stream_start(app: web.Application, channel: str) -> dict[str, Any]:
    """``{"offset": 0, "epoch": ...}``: the position before the first event of ``channel``.

    Asking the broker for the position creates the stream (and fixes its epoch) if needed, so
    it can be handed out before anything is published. Raises ``BrokerError``.
    """
    position = await app[keys.hub].position(channel)
    return {"offset": 0, "epoch": position.epoch}


def analysis_json(
    request: web.Request,
    analysis: Analysis,
    *,
    with_text: bool = True,
    since: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An analysis as the API shows it, with the live text when it runs in this process."""
    status, text, seq = analysis.status, analysis.text, analysis.seq
    first_token_at = analysis.first_token_at
    live = request.app[keys.analysis_runner].live(analysis.id)
    if live is not None and analysis.status in store.ACTIVE and live.seq >= seq:
        status, text, seq = live.status, live.text, live.seq
        first_token_at = first_token_at or live.first_token_at
    error = None
    if analysis.error_code is not None:
        error = {"code": analysis.error_code, "message": analysis.error_message or ""}
    return {
        "id": analysis.id,
        "request_id": analysis.request_id,
        "owner_id": analysis.owner_id,
        "kind": analysis.kind,
        "status": status,
        "channel": names.analysis(analysis.id),
        "since": since,
        "provider": analysis.provider,
        "model": analysis.model,
        "text": text if with_text else None,
        "text_chars": len(text),
        "seq": seq,
        "usage": analysis.usage,
        "stop_reason": analysis.stop_reason,
        "error": error,
        "created_at": analysis.created_at,
        "started_at": analysis.started_at,
        "first_token_at": first_token_at,
        "finished_at": analysis.finished_at,
        "timings": {
            "queued_ms": _ms(analysis.created_at, analysis.started_at),
            "first_token_ms": _ms(analysis.started_at, first_token_at),
            "duration_ms": _ms(analysis.started_at, analysis.finished_at),
        },
    }


def _may_use(principal: Principal, request_owner: UUID) -> bool:
    return principal.is_admin or principal.user_id == str(request_owner)


async def _readable(request: web.Request, principal: Principal, analysis_id: UUID) -> Analysis:
    async with request.app[keys.pool].acquire() as conn:
        analysis = await store.get(conn, analysis_id)
        owner = await store.request_owner(conn, analysis.request_id)
    if not _may_use(principal, owner):
        raise ApiError(404, "not found")
    return analysis


@describe(
    summary="Start an analysis of a request",
    tags=TAGS,
    body=AnalysisStart,
    responses={202: AnalysisCreated},
    errors=(403, 404, 429),
    path_formats={"id": "uuid"},
)
async def start_analysis(request: web.Request) -> web.Response:
    """Queue an analysis; watch ``channel`` for ``start``, ``delta``, ``done``/``error`` events.

    429 (with ``Retry-After``) when the server's queue is full or you already have as many
    analyses queued or running as allowed.
    """
    principal = require_principal(request)
    request_id = path_uuid(request)
    body = await parse_body(request, AnalysisStart)
    app = request.app
    pool = app[keys.pool]
    async with pool.acquire() as conn:
        owner = await store.request_owner(conn, request_id)
    if not _may_use(principal, owner):
        raise ApiError(403, "only the request's owner may analyse it")
    runner = app[keys.analysis_runner]
    config = app[keys.config].analysis
    try:
        runner.reserve()
    except Busy as exc:
        raise ApiError(429, str(exc), headers={"Retry-After": "5"}) from None
    analysis_id = uuid4()
    try:
        # Fix the stream's epoch before the row exists: a broker failure then leaves nothing.
        since = await stream_start(app, names.analysis(analysis_id))
        async with pool.acquire() as conn, conn.transaction():
            analysis = await store.create(
                conn,
                analysis_id=analysis_id,
                request_id=request_id,
                owner_id=UUID(principal.user_id),
                kind=body.kind,
                provider=runner.provider.name,
                model=runner.provider.model,
                node=runner.node,
                per_user_limit=config.per_user,
            )
    except store.TooManyActive as exc:
        runner.release()
        raise ApiError(429, str(exc), headers={"Retry-After": "5"}) from None
    except BaseException:
        runner.release()
        raise
    runner.launch(analysis)
    created = {
        "id": analysis.id,
        "request_id": analysis.request_id,
        "kind": analysis.kind,
        "channel": names.analysis(analysis.id),
        "since": since,
        "status": analysis.status,
        "provider": analysis.provider,
        "model": analysis.model,
    }
    location = {"Location": f"/api/v1/analyses/{analysis.id}"}
    return json_response(created, status=202, headers=location)


@describe(
    summary="List the analyses of a request",
    tags=TAGS,
    query=AnalysisListQuery,
    responses={200: AnalysisList},
    errors=(403, 404),
    path_formats={"id": "uuid"},
)
async def list_analyses(request: web.Request) -> web.Response:
    """Newest first, without their text (read one analysis for it)."""
    principal = require_principal(request)
    request_id = path_uuid(request)
    query = query_params(request, AnalysisListQuery)
    async with request.app[keys.pool].acquire() as conn:
        owner = await store.request_owner(conn, request_id)
        if not _may_use(principal, owner):
            raise ApiError(403, "only the request's owner may read its analyses")
        items = await store.list_for_request(conn, request_id, limit=query.limit)
    return json_response({"items": [analysis_json(request, a, with_text=False) for a in items]})


@describe(
    summary="Read an analysis",
    tags=TAGS,
    responses={200: AnalysisOut},
    errors=(404,),
    path_formats={"id": "uuid"},
)
async def get_analysis(request: web.Request) -> web.Response:
    """Status, the final text (or the text so far while it runs), usage and timings."""
    principal = require_principal(request)
    analysis = await _readable(request, principal, path_uuid(request))
    try:
        since = await stream_start(request.app, names.analysis(analysis.id))
    except BrokerError:
        since = None  # the text is still readable here; only the replay is unavailable
    return json_response(analysis_json(request, analysis, since=since))


@describe(
    summary="Cancel an analysis",
    tags=TAGS,
    responses={200: AnalysisOut, 202: AnalysisOut},
    errors=(404, 409),
    path_formats={"id": "uuid"},
)
async def cancel_analysis(request: web.Request) -> web.Response:
    """Stop a queued or running analysis; the text so far is kept and it ends ``cancelled``.

    200 once the cancellation is recorded; 202 when the node running it has not confirmed yet;
    409 when it had already finished.
    """
    principal = require_principal(request)
    analysis_id = path_uuid(request)
    analysis = await _readable(request, principal, analysis_id)
    if analysis.status not in store.ACTIVE:
        raise ApiError(409, f"the analysis has already finished ({analysis.status})")
    runner = request.app[keys.analysis_runner]
    pool = request.app[keys.pool]
    local = await runner.cancel(analysis_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (0 if local else REMOTE_CANCEL_WAIT)
    while True:
        async with pool.acquire() as conn:
            analysis = await store.get(conn, analysis_id)
        if analysis.status not in store.ACTIVE or loop.time() >= deadline:
            break
        await asyncio.sleep(0.05)
    status = 202 if analysis.status in store.ACTIVE else 200
    return json_response(analysis_json(request, analysis), status=status)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/requests/{id}/analyses", start_analysis)
    app.router.add_get("/api/v1/requests/{id}/analyses", list_analyses)
    app.router.add_get("/api/v1/analyses/{id}", get_analysis)
    app.router.add_delete("/api/v1/analyses/{id}", cancel_analysis)
