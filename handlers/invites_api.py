"""``POST /api/v1/requests/{id}/invites``: a request's owner invites a vendor by e-mail.

The invitee follows the mailed link; ``POST /api/v1/invites/accept`` (in ``auth_api``, as it
signs them in) makes them a vendor with access to the request. The rules are in
:mod:`services.marketplace.invites`.
"""

from __future__ import annotations

from aiohttp import web

from handlers import keys
from handlers.auth_context import require_principal
from handlers.errors import json_response
from handlers.openapi import describe
from handlers.paging import path_uuid
from handlers.validation import parse_body
from services.marketplace import invites as service
from services.marketplace.models import InviteCreate, InviteOut

TAGS = ("requests",)


@describe(
    summary="Invite a vendor to a request",
    tags=TAGS,
    body=InviteCreate,
    responses={201: InviteOut},
    errors=(403, 404, 409, 429),
    path_formats={"id": "uuid"},
)
async def create_invite(request: web.Request) -> web.Response:
    """The request's owner (or an admin) invites a vendor by e-mail to an open request. The
    address gets a single-use link, valid for 7 days, that signs the invitee in as a vendor
    (a buyer account becomes a vendor) with access to this request."""
    principal = require_principal(request)
    request_id = path_uuid(request)
    body = await parse_body(request, InviteCreate)
    invite = await service.invite_vendor(
        request.app[keys.pool],
        request.app[keys.mailer],
        request.app[keys.rate_limiter],
        principal,
        request_id,
        body.email,
        request.app[keys.config].http.public_base_url,
    )
    return json_response(InviteOut.json_of(invite), status=201)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/requests/{id}/invites", create_invite)
