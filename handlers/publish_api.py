"""``POST /api/v1/channels/{channel}/publish`` for trusted backends and load tests.

Callers authenticate with a service token (``Authorization: Bearer``) or by signing the request
with ``SERVICE_SECRET`` (``x-signature``, ``x-timestamp``, ``x-signature-version``; the schemes
are in ``services/auth/service_signature.py`` and ``docs/security.md``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from handlers import keys
from handlers.auth_context import bearer_token, has_signature, require_principal
from handlers.errors import ApiError, json_response
from handlers.openapi import describe
from handlers.validation import read_json, validate


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Any = Field(description="Any JSON value; delivered to subscribers as-is")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class PublishResult(BaseModel):
    """Where the publication landed in the channel's stream."""

    channel: str
    offset: int = Field(description="Position in the channel's stream (1, 2, ...)")
    epoch: str = Field(description="Stream generation; offsets compare only within one epoch")
    duplicate: bool = Field(
        description="True when idempotency_key was seen in the last 5 minutes: nothing was "
        "published and offset is the first publication's"
    )


def authorize_service(request: web.Request) -> None:
    """Only a service (or admin): 401 without credentials, 403 for other roles."""
    if bearer_token(request) is None and not has_signature(request):
        raise ApiError(401, "service token or request signature required")
    if not require_principal(request).is_privileged:
        raise ApiError(403, "only trusted services may publish")


@describe(
    summary="Publish to a channel (trusted services)",
    tags=("channels",),
    body=PublishBody,
    responses={200: PublishResult},
    errors=(403,),
)
async def publish(request: web.Request) -> web.Response:
    """Publish `data` to the channel; the reply says at which offset. For trusted backends: a
    service (or admin) token, or a request signed with SERVICE_SECRET (prefer
    `x-signature-version: 2`); any other caller gets 403. The channel name must be valid
    (`namespace:name`), else 400."""
    authorize_service(request)
    channel = request.match_info["channel"]
    hub = request.app[keys.hub]
    hub.options(channel)  # InvalidChannel -> 400 via the error middleware
    body = validate(PublishBody, await read_json(request))
    result = await hub.publish(channel, body.data, idempotency_key=body.idempotency_key)
    return json_response(
        {
            "channel": channel,
            "offset": result.offset,
            "epoch": result.epoch,
            "duplicate": result.duplicate,
        }
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/channels/{channel}/publish", publish)
