"""REST endpoints of analyses: parse, call :mod:`services.analysis.service`, shape the answer.

::

    POST   /api/v1/requests/{id}/analyses   start one (202); 429 when full
    GET    /api/v1/requests/{id}/analyses   list a request's analyses, newest first
    GET    /api/v1/analyses                 list the caller's analyses (admins: all), paged
    GET    /api/v1/analyses/{id}            status, text so far or final, usage, timings
    DELETE /api/v1/analyses/{id}            cancel a queued or running analysis

Who may do what is decided by the service (see its docstring); its domain errors become the
JSON error envelope in ``handlers.middlewares``.
"""

from __future__ import annotations

from aiohttp import web

from handlers import keys
from handlers.auth_context import require_principal
from handlers.errors import json_response
from handlers.openapi import describe
from handlers.paging import decode_cursor, page_body, path_uuid
from handlers.validation import parse_body, query_params
from services.analysis.models import (
    AnalysisList,
    AnalysisListQuery,
    AnalysisOut,
    AnalysisPage,
    AnalysisQuery,
    AnalysisStart,
)
from services.analysis.service import AnalysisService

TAGS = ("analyses",)


def _service(request: web.Request) -> AnalysisService:
    app = request.app
    return AnalysisService(app[keys.pool], app[keys.hub], app[keys.analysis_runner])


@describe(
    summary="Start an analysis of a request",
    tags=TAGS,
    body=AnalysisStart,
    responses={202: AnalysisOut},
    errors=(403, 404, 429),
    path_formats={"id": "uuid"},
)
async def start_analysis(request: web.Request) -> web.Response:
    """Queue an analysis; watch ``channel`` for ``start``, ``delta``, ``done``/``error`` events,
    subscribing from ``since`` to receive the stream from its first event.

    429 (with ``Retry-After``) when the server's queue is full or you already have as many
    analyses queued or running as allowed.
    """
    principal = require_principal(request)
    request_id = path_uuid(request)
    body = await parse_body(request, AnalysisStart)
    created = await _service(request).start(principal, request_id, body.kind, body.question)
    location = {"Location": f"/api/v1/analyses/{created.id}"}
    return json_response(created.to_json(), status=202, headers=location)


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
    items = await _service(request).list_for_request(principal, request_id, limit=query.limit)
    return json_response({"items": [item.to_json() for item in items]})


@describe(
    summary="List your analyses",
    tags=TAGS,
    query=AnalysisQuery,
    responses={200: AnalysisPage},
)
async def list_all_analyses(request: web.Request) -> web.Response:
    """The analyses of your requests (admins: every analysis), newest first, without their
    text; follow ``next_cursor`` for more. Filters combine with AND."""
    principal = require_principal(request)
    query = query_params(request, AnalysisQuery)
    rows = await _service(request).list_all(
        principal,
        kind=query.kind,
        status=query.status,
        request_id=query.request_id,
        after=decode_cursor(query.cursor),
        limit=query.limit + 1,
    )
    return json_response(
        page_body(rows, query.limit, lambda item: (item.created_at, item.id), AnalysisOut.to_json)
    )


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
    analysis = await _service(request).get(principal, path_uuid(request))
    return json_response(analysis.to_json())


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
    outcome = await _service(request).cancel(principal, path_uuid(request))
    return json_response(outcome.analysis.to_json(), status=200 if outcome.confirmed else 202)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/requests/{id}/analyses", start_analysis)
    app.router.add_get("/api/v1/requests/{id}/analyses", list_analyses)
    app.router.add_get("/api/v1/analyses", list_all_analyses)
    app.router.add_get("/api/v1/analyses/{id}", get_analysis)
    app.router.add_delete("/api/v1/analyses/{id}", cancel_analysis)
