"""Magic links and refresh-token families (migration ``0002_auth``).

Magic links are stored only as the SHA-256 of the token (the caller hashes); consuming one is a
single ``UPDATE ... WHERE used_at IS NULL`` so two concurrent uses cannot both succeed.

Refresh tokens are stored by ``jti`` inside a *family* started at login. :func:`use_refresh_token`
locks the family row, so the rotations of one family are serialised across every instance;
presenting a token that was already used revokes the whole family.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from storage.errors import NotFound


async def create_magic_link(
    conn: asyncpg.Connection, token_hash: bytes, email: str, ttl: int
) -> None:
    """Record a magic link for ``email`` (lower-cased) valid for ``ttl`` seconds."""
    await conn.execute(
        "INSERT INTO magic_links (token_hash, email, expires_at) "
        "VALUES ($1, lower($2), now() + make_interval(secs => $3))",
        token_hash,
        email,
        float(ttl),
    )


async def consume_magic_link(conn: asyncpg.Connection, token_hash: bytes) -> str:
    """Mark the link used and return its e-mail address.

    Raises :class:`NotFound` when the link is unknown, already used or expired; the three are
    deliberately indistinguishable to the caller.
    """
    email: str | None = await conn.fetchval(
        "UPDATE magic_links SET used_at = now() "
        "WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING email",
        token_hash,
    )
    if email is None:
        raise NotFound("magic link")
    return email


async def record_login(conn: asyncpg.Connection, user_id: UUID | str) -> None:
    """Stamp the user's ``last_login_at``."""
    await conn.execute("UPDATE users SET last_login_at = now() WHERE id = $1::uuid", str(user_id))


async def start_family(conn: asyncpg.Connection, user_id: UUID | str) -> UUID:
    """A new refresh-token family for ``user_id`` (one per login); returns its id."""
    family: UUID = await conn.fetchval(
        "INSERT INTO refresh_families (user_id) VALUES ($1::uuid) RETURNING id", str(user_id)
    )
    return family


async def add_refresh_token(
    conn: asyncpg.Connection, family_id: UUID | str, jti: str, expires_at: int
) -> None:
    """Record an issued refresh token (``expires_at`` is a Unix time)."""
    await conn.execute(
        "INSERT INTO refresh_tokens (jti, family_id, expires_at) "
        "VALUES ($1, $2::uuid, to_timestamp($3))",
        jti,
        str(family_id),
        float(expires_at),
    )


class RefreshOutcome(enum.Enum):
    """What :func:`use_refresh_token` found."""

    OK = "ok"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    REUSED = "reused"


@dataclass(frozen=True, slots=True)
class RefreshUse:
    outcome: RefreshOutcome
    family_id: UUID | None = None
    user_id: UUID | None = None


async def use_refresh_token(conn: asyncpg.Connection, jti: str, family_id: str) -> RefreshUse:
    """Consume refresh token ``jti`` of family ``family_id``. Call inside a transaction.

    Outcomes: ``OK`` (now marked used: issue its successor in the same transaction),
    ``UNKNOWN``, ``EXPIRED``, ``REVOKED`` (the family was revoked earlier) or ``REUSED`` (the
    token had been used before: the family is revoked now). The revocation is part of the
    caller's transaction, which must therefore *commit* even though the request is refused.
    """
    family = await conn.fetchrow(
        "SELECT id, user_id, revoked_at FROM refresh_families WHERE id = $1::uuid FOR UPDATE",
        family_id,
    )
    if family is None:
        return RefreshUse(RefreshOutcome.UNKNOWN)
    token = await conn.fetchrow(
        "SELECT used_at, expires_at <= now() AS expired FROM refresh_tokens "
        "WHERE jti = $1 AND family_id = $2",
        jti,
        family["id"],
    )
    ids = {"family_id": family["id"], "user_id": family["user_id"]}
    if token is None:
        return RefreshUse(RefreshOutcome.UNKNOWN)
    if family["revoked_at"] is not None:
        return RefreshUse(RefreshOutcome.REVOKED, **ids)
    if token["used_at"] is not None:
        await revoke_family(conn, family["id"], "reuse")
        return RefreshUse(RefreshOutcome.REUSED, **ids)
    if token["expired"]:
        return RefreshUse(RefreshOutcome.EXPIRED, **ids)
    await conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE jti = $1", jti)
    return RefreshUse(RefreshOutcome.OK, **ids)


async def revoke_family(conn: asyncpg.Connection, family_id: UUID | str, reason: str) -> UUID:
    """Revoke every token of a family (idempotent); returns the family's user id.

    Raises :class:`NotFound` for an unknown family.
    """
    user_id: UUID | None = await conn.fetchval(
        "UPDATE refresh_families SET revoked_at = coalesce(revoked_at, now()), "
        "revoke_reason = coalesce(revoke_reason, $2) WHERE id = $1::uuid RETURNING user_id",
        str(family_id),
        reason,
    )
    if user_id is None:
        raise NotFound("refresh token family")
    return user_id


async def is_family_active(conn: asyncpg.Connection, family_id: UUID | str) -> bool:
    """Whether the family exists and is not revoked."""
    active: bool | None = await conn.fetchval(
        "SELECT revoked_at IS NULL FROM refresh_families WHERE id = $1::uuid", str(family_id)
    )
    return bool(active)


async def purge_expired(conn: asyncpg.Connection) -> int:
    """Delete magic links and refresh tokens expired for more than a day, and families left
    without tokens; returns how many rows went. Safe to run from several instances at once."""
    total = 0
    for sql in (
        "DELETE FROM magic_links WHERE expires_at < now() - interval '1 day'",
        "DELETE FROM refresh_tokens WHERE expires_at < now() - interval '1 day'",
        "DELETE FROM refresh_families f WHERE created_at < now() - interval '1 day' "
        "AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.family_id = f.id)",
    ):
        status = await conn.execute(sql)
        total += int(status.split()[-1])
    return total
