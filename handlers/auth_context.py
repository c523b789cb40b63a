"""Finding the caller of a REST request: its ``Authorization: Bearer`` header, or a request
signature made with ``SERVICE_SECRET`` (``services/auth/service_signature.py``).

Signatures are verified once, for every route, by the :func:`service_signatures` middleware:
on each ``/api/v1/`` route that identifies its caller (described in OpenAPI with ``auth``, the
default; login, verify, refresh, logout and invite acceptance are ``auth=False`` and take no
caller, the API docs pages are not described) a request carrying signature headers must
verify, and then acts as the service principal, which :func:`require_principal` returns.
Handlers therefore never deal with signatures themselves.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from handlers import keys
from handlers.errors import ApiError
from handlers.openapi import operation_of
from services.auth import service_signature
from services.auth.principal import SERVICE_ROLE, Principal
from services.auth.tokens import TokenError

log = logging.getLogger(__name__)

_BEARER = "bearer "
#: ``user_id`` of the principal behind a signed request (a service token's is ``service:<name>``)
SIGNED_SERVICE_ID = "service:signed-request"
#: Routes under this prefix accept signed requests (unless described with ``auth=False``).
SIGNED_PREFIX = "/api/v1/"
_signed = web.RequestKey("signed_principal", Principal)


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


def accepts_signature(request: web.Request) -> bool:
    """Whether the matched route identifies its caller and so accepts a signed request."""
    route = request.match_info.route
    resource = route.resource
    if resource is None or route.method == "OPTIONS":  # unmatched, or a CORS preflight
        return False
    if not resource.canonical.startswith(SIGNED_PREFIX):
        return False
    # Described as authenticated: every route that identifies its caller is (the parity test in
    # tests/security/test_signed_requests.py fails for one that is not); the API docs pages
    # under /api/v1/ (schema, docs, redoc) are public and undescribed.
    operation = operation_of(route.handler)
    return operation is not None and operation.auth


@web.middleware
async def service_signatures(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Verify a signed request before its route runs (after ``error_envelope``, so refusals
    get the envelope).

    With an ``Authorization`` header the token decides and signature headers are ignored (as
    the publish route always did): either way the caller gets no more than one credential
    grants, and clients that add signature headers to every call keep working with a token.
    """
    if (
        has_signature(request)
        and "Authorization" not in request.headers
        and accepts_signature(request)
    ):
        request[_signed] = await signed_principal(request)
    return await handler(request)


def require_principal(request: web.Request) -> Principal:
    """The authenticated caller: the service principal of a signed request (verified by
    :func:`service_signatures`), else the bearer token's; 401 without either."""
    if _signed in request:
        return request[_signed]
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
