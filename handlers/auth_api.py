"""``/api/v1/auth``: magic-link login, verify, refresh rotation, logout, me; role changes.

The whole flow, token lifetimes and the security settings are described in ``docs/security.md``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, EmailStr, Field

from handlers import keys
from handlers.auth_context import require_principal, require_role
from handlers.client_ip import client_ip
from handlers.errors import ApiError, json_response
from handlers.openapi import describe
from handlers.validation import parse_body
from pubsub.broker import BrokerError
from services.auth.principal import ROLES
from services.auth.ratelimit import RateLimiterUnavailable
from services.auth.sessions import start_session
from services.auth.tokens import REFRESH, TokenError
from services.channels import revocation
from services.marketplace import invites
from services.marketplace.models import InviteAccept
from services.realtime.errors import Disconnect
from storage import auth_tokens, users
from storage.auth_tokens import RefreshOutcome
from storage.errors import NotFound

log = logging.getLogger(__name__)

#: The one answer to every accepted login request, whether or not the address has an account.
LOGIN_ACCEPTED = {
    "status": "accepted",
    "message": "If this address can receive e-mail, a sign-in link is on its way.",
}
MAGIC_LINK_PATH = "/login"


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: EmailStr = Field(max_length=254)


class VerifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=256)


class RefreshBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: str = Field(min_length=1, max_length=8192)


class RoleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(pattern="^(buyer|vendor|admin)$")


class LoginAccepted(BaseModel):
    """The one answer to every accepted login request."""

    status: str
    message: str


class UserOut(BaseModel):
    """A user as stored (a service token's ``/me`` has no email and no dates)."""

    id: str
    email: str | None
    role: str
    created_at: datetime | None = None
    last_login_at: datetime | None = None


class TokenPair(BaseModel):
    """A new session: access token (``expires_in`` s) and refresh token."""

    token_type: str
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user: UserOut


def hash_token(token: str) -> bytes:
    """SHA-256 of a magic-link token: what the database stores instead of the token."""
    return hashlib.sha256(token.encode()).digest()


def _digest(value: str) -> str:
    """A short stable digest, so rate-limit keys and logs never hold an e-mail address."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


async def _limit(request: web.Request, key: str, limit: int, period: float) -> None:
    try:
        decision = await request.app[keys.rate_limiter].hit(key, limit, period)
    except RateLimiterUnavailable:
        # Fail closed: without the shared counter a flood of logins would go unchecked.
        log.warning("rate limiter unavailable", exc_info=True)
        raise ApiError(
            503, "service temporarily unavailable", headers={"Retry-After": "1"}
        ) from None
    if not decision.allowed:
        raise ApiError(
            429,
            "too many requests; try again later",
            headers={"Retry-After": decision.retry_after_header},
        )


def _user_dict(user: users.User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "email": user.email,
        "role": user.role,
        "created_at": user.created_at,
        "last_login_at": user.last_login_at,
    }


def _token_pair(request: web.Request, user: users.User, refresh_token: str) -> dict[str, Any]:
    tokens = request.app[keys.tokens]
    access = tokens.issue_access(str(user.id), user.role, user.email)
    return {
        "token_type": "Bearer",
        "access_token": access.token,
        "expires_in": tokens.config.access_ttl,
        "refresh_token": refresh_token,
        "refresh_expires_in": tokens.config.refresh_ttl,
        "user": _user_dict(user),
    }


def _refresh_claims(request: web.Request, token: str) -> tuple[str, str, str]:
    """``(sub, jti, family)`` of a valid refresh token; 401 otherwise."""
    try:
        claims = request.app[keys.tokens].decode(token, (REFRESH,))
        family = str(uuid.UUID(str(claims.get("fam"))))
    except TokenError as exc:
        raise ApiError(401, exc.reason) from None
    except ValueError:
        raise ApiError(401, "invalid token") from None
    return str(claims["sub"]), str(claims["jti"]), family


@describe(
    summary="Request a sign-in link by e-mail",
    tags=("auth",),
    body=LoginBody,
    responses={202: LoginAccepted},
    errors=(429,),
    auth=False,
)
async def login(request: web.Request) -> web.Response:
    """``POST /api/v1/auth/login {email}`` → 202, the same for every address.

    Known and unknown addresses take the same path (a link is stored and mailed either way:
    the first verify creates the account), so neither the body nor the timing tells them apart.
    """
    config = request.app[keys.config]
    auth = config.auth
    ip = client_ip(request, config.http.trusted_proxies)
    await _limit(request, f"login:ip:{ip}", auth.login_rate_per_ip, auth.login_rate_window)
    body = await parse_body(request, LoginBody)
    email = body.email.lower()
    # Per (e-mail, client IP) pair, so that a stranger spending the limit for someone else's
    # address only locks out themselves; plus a much higher ceiling per e-mail across all
    # addresses, which bounds the mail one person can be sent (trade-off in docs/security.md).
    window = auth.login_rate_window
    pair = _digest(f"{email}\n{ip}")
    await _limit(request, f"login:email-ip:{pair}", auth.login_rate_per_email, window)
    await _limit(request, f"login:email:{_digest(email)}", auth.login_rate_per_email_global, window)
    token = secrets.token_urlsafe(32)
    async with request.app[keys.pool].acquire() as conn:
        await auth_tokens.create_magic_link(conn, hash_token(token), email, auth.magic_link_ttl)
    # Built from PUBLIC_BASE_URL only: a forged Host header must never redirect the link. The
    # token sits in the fragment, which browsers never send to a server or in a Referer.
    link = f"{config.http.public_base_url}{MAGIC_LINK_PATH}#token={token}"
    minutes = max(1, auth.magic_link_ttl // 60)
    request.app[keys.mailer].send_later(
        email,
        "Your Arena sign-in link",
        f"Sign in to Arena with this link (valid for {minutes} minutes, usable once):\n\n"
        f"{link}\n\nIf you did not ask for it, ignore this message.\n",
    )
    log.info("magic link issued", extra={"email_digest": _digest(email), "client_ip": ip})
    return json_response(LOGIN_ACCEPTED, status=202)


@describe(
    summary="Exchange a sign-in link for tokens",
    tags=("auth",),
    body=VerifyBody,
    responses={200: TokenPair},
    errors=(429,),
    auth=False,
)
async def verify(request: web.Request) -> web.Response:
    """``POST /api/v1/auth/verify {token}``: consume a magic link once, get access + refresh.

    The account is created (role ``buyer``) on the first successful verify.
    """
    config = request.app[keys.config]
    auth = config.auth
    ip = client_ip(request, config.http.trusted_proxies)
    await _limit(request, f"verify:ip:{ip}", auth.login_rate_per_ip, auth.login_rate_window)
    body = await parse_body(request, VerifyBody)
    tokens = request.app[keys.tokens]
    try:
        async with request.app[keys.pool].acquire() as conn, conn.transaction():
            email = await auth_tokens.consume_magic_link(conn, hash_token(body.token))
            user = await users.get_or_create(conn, email)
            user, refresh = await start_session(conn, tokens, user.id)
    except NotFound:
        raise ApiError(401, "sign-in link is invalid, expired or already used") from None
    log.info("login verified", extra={"user_id": str(user.id)})
    return json_response(_token_pair(request, user, refresh.token))


_REFRESH_REFUSED = {
    RefreshOutcome.UNKNOWN: "invalid token",
    RefreshOutcome.EXPIRED: "token expired",
    RefreshOutcome.REVOKED: "session was revoked; sign in again",
    RefreshOutcome.REUSED: "refresh token was already used; the session has been revoked",
}


@describe(
    summary="Rotate the refresh token",
    tags=("auth",),
    body=RefreshBody,
    responses={200: TokenPair},
    auth=False,
)
async def refresh(request: web.Request) -> web.Response:
    """``POST /api/v1/auth/refresh {refresh_token}``: rotate; a reused token revokes its family."""
    body = await parse_body(request, RefreshBody)
    subject, jti, family = _refresh_claims(request, body.refresh_token)
    tokens = request.app[keys.tokens]
    # The transaction commits whatever the outcome: a detected reuse must stay revoked.
    async with request.app[keys.pool].acquire() as conn, conn.transaction():
        used = await auth_tokens.use_refresh_token(conn, jti, family)
        if used.outcome is RefreshOutcome.OK and str(used.user_id) == subject:
            user = await users.get(conn, subject)
            issued = tokens.issue_refresh(subject, family)
            await auth_tokens.add_refresh_token(conn, family, issued.jti, issued.expires_at)
            return json_response(_token_pair(request, user, issued.token))
    if used.outcome is RefreshOutcome.REUSED:
        log.warning(
            "refresh token reuse: family revoked",
            extra={"user_id": str(used.user_id), "family": family},
        )
        # The stolen session may have live connections: close the user's on every node
        # (best effort: the family is revoked in PostgreSQL whatever happens here).
        try:
            await request.app[keys.connections].disconnect_user(
                str(used.user_id), Disconnect.FORBIDDEN, "session revoked"
            )
        except BrokerError:
            log.warning("could not close the connections of a revoked session")
    raise ApiError(401, _REFRESH_REFUSED.get(used.outcome, "invalid token"))


@describe(
    summary="Revoke the session and close its WebSockets",
    tags=("auth",),
    body=RefreshBody,
    responses={204: None},
    auth=False,
)
async def logout(request: web.Request) -> web.Response:
    """``POST /api/v1/auth/logout {refresh_token}``: revoke the session's token family and close
    the user's WebSocket connections on every node. 204."""
    body = await parse_body(request, RefreshBody)
    subject, _, family = _refresh_claims(request, body.refresh_token)
    try:
        async with request.app[keys.pool].acquire() as conn:
            user_id = await auth_tokens.revoke_family(conn, family, "logout")
    except NotFound:
        raise ApiError(401, "invalid token") from None
    if str(user_id) != subject:
        raise ApiError(401, "invalid token")
    # FORBIDDEN (4003), not UNAUTHENTICATED (4001): the session is over. After 4001 a client
    # reconnects with the access token it still holds (valid until it expires), which would
    # quietly resume a logged-out session.
    await request.app[keys.connections].disconnect_user(subject, Disconnect.FORBIDDEN, "logged out")
    log.info("logout", extra={"user_id": subject})
    return web.Response(status=204)


def _user_uuid(value: str, status: int, message: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(status, message) from None


@describe(summary="The current user", tags=("auth",), responses={200: UserOut})
async def me(request: web.Request) -> web.Response:
    """``GET /api/v1/auth/me``: the caller as stored now (a service token describes itself)."""
    principal = require_principal(request)
    if principal.is_service:
        return json_response({"id": principal.user_id, "email": None, "role": principal.role})
    user_id = _user_uuid(principal.user_id, 401, "invalid token")
    try:
        async with request.app[keys.pool].acquire() as conn:
            user = await users.get(conn, user_id)
    except NotFound:
        raise ApiError(401, "this account no longer exists") from None
    return json_response(_user_dict(user))


@describe(
    summary="Change a user's role (admins)",
    tags=("users",),
    body=RoleBody,
    responses={200: UserOut},
    errors=(403, 404),
    path_formats={"user_id": "uuid"},
)
async def set_role(request: web.Request) -> web.Response:
    """``PUT /api/v1/users/{user_id}/role {role}`` (admins): takes effect at the user's next
    token (refresh or login) for REST, and at once on the user's live connections (their
    subscriptions are re-checked with the new role on every node)."""
    principal = require_principal(request)
    require_role(principal, "admin")
    user_id = _user_uuid(request.match_info["user_id"], 404, "not found")
    body = await parse_body(request, RoleBody)
    assert body.role in ROLES
    async with request.app[keys.pool].acquire() as conn:
        user = await users.set_role(conn, user_id, body.role)
    log.info("role changed", extra={"user_id": user_id, "role": body.role, "by": principal.user_id})
    await revocation.user_changed(request.app[keys.hub], user_id, role=body.role)
    return json_response(_user_dict(user))


@describe(
    summary="Accept a vendor invitation (signs you in)",
    tags=("auth",),
    body=InviteAccept,
    responses={200: TokenPair},
    errors=(429,),
    auth=False,
)
async def accept_invite(request: web.Request) -> web.Response:
    """``POST /api/v1/invites/accept {token}``: consume an invitation link once and get a
    session like ``verify`` gives. The account is created as a vendor (a buyer account becomes a
    vendor) and may see the request it was invited to; 401 when the link is invalid, expired
    or already used."""
    config = request.app[keys.config]
    auth = config.auth
    ip = client_ip(request, config.http.trusted_proxies)
    # The same per-IP budget as verify: both guess at one-time tokens.
    await _limit(request, f"verify:ip:{ip}", auth.login_rate_per_ip, auth.login_rate_window)
    body = await parse_body(request, InviteAccept)
    try:
        accepted = await invites.accept_invite(
            request.app[keys.pool],
            request.app.get(keys.relay),
            request.app[keys.tokens],
            body.token,
        )
    except NotFound:
        raise ApiError(401, "invitation link is invalid, expired or already used") from None
    return json_response(_token_pair(request, accepted.user, accepted.refresh.token))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/auth/login", login)
    app.router.add_post("/api/v1/auth/verify", verify)
    app.router.add_post("/api/v1/auth/refresh", refresh)
    app.router.add_post("/api/v1/auth/logout", logout)
    app.router.add_get("/api/v1/auth/me", me)
    app.router.add_put("/api/v1/users/{user_id}/role", set_role)
    app.router.add_post("/api/v1/invites/accept", accept_invite)
