"""Invitations of vendors to a request (table ``request_invites``, migration 0007).

Like magic links, an invitation is stored only as the SHA-256 of its token (the caller hashes);
accepting one is a single ``UPDATE ... WHERE used_at IS NULL`` so two concurrent uses cannot
both succeed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from storage.errors import NotFound

_COLUMNS = "id, request_id, email, invited_by, created_at, expires_at, used_at, accepted_by"


@dataclass(frozen=True, slots=True)
class Invite:
    """One row of ``request_invites`` (without the token hash)."""

    id: UUID
    request_id: UUID
    email: str
    invited_by: UUID | None
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    accepted_by: UUID | None


def _invite(row: asyncpg.Record) -> Invite:
    return Invite(**dict(row))


async def create(
    conn: asyncpg.Connection,
    *,
    token_hash: bytes,
    request_id: UUID | str,
    email: str,
    invited_by: UUID | str,
    ttl: int,
) -> Invite:
    """Record an invitation of ``email`` (lower-cased) valid for ``ttl`` seconds; raises
    :class:`NotFound` when the request no longer exists."""
    try:
        row = await conn.fetchrow(
            f"""
            INSERT INTO request_invites (token_hash, request_id, email, invited_by, expires_at)
            VALUES ($1, $2::uuid, lower($3), $4::uuid, now() + make_interval(secs => $5))
            RETURNING {_COLUMNS}
            """,  # noqa: S608
            token_hash,
            str(request_id),
            email,
            str(invited_by),
            float(ttl),
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("request") from None
    assert row is not None
    return _invite(row)


async def consume(conn: asyncpg.Connection, token_hash: bytes) -> Invite:
    """Mark the invitation used and return it; call :func:`set_accepted_by` in the same
    transaction once the account is known.

    Raises :class:`NotFound` when the invitation is unknown, already used or expired (the three
    are deliberately indistinguishable), or its request was deleted.
    """
    row = await conn.fetchrow(
        f"UPDATE request_invites SET used_at = now() "  # noqa: S608
        f"WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING {_COLUMNS}",
        token_hash,
    )
    if row is None:
        raise NotFound("invitation")
    return _invite(row)


async def set_accepted_by(
    conn: asyncpg.Connection, invite_id: UUID | str, user_id: UUID | str
) -> None:
    """Record which account accepted the invitation."""
    await conn.execute(
        "UPDATE request_invites SET accepted_by = $2::uuid WHERE id = $1::uuid",
        str(invite_id),
        str(user_id),
    )
