"""``/api/v1/requests``: buyers' software requests (create, list, read, update, delete).

Visibility: owners and admins see a request; vendors see open requests and those they sent a
proposal to; anything else answers 404. Only the owner (or an admin) changes it (403).
Every change records its outbox event in the same transaction; the relay publishes it to
``proposals:{request_id}`` and ``user:{owner_id}``.
"""

from __future__ import annotations

import dataclasses
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
from handlers.validation import parse_body, query_params
from services.auth.principal import Principal
from services.channels import names
from services.marketplace.models import (
    RequestCreate,
    RequestOut,
    RequestPage,
    RequestPatch,
    RequestQuery,
)
from storage import outbox, proposals
from storage import requests as requests_db
from storage.errors import NotFound

TAGS = ("requests",)
IF_MATCH = 'Only act if the resource still has this version (ETag, e.g. "3")'

# -- helpers shared with proposals_api ------------------------------------------------------


def expected_version(request: web.Request, body_version: int | None) -> int | None:
    """The version the client read: ``If-Match`` (``"3"``, ``W/"3"``, ``3``) or the body's.

    ``If-Match: *`` and no precondition at all mean "whatever the current version is".
    A precondition that names no version of ours can never match, so it answers 412.
    """
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return body_version
    tag = header.strip().removeprefix("W/").strip('"')
    if not tag.isdigit() or len(tag) > 10:
        raise ApiError(412, "If-Match does not name a version of this resource")
    version = int(tag)
    if body_version is not None and body_version != version:
        raise ApiError(
            400,
            "If-Match and version disagree",
            errors={"version": ["does not match If-Match"]},
        )
    return version


def etag(version: int) -> dict[str, str]:
    """The ``ETag`` header for a resource at ``version``."""
    return {"ETag": f'"{version}"'}


def viewer_id(principal: Principal) -> str | None:
    """``None`` for callers who see everything (admins, trusted services), else the user id."""
    return None if principal.is_privileged else principal.user_id


def is_owner(principal: Principal, owner_id: UUID) -> bool:
    """Whether the caller owns the resource (admins count as owners)."""
    return principal.is_admin or principal.user_id == str(owner_id)


def kick_relay(request: web.Request) -> None:
    """Wake the outbox relay right after a commit that wrote events."""
    relay = request.app.get(keys.relay)
    if relay is not None:
        relay.kick()


def request_json(row: requests_db.SoftwareRequest) -> dict[str, Any]:
    """A request as the API shows it (JSON-ready)."""
    return RequestOut.model_validate(dataclasses.asdict(row)).model_dump(mode="json")


async def can_see(conn: asyncpg.Connection, principal: Principal, row: Any) -> bool:
    """Whether ``principal`` may see the request ``row``."""
    if principal.is_privileged or principal.user_id == str(row.owner_id):
        return True
    if principal.role == "vendor":
        if row.status == "open":
            return True
        return await proposals.has_proposal(conn, row.id, principal.user_id)
    return False


async def visible_request(
    conn: asyncpg.Connection,
    principal: Principal,
    request_id: UUID,
    *,
    for_update: bool = False,
) -> requests_db.SoftwareRequest:
    """The request if the caller may see it; :class:`NotFound` (404) otherwise."""
    row = await requests_db.get(conn, request_id, for_update=for_update)
    if not await can_see(conn, principal, row):
        raise NotFound("request")
    return row


async def record_request_event(
    conn: asyncpg.Connection, kind: str, row: requests_db.SoftwareRequest
) -> None:
    """Outbox event ``request.{kind}`` to the request's channel and its owner."""
    payload = {"type": f"request.{kind}", "request_id": str(row.id), "request": request_json(row)}
    await outbox.add_event(conn, [names.proposals(row.id), names.user(row.owner_id)], payload)


# -- handlers -------------------------------------------------------------------------------


@describe(
    summary="Post a software request",
    tags=TAGS,
    body=RequestCreate,
    responses={201: RequestOut},
    errors=(403,),
)
async def create_request(request: web.Request) -> web.Response:
    """Buyers (and admins) post a request; it starts ``open``."""
    principal = require_principal(request)
    require_role(principal, "buyer")
    body = await parse_body(request, RequestCreate)
    if body.deadline is not None and body.deadline <= datetime.now(UTC):
        raise ApiError(
            400, "request validation failed", errors={"deadline": ["must be in the future"]}
        )
    async with request.app[keys.pool].acquire() as conn, conn.transaction():
        row = await requests_db.create(
            conn,
            owner_id=principal.user_id,
            title=body.title,
            description=body.description,
            requirements=[r.model_dump() for r in body.requirements],
            budget=body.budget,
            currency=body.currency,
            deadline=body.deadline,
        )
        await record_request_event(conn, "created", row)
    kick_relay(request)
    headers = {**etag(row.version), "Location": f"/api/v1/requests/{row.id}"}
    return json_response(request_json(row), status=201, headers=headers)


