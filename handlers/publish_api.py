"""``POST /api/v1/channels/{channel}/publish`` for trusted backends and load tests.

Callers authenticate with a service token (``Authorization: Bearer``) or by signing the request:
``x-timestamp`` (Unix milliseconds) and ``x-signature`` = hex HMAC-SHA256 of
``{METHOD}|{raw body}|{timestamp}`` with ``SERVICE_SECRET``, rejected when the timestamp is more
than two minutes away from the server clock.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from handlers import keys
from handlers.auth_context import bearer_token
from handlers.errors import ApiError, json_response
from handlers.validation import read_json, validate
from services.auth.tokens import TokenError

SIGNATURE_TOLERANCE_MS = 2 * 60 * 1000


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Any = Field(description="Any JSON value; delivered to subscribers as-is")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


def signature(secret: str, method: str, body: bytes, timestamp: str) -> str:
    """The expected ``x-signature`` for a request."""
    message = method.upper().encode() + b"|" + body + b"|" + timestamp.encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


async def authorize_service(request: web.Request) -> None:
    """Accept a service (or admin) token or a valid request signature; 401 otherwise."""
    token = bearer_token(request)
    if token is not None:
        try:
            principal = request.app[keys.tokens].principal(token)
        except TokenError as exc:
            raise ApiError(401, exc.reason) from None
        if not principal.is_privileged:
            raise ApiError(403, "only trusted services may publish")
        return
    timestamp = request.headers.get("x-timestamp", "")
    supplied = request.headers.get("x-signature", "")
    if not timestamp or not supplied:
        raise ApiError(401, "service token or request signature required")
    if not timestamp.isdigit() or len(timestamp) > 16:
        raise ApiError(401, "x-timestamp must be Unix milliseconds")
    if abs(int(timestamp) - int(time.time() * 1000)) > SIGNATURE_TOLERANCE_MS:
        raise ApiError(401, "x-timestamp is too far from the server clock")
    body = await request.read()
    secret = request.app[keys.config].auth.service_secret
    expected = signature(secret, request.method, body, timestamp)
    if not hmac.compare_digest(expected, supplied.strip().lower()):
        raise ApiError(401, "invalid request signature")


async def publish(request: web.Request) -> web.Response:
    """Publish ``data`` to the channel; replies with the offset it got."""
    await authorize_service(request)
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
