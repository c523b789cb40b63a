"""``/api/v1/users/me``: the caller's profile (name, company, notification settings).

The rules are in :mod:`services.users.profile`; this module parses, calls and shapes.
"""

from __future__ import annotations

from aiohttp import web

from handlers import keys
from handlers.auth_context import require_principal
from handlers.errors import json_response
from handlers.openapi import describe
from handlers.validation import parse_body
from services.users import profile as service
from services.users.profile import ProfileOut, ProfilePatch

TAGS = ("users",)


@describe(summary="Your profile", tags=TAGS, responses={200: ProfileOut}, errors=(403, 404))
async def get_me(request: web.Request) -> web.Response:
    """Your account (id, e-mail, role) with your name, company and notification settings.
    A service token has no profile (403)."""
    principal = require_principal(request)
    row = await service.get_profile(request.app[keys.pool], principal)
    return json_response(ProfileOut.json_of(row))


@describe(
    summary="Change your profile",
    tags=TAGS,
    body=ProfilePatch,
    responses={200: ProfileOut},
    errors=(403, 404),
)
async def patch_me(request: web.Request) -> web.Response:
    """Only the fields given change; ``null`` clears ``name`` or ``company``;
    ``notifications`` changes only the settings it names."""
    principal = require_principal(request)
    body = await parse_body(request, ProfilePatch)
    row = await service.update_profile(request.app[keys.pool], principal, body)
    return json_response(ProfileOut.json_of(row))


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/users/me", get_me)
    app.router.add_patch("/api/v1/users/me", patch_me)