@describe(
    summary="List requests you may see",
    tags=TAGS,
    query=RequestQuery,
    responses={200: RequestPage},
)
async def list_requests(request: web.Request) -> web.Response:
    """Newest first; follow ``next_cursor`` for more. Filters combine with AND."""
    principal = require_principal(request)
    query = query_params(request, RequestQuery)
    after = decode_cursor(query.cursor)
    async with request.app[keys.pool].acquire() as conn:
        rows = await requests_db.list_requests(
            conn,
            viewer_id=viewer_id(principal),
            include_open=principal.role == "vendor",
            status=query.status,
            owner_id=query.owner,
            after=after,
            limit=query.limit + 1,
        )
    page, cursor = split_page(rows, query.limit, lambda row: (row.created_at, row.id))
    return json_response({"items": [request_json(row) for row in page], "next_cursor": cursor})


@describe(
    summary="Read a request",
    tags=TAGS,
    responses={200: RequestOut},
    errors=(404,),
    path_formats={"id": "uuid"},
)
async def get_request(request: web.Request) -> web.Response:
    """The request, with its version in the ``ETag`` header."""
    principal = require_principal(request)
    request_id = path_uuid(request)
    async with request.app[keys.pool].acquire() as conn:
        row = await visible_request(conn, principal, request_id)
    return json_response(request_json(row), headers=etag(row.version))


@describe(
    summary="Change a request",
    tags=TAGS,
    body=RequestPatch,
    responses={200: RequestOut},
    errors=(403, 404, 409, 412),
    headers={"If-Match": IF_MATCH},
    path_formats={"id": "uuid"},
)
async def patch_request(request: web.Request) -> web.Response:
    """Only the fields present change; ``null`` clears ``budget`` or ``deadline``."""
    principal = require_principal(request)
    request_id = path_uuid(request)
    body = await parse_body(request, RequestPatch)
    version = expected_version(request, body.version)
    changes = body.model_dump(include=set(requests_db.UPDATABLE), exclude_unset=True)
    if "requirements" in changes:
        changes["requirements"] = [r.model_dump() for r in body.requirements or []]
    if not changes:
        raise ApiError(400, "nothing to change: send at least one field")
    async with request.app[keys.pool].acquire() as conn, conn.transaction():
        current = await visible_request(conn, principal, request_id, for_update=True)
        if not is_owner(principal, current.owner_id):
            raise ApiError(403, "only the request's owner may change it")
        if "status" in changes and current.status == "awarded":
            raise ApiError(409, "an awarded request cannot be reopened or closed")
        row = await requests_db.update(conn, request_id, changes, expected_version=version)
        await record_request_event(conn, "updated", row)
    kick_relay(request)
    return json_response(request_json(row), headers=etag(row.version))


@describe(
    summary="Delete a request and its proposals",
    tags=TAGS,
    responses={204: None},
    errors=(403, 404, 409, 412),
    headers={"If-Match": IF_MATCH},
    path_formats={"id": "uuid"},
)
async def delete_request(request: web.Request) -> web.Response:
    """The owner (or an admin) deletes a request that has not been awarded."""
    principal = require_principal(request)
    request_id = path_uuid(request)
    version = expected_version(request, None)
    async with request.app[keys.pool].acquire() as conn, conn.transaction():
        current = await visible_request(conn, principal, request_id, for_update=True)
        if not is_owner(principal, current.owner_id):
            raise ApiError(403, "only the request's owner may delete it")
        vendors = await proposals.vendor_ids(conn, request_id)
        await requests_db.delete(conn, request_id, expected_version=version)
        channels = [names.proposals(request_id), names.user(current.owner_id)]
        channels += [names.user(vendor) for vendor in vendors]
        payload = {"type": "request.deleted", "request_id": str(request_id)}
        await outbox.add_event(conn, channels, payload)
    kick_relay(request)
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/requests", create_request)
    app.router.add_get("/api/v1/requests", list_requests)
    app.router.add_get("/api/v1/requests/{id}", get_request)
    app.router.add_patch("/api/v1/requests/{id}", patch_request)
    app.router.add_delete("/api/v1/requests/{id}", delete_request)
