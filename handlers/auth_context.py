"""Finding the caller of a REST request: its ``Authorization: Bearer`` header, or a request
signature made with ``SERVICE_SECRET`` (``handlers/service_signature.py``)."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from handlers import keys, service_signature
from handlers.errors import ApiError
from handlers.principal import SERVICE_ROLE, Principal
from handlers.tokens import TokenError

log = logging.getLogger(__name__)

_BEARER = "bearer "
#: ``user_id`` of the principal behind a signed request (a service token's is ``service:<name>``)
SIGNED_SERVICE_ID = "service:signed-request"


def bearer_token(request: web.Request) -> str | None:
    """The bearer token of the request, if any. Tokens in the query string are never read."""
    header = request.headers.get("Authorization", "")
    if header[: len(_BEARER)].lower() != _BEARER:
        return None
    return header[len(_BEARER) :].strip() or None


def has_signature(request: web.Request) -> bool:
    """Whether the request carries any of the signature headers (then it must verify)."""
    return any(name in request.headers for name in service_signature.HEADERS)


async def signed_principal(request: web.Request) -> Principal:
    """The service principal of a signed request; 401 if the signature is missing, wrong,
    stale or already used, 503 if the replay cache cannot be asked (fail closed).

    Reads the body (aiohttp keeps it, so the handler can still parse it).
    """
    auth = request.app[keys.config].auth
    headers = request.headers
    try:
        verified = service_signature.verify(
            auth.service_secret,
            signature=headers.get(service_signature.SIGNATURE_HEADER),
            timestamp=headers.get(service_signature.TIMESTAMP_HEADER),
            version=headers.get(service_signature.VERSION_HEADER),
            method=request.method,
            target=request.raw_path,  # path and query exactly as sent
            body=await request.read(),
            now_ms=int(time.time() * 1000),
            tolerance_ms=auth.signature_tolerance * 1000,
        )
    except service_signature.SignatureError as exc:
        raise ApiError(401, exc.reason) from None
    ttl = service_signature.replay_ttl(auth.signature_tolerance)
    try:
        fresh = await request.app[keys.replay_cache].claim(verified.replay_key, ttl)
    except service_signature.ReplayCacheUnavailable:
        log.warning("signature replay cache unavailable", exc_info=True)
        raise ApiError(
            503, "service temporarily unavailable", headers={"Retry-After": "1"}
        ) from None
    if not fresh:
        raise ApiError(
            401, "request signature already used; sign every request anew (new x-timestamp)"
        )
    return Principal(
        user_id=SIGNED_SERVICE_ID,
        role=SERVICE_ROLE,
        email=None,
        token_id=f"signature:{verified.replay_key[:16]}",
        expires_at=verified.timestamp_ms / 1000 + auth.signature_tolerance,
    )


def require_principal(request: web.Request) -> Principal:
    """The authenticated caller; 401 without a valid access or service token."""
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    try:
        return request.app[keys.tokens].principal(token)
    except TokenError as exc:
        raise ApiError(
            401, exc.reason, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from None


def require_role(principal: Principal, *roles: str) -> None:
    """403 unless the caller has one of ``roles`` (admins always pass)."""
    if principal.role not in roles and not principal.is_admin:
        raise ApiError(403, "your role may not do this")
