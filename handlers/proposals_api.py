"""Vendors' proposals: submit, list, read, and move through the state machine.

The rules (visibility, who may move a proposal where, the live events) are in
:mod:`services.marketplace.proposals`; this module parses, calls and shapes.

``PUT /api/v1/proposals/{id}`` is the same status change as ``PUT .../{id}/status`` for the
Arena marketplace clients, which send ``{"status": ...}`` to the proposal's own URL.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from handlers import keys
from handlers.auth_context import require_principal
from handlers.errors import json_response
from handlers.http_cache import IF_MATCH, expected_version, versioned_response
from handlers.openapi import describe
from handlers.paging import decode_cursor, page_body, path_uuid
from handlers.validation import parse_body, query_params
from services.marketplace import proposals as service
from services.marketplace.models import (
    ProposalCreate,
    ProposalOut,
    ProposalPage,
    ProposalQuery,
    ProposalStatusChange,
)
from services.marketplace.requests import require_role

TAGS = ("proposals",)


@describe(
    summary="Submit a proposal to a request",
    tags=TAGS,
    body=ProposalCreate,
    responses={201: ProposalOut},
    errors=(403, 404, 409),
    path_formats={"id": "uuid"},
)
async def create_proposal(request: web.Request) -> web.Response:
    """Vendors answer an open request once; each answer names one of its requirements."""
    principal = require_principal(request)
    require_role(principal, "vendor")  # before reading the body: 403 beats 400
    request_id = path_uuid(request)
    body = await parse_body(request, ProposalCreate)
    row = await service.create_proposal(
        request.app[keys.pool], request.app.get(keys.relay), principal, request_id, body
    )
    location = f"/api/v1/proposals/{row.id}"
    return versioned_response(ProposalOut.json_of(row), row.version, status=201, location=location)


@describe(
    summary="List proposals you may see",
    tags=TAGS,
    query=ProposalQuery,
    responses={200: ProposalPage},
)
async def list_proposals(request: web.Request) -> web.Response:
    """Your own proposals (vendors) and those answering your requests (buyers), newest first."""
    principal = require_principal(request)
    query = query_params(request, ProposalQuery)
    after = decode_cursor(query.cursor)
    rows = await service.list_proposals(request.app[keys.pool], principal, query, after)
    return json_response(
        page_body(rows, query.limit, lambda row: (row.created_at, row.id), ProposalOut.json_of)
    )


@describe(
    summary="Read a proposal",
    tags=TAGS,
    responses={200: ProposalOut},
    errors=(404,),
    path_formats={"id": "uuid"},
)
async def get_proposal(request: web.Request) -> web.Response:
    """The proposal, with its version in the ``ETag`` header."""
    principal = require_principal(request)
    row = await service.get_proposal(request.app[keys.pool], principal, path_uuid(request))
    return versioned_response(ProposalOut.json_of(row), row.version)


async def _change_status(request: web.Request) -> web.Response:
    principal = require_principal(request)
    proposal_id = path_uuid(request)
    body = await parse_body(request, ProposalStatusChange)
    version = expected_version(request, body.version)
    row = await service.change_status(
        request.app[keys.pool],
        request.app.get(keys.relay),
        principal,
        proposal_id,
        body.status,
        version,
    )
    return versioned_response(ProposalOut.json_of(row), row.version)


#: What the two status-change routes (the same operation at two URLs) declare alike.
_STATUS_CHANGE: dict[str, Any] = {
    "tags": TAGS,
    "body": ProposalStatusChange,
    "responses": {200: ProposalOut},
    "errors": (403, 404, 409, 412),
    "headers": {"If-Match": IF_MATCH},
    "path_formats": {"id": "uuid"},
}


@describe(summary="Shortlist, reject, accept or withdraw a proposal", **_STATUS_CHANGE)
async def put_status(request: web.Request) -> web.Response:
    """Illegal transitions answer 409; a stale ``If-Match``/``version`` answers 412.

    Accepting requires the request to be open and awards it in the same transaction.
    """
    return await _change_status(request)


@describe(summary="Change a proposal's status (Arena marketplace clients)", **_STATUS_CHANGE)
async def put_proposal(request: web.Request) -> web.Response:
    """The same change as ``PUT /api/v1/proposals/{id}/status``, at the proposal's own URL:
    the body is ``{"status": ...}`` (``version`` or ``If-Match`` optional). Illegal transitions
    answer 409, a stale version 412; the change is published live like any other."""
    return await _change_status(request)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/requests/{id}/proposals", create_proposal)
    app.router.add_get("/api/v1/proposals", list_proposals)
    app.router.add_get("/api/v1/proposals/{id}", get_proposal)
    app.router.add_put("/api/v1/proposals/{id}", put_proposal)
    app.router.add_put("/api/v1/proposals/{id}/status", put_status)
