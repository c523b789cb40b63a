"""Finding the caller of a REST request from its ``Authorization: Bearer`` header."""

from __future__ import annotations

from aiohttp import web

from handlers import keys
from handlers.errors import ApiError
from services.auth.principal import Principal
from services.auth.tokens import TokenError

_BEARER = "bearer "


def bearer_token(request: web.Request) -> str | None:
    """The bearer token of the request, if any. Tokens in the query string are never read."""
    header = request.headers.get("Authorization", "")
    if header[: len(_BEARER)].lower() != _BEARER:
        return None
    return header[len(_BEARER) :].strip() or None


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
