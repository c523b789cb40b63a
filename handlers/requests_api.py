"""``/api/v1/requests``: buyers' software requests (create, list, read, update, delete).

The rules (who sees and changes what, the live events) are in
:mod:`services.marketplace.requests`; this module parses, calls and shapes.
"""

from __future__ import annotations

from aiohttp import web

from handlers import keys
from handlers.auth_context import require_principal
from handlers.errors import json_response
from handlers.http_cache import IF_MATCH, expected_version, versioned_response
from handlers.openapi import describe
from handlers.paging import decode_cursor, page_body, path_uuid
from handlers.validation import parse_body, query_params
from services.marketplace import requests as service
from services.marketplace.models import (
    RequestCreate,
    RequestOut,
    RequestPage,
    RequestPatch,
    RequestQuery,
)

TAGS = ("requests",)


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
    service.require_role(principal, "buyer")  # before reading the body: 403 beats 400
    body = await parse_body(request, RequestCreate)
    row = await service.create_request(
        request.app[keys.pool], request.app.get(keys.relay), principal, body
    )
    location = f"/api/v1/requests/{row.id}"
    return versioned_response(RequestOut.json_of(row), row.version, status=201, location=location)


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
    rows = await service.list_requests(request.app[keys.pool], principal, query, after)
    return json_response(
        page_body(rows, query.limit, lambda row: (row.created_at, row.id), RequestOut.json_of)
    )


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
    row = await service.get_request(request.app[keys.pool], principal, path_uuid(request))
    return versioned_response(RequestOut.json_of(row), row.version)


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
    row = await service.update_request(
        request.app[keys.pool], request.app.get(keys.relay), principal, request_id, body, version
    )
    return versioned_response(RequestOut.json_of(row), row.version)


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
    await service.delete_request(
        request.app[keys.pool],
        request.app.get(keys.relay),
        principal,
        request_id,
        version,
        request.app[keys.hub],
    )
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/requests", create_request)
    app.router.add_get("/api/v1/requests", list_requests)
    app.router.add_get("/api/v1/requests/{id}", get_request)
    app.router.add_patch("/api/v1/requests/{id}", patch_request)
    app.router.add_delete("/api/v1/requests/{id}", delete_request)
