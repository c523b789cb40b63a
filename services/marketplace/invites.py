"""Vendor onboarding: the owner of a request invites a vendor by e-mail.

1. :func:`invite_vendor`: the request's owner (or an admin) names an address; an invitation
   (random token, stored only as its SHA-256, single use, valid :data:`INVITE_TTL` seconds) is
   recorded and a link ``{PUBLIC_BASE_URL}/invite#token=...`` is mailed to the address.
2. :func:`accept_invite`: following the link signs the invitee in (like a magic link). The
   account is created as a vendor, or a buyer account becomes a vendor (admins and vendors keep
   their role); the vendor is granted access to the request (they see it whatever its status
   and may read ``proposals:{request_id}``), and ``request.invited`` is published on their
   ``user:{id}`` channel so an open dashboard shows the request at once.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from services.auth.principal import Principal
from services.auth.ratelimit import RateLimiter, RateLimiterUnavailable
from services.auth.sessions import hash_secret, start_session
from services.auth.tokens import IssuedToken, TokenService
from services.errors import Forbidden, Invalid, InvalidState, RateLimited, Unavailable
from services.mail.mailer import Mailer
from services.marketplace import events
from services.marketplace.events import Kickable
from services.marketplace.requests import is_owner, visible_request
from storage import invites, request_access, users
from storage import requests as requests_db
from storage.invites import Invite

log = logging.getLogger(__name__)

#: How long an invitation link stays valid (seconds).
INVITE_TTL = 7 * 24 * 3600
#: Invitations one user may send per :data:`INVITE_WINDOW` seconds (each one sends an e-mail).
INVITES_PER_WINDOW = 50
INVITE_WINDOW = 3600
#: Where invitation links point (the dashboard's landing page; the token is in the fragment).
INVITE_PATH = "/invite"


@dataclass(frozen=True, slots=True)
class Accepted:
    """An accepted invitation: the vendor as stored now, their new session's refresh token and
    the request they were invited to."""

    user: users.User
    refresh: IssuedToken
    request_id: UUID


async def _limit(limiter: RateLimiter, principal: Principal) -> None:
    try:
        decision = await limiter.hit(
            f"invite:user:{principal.user_id}", INVITES_PER_WINDOW, INVITE_WINDOW
        )
    except RateLimiterUnavailable:
        # Fail closed: every invitation sends an e-mail to an address of the caller's choice.
        raise Unavailable("service temporarily unavailable") from None
    if not decision.allowed:
        raise RateLimited("too many invitations; try again later", int(decision.retry_after_header))


async def invite_vendor(
    pool: asyncpg.Pool,
    mailer: Mailer,
    limiter: RateLimiter,
    principal: Principal,
    request_id: UUID,
    email: str,
    base_url: str,
) -> Invite:
    """Invite ``email`` to propose on ``request_id`` (open requests only) and mail the link."""
    email = email.lower()
    if principal.email is not None and principal.email.lower() == email:
        raise Invalid("request validation failed", {"email": ["you cannot invite yourself"]})
    async with pool.acquire() as conn:
        parent = await visible_request(conn, principal, request_id)
        if not is_owner(principal, parent.owner_id):
            raise Forbidden("only the request's owner may invite vendors")
        if parent.status != "open":
            raise InvalidState(f"the request is {parent.status}")
        await _limit(limiter, principal)
        token = secrets.token_urlsafe(32)
        invite = await invites.create(
            conn,
            token_hash=hash_secret(token),
            request_id=request_id,
            email=email,
            invited_by=principal.user_id,
            ttl=INVITE_TTL,
        )
    # Built from PUBLIC_BASE_URL only; the token sits in the fragment, which browsers never
    # send to a server or in a Referer.
    link = f"{base_url}{INVITE_PATH}#token={token}"
    days = max(1, INVITE_TTL // 86400)
    mailer.send_later(
        email,
        f"You are invited to propose: {parent.title}",
        f"You are invited to send a proposal for the request \u201c{parent.title}\u201d on "
        f"Arena.\n\nOpen this link to sign in as a vendor and see the request (valid for "
        f"{days} days, usable once):\n\n{link}\n\n"
        "If you did not expect this invitation, ignore this message.\n",
    )
    log.info(
        "vendor invited",
        extra={"invite_id": str(invite.id), "request_id": str(request_id), "by": principal.user_id},
    )
    return invite


async def accept_invite(
    pool: asyncpg.Pool, relay: Kickable | None, tokens: TokenService, token: str
) -> Accepted:
    """Consume the invitation ``token`` and sign its invitee in as a vendor.

    Raises :class:`~storage.errors.NotFound` when the invitation is unknown, expired, already
    used or its request was deleted (indistinguishable on purpose).
    """
    async with pool.acquire() as conn, conn.transaction():
        invite = await invites.consume(conn, hash_secret(token))
        user = await users.get_or_create(conn, invite.email, "vendor")
        if user.role == "buyer":
            user = await users.set_role(conn, user.id, "vendor")
        await invites.set_accepted_by(conn, invite.id, user.id)
        await request_access.grant(conn, invite.request_id, user.id, invite.id)
        parent = await requests_db.get(conn, invite.request_id)
        await events.record_request_invited(conn, parent, user.id)
        user, refresh = await start_session(conn, tokens, user.id)
    events.kick(relay)
    log.info(
        "invitation accepted",
        extra={
            "invite_id": str(invite.id),
            "request_id": str(invite.request_id),
            "user_id": str(user.id),
        },
    )
    return Accepted(user, refresh, invite.request_id)
