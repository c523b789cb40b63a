"""Starting a signed-in session: what every sign-in (magic link, accepted invitation) ends with.

Call inside the transaction that proved who the user is, so the proof (a consumed link or
invitation) and the new refresh-token family commit together.
"""

from __future__ import annotations

import hashlib
from uuid import UUID

import asyncpg

from services.auth.tokens import IssuedToken, TokenService
from storage import auth_tokens, users


def hash_secret(token: str) -> bytes:
    """SHA-256 of a one-time secret (sign-in link, invitation): what the database stores
    instead of the secret itself."""
    return hashlib.sha256(token.encode()).digest()


async def start_session(
    conn: asyncpg.Connection, tokens: TokenService, user_id: UUID | str
) -> tuple[users.User, IssuedToken]:
    """Stamp the login, start a refresh-token family; the user as stored now and the first
    refresh token of the family (the caller issues the access token from the user's role)."""
    await auth_tokens.record_login(conn, user_id)
    user = await users.get(conn, user_id)
    family = await auth_tokens.start_family(conn, user.id)
    refresh = tokens.issue_refresh(str(user.id), str(family))
    await auth_tokens.add_refresh_token(conn, family, refresh.jti, refresh.expires_at)
    return user, refresh
