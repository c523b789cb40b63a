"""Vendors' proposals: submit, list, read, and move through the state machine.

A proposal is visible to its vendor, to the owner of the request it answers, and to admins
(404 for everyone else). The request's owner shortlists, rejects or accepts; the vendor
withdraws; anyone else who can see it gets 403. Accepting awards the request.

Events: full proposal details go to ``user:{owner_id}`` and ``user:{vendor_id}``; the shared
``proposals:{request_id}`` channel, which competing vendors may also read, only carries the
proposal's id, vendor and status so that no vendor learns another's price.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web

from handlers import keys
from handlers.auth_context import require_principal, require_role
from handlers.errors import ApiError, json_response
from handlers.openapi import describe
from handlers.paging import decode_cursor, path_uuid, split_page
from handlers.requests_api import (
    IF_MATCH,
    etag,
    expected_version,
    is_owner,
    kick_relay,
    record_request_event,
    viewer_id,
    visible_request,
)
from handlers.validation import parse_body, query_params
from services.auth.principal import Principal
from services.channels import names
from services.marketplace.models import (
    ProposalCreate,
    ProposalOut,
    ProposalPage,
    ProposalQuery,
    ProposalStatusChange,
)
from storage import outbox, proposals
from storage import requests as requests_db
from storage.errors import NotFound, StaleVersion

log = logging.getLogger(__name__)

TAGS = ("proposals",)

#: Target status -> who may move a proposal there.
_OWNER_MOVES = frozenset({"shortlisted", "rejected", "accepted"})
_VENDOR_MOVES = frozenset({"withdrawn"})


def proposal_json(row: proposals.Proposal) -> dict[str, Any]:
    """A proposal as the API shows it (JSON-ready)."""
    return ProposalOut.model_validate(dataclasses.asdict(row)).model_dump(mode="json")


async def record_proposal_event(
    conn: asyncpg.Connection,
    kind: str,
    row: proposals.Proposal,
    owner_id: UUID,
    **extra: Any,
) -> None:
    """Outbox events ``proposal.{kind}``: details to the two parties, a summary to the room."""
    base = {"type": f"proposal.{kind}", "request_id": str(row.request_id), **extra}
    summary = {"id": str(row.id), "vendor_id": str(row.vendor_id), "status": row.status}
    await outbox.add_event(conn, [names.proposals(row.request_id)], {**base, "proposal": summary})
    await outbox.add_event(
        conn,
        [names.user(owner_id), names.user(row.vendor_id)],
        {**base, "proposal": proposal_json(row)},
    )


async def visible_proposal(
    conn: asyncpg.Connection, principal: Principal, proposal_id: UUID, *, for_update: bool = False
) -> tuple[proposals.Proposal, requests_db.SoftwareRequest]:
    """The proposal and its request if the caller may see it; NotFound (404) otherwise."""
    row = await proposals.get(conn, proposal_id, for_update=for_update)
    parent = await requests_db.get(conn, row.request_id)
    if not (
        principal.is_privileged or principal.user_id in (str(row.vendor_id), str(parent.owner_id))
    ):
        raise NotFound("proposal")
    return row, parent


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
    require_role(principal, "vendor")
    request_id = path_uuid(request)
    body = await parse_body(request, ProposalCreate)
    async with request.app[keys.pool].acquire() as conn, conn.transaction():
        # Share-locking the request keeps it open (and present) until this commits.
        await conn.execute("SELECT 1 FROM requests WHERE id = $1 FOR SHARE", request_id)
        parent = await visible_request(conn, principal, request_id)
        if parent.status != "open":
            raise ApiError(409, f"the request is {parent.status}")
        if parent.deadline is not None and parent.deadline <= datetime.now(UTC):
            raise ApiError(409, "the request's deadline has passed")
        names = {r["name"] for r in parent.requirements}
        errors = {
            f"answers.{i}.requirement": ["names no requirement of this request"]
            for i, answer in enumerate(body.answers)
            if answer.requirement not in names
        }
        if errors:
            raise ApiError(400, "request validation failed", errors=errors)
        row = await proposals.create(
            conn,
            request_id=request_id,
            vendor_id=principal.user_id,
            price=body.price,
            currency=body.currency,
            summary=body.summary,
            answers=[a.model_dump() for a in body.answers],
        )
        await record_proposal_event(conn, "created", row, parent.owner_id)
    kick_relay(request)
    headers = {**etag(row.version), "Location": f"/api/v1/proposals/{row.id}"}
    return json_response(proposal_json(row), status=201, headers=headers)


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
    if query.mine and principal.is_service:
        return json_response({"items": [], "next_cursor": None})
    async with request.app[keys.pool].acquire() as conn:
        rows = await proposals.list_proposals(
            conn,
            viewer_id=viewer_id(principal),
            vendor_id=principal.user_id if query.mine else None,
            request_id=query.request_id,
            status=query.status,
            after=after,
            limit=query.limit + 1,
        )
    page, cursor = split_page(rows, query.limit, lambda row: (row.created_at, row.id))
    return json_response({"items": [proposal_json(row) for row in page], "next_cursor": cursor})


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
    proposal_id = path_uuid(request)
    async with request.app[keys.pool].acquire() as conn:
        row, _ = await visible_proposal(conn, principal, proposal_id)
    return json_response(proposal_json(row), headers=etag(row.version))


@describe(
    summary="Shortlist, reject, accept or withdraw a proposal",
    tags=TAGS,
    body=ProposalStatusChange,
    responses={200: ProposalOut},
    errors=(403, 404, 409, 412),
    headers={"If-Match": IF_MATCH},
    path_formats={"id": "uuid"},
)
async def put_status(request: web.Request) -> web.Response:
    """Illegal transitions answer 409; a stale ``If-Match``/``version`` answers 412.

    Accepting requires the request to be open and awards it in the same transaction.
    """
    principal = require_principal(request)
    proposal_id = path_uuid(request)
    body = await parse_body(request, ProposalStatusChange)
    version = expected_version(request, body.version)
    async with request.app[keys.pool].acquire() as conn, conn.transaction():
        current, _ = await visible_proposal(conn, principal, proposal_id)
        # Lock the request first, then the proposal: every writer takes them in this order.
        parent = await requests_db.get(conn, current.request_id, for_update=True)
        if body.status in _OWNER_MOVES and not is_owner(principal, parent.owner_id):
            raise ApiError(403, "only the request's owner may do this")
        if body.status in _VENDOR_MOVES and not (
            principal.is_admin or principal.user_id == str(current.vendor_id)
        ):
            raise ApiError(403, "only the vendor may withdraw a proposal")
        locked = await proposals.get(conn, proposal_id, for_update=True)
        if version is not None and locked.version != version:
            raise StaleVersion("proposal")
        if not proposals.can_transition(locked.status, body.status):
            raise ApiError(409, f"a {locked.status} proposal cannot become {body.status}")
        if body.status == "accepted" and parent.status != "open":
            raise ApiError(409, f"the request is {parent.status}")
        row, previous = await proposals.set_status(
            conn, proposal_id, body.status, expected_version=version
        )
        await record_proposal_event(
            conn, "status_changed", row, parent.owner_id, previous_status=previous
        )
        if body.status == "accepted":
            awarded = await requests_db.update(conn, parent.id, {"status": "awarded"})
            await record_request_event(conn, "updated", awarded)
    kick_relay(request)
    log.info(
        "proposal status changed",
        extra={
            "proposal_id": str(row.id),
            "request_id": str(row.request_id),
            "previous_status": previous,
            "status": row.status,
            "actor_id": principal.user_id,
        },
    )
    return json_response(proposal_json(row), headers=etag(row.version))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/requests/{id}/proposals", create_proposal)
    app.router.add_get("/api/v1/proposals", list_proposals)
    app.router.add_get("/api/v1/proposals/{id}", get_proposal)
    app.router.add_put("/api/v1/proposals/{id}/status", put_status)
