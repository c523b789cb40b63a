"""Alert feeds ("strategies"): owners, sharing, and generations of webhook secrets.

A strategy has one or more *secret generations*. Each holds the SHA-256 of a URL secret (the
plain secret is never stored) and an encrypted signing key (encrypted by the caller; storage
only keeps bytes). A rotation gives the current generations an expiry and adds a new one, so
senders can switch over during the grace period.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from storage.errors import Conflict, NotFound, StaleVersion


@dataclass(frozen=True, slots=True)
class Strategy:
    id: UUID
    owner_id: UUID
    name: str
    created_at: datetime
    updated_at: datetime
    version: int
    shared_with: list[UUID]


@dataclass(frozen=True, slots=True)
class SecretGeneration:
    """One URL secret + signing key pair; valid while ``expires_at`` is None or in the future."""

    id: int
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class SealedSecret:
    """An encrypted signing secret and the end of its generation's validity (None: open)."""

    sealed: bytes
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class UrlMatch:
    """The feed that a URL secret hash belongs to, with the stored hash to compare."""

    strategy_id: UUID
    url_secret_sha256: bytes
    expires_at: datetime | None = None


_SELECT = """
    SELECT s.id, s.owner_id, s.name, s.created_at, s.updated_at, s.version,
           COALESCE(array_agg(sh.user_id ORDER BY sh.user_id)
                    FILTER (WHERE sh.user_id IS NOT NULL), '{}') AS shared_with
    FROM strategies s LEFT JOIN strategy_shares sh ON sh.strategy_id = s.id
"""


def _strategy(row: asyncpg.Record) -> Strategy:
    return Strategy(
        row["id"],
        row["owner_id"],
        row["name"],
        row["created_at"],
        row["updated_at"],
        row["version"],
        list(row["shared_with"]),
    )


async def create(
    conn: asyncpg.Connection,
    strategy_id: UUID,
    owner_id: UUID | str,
    name: str,
    url_secret_sha256: bytes,
    sealed_signing_secret: bytes,
) -> Strategy:
    """Create a strategy with its first secret generation.

    The caller picks ``strategy_id`` so it can bind the encrypted signing key to it.
    Raises :class:`NotFound` when the owner does not exist.
    """
    async with conn.transaction():
        try:
            row = await conn.fetchrow(
                "INSERT INTO strategies (id, owner_id, name) VALUES ($1, $2::uuid, $3) "
                "RETURNING id, owner_id, name, created_at, updated_at, version, "
                "'{}'::uuid[] AS shared_with",
                strategy_id,
                str(owner_id),
                name,
            )
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("user") from None
        assert row is not None
        await _add_generation(conn, strategy_id, url_secret_sha256, sealed_signing_secret)
    return _strategy(row)


async def _add_generation(
    conn: asyncpg.Connection, strategy_id: UUID, url_secret_sha256: bytes, sealed: bytes
) -> None:
    await conn.execute(
        "INSERT INTO strategy_secrets (strategy_id, url_secret_sha256, signing_secret_enc) "
        "VALUES ($1, $2, $3)",
        strategy_id,
        url_secret_sha256,
        sealed,
    )


async def get(conn: asyncpg.Connection, strategy_id: UUID | str) -> Strategy:
    """The strategy; raises :class:`NotFound`."""
    row = await conn.fetchrow(_SELECT + " WHERE s.id = $1::uuid GROUP BY s.id", str(strategy_id))
    if row is None:
        raise NotFound("strategy")
    return _strategy(row)


async def list_visible(conn: asyncpg.Connection, user_id: UUID | str) -> list[Strategy]:
    """Strategies the user owns or that are shared with them, newest first."""
    rows = await conn.fetch(
        _SELECT  # noqa: S608
        + """
        WHERE s.owner_id = $1::uuid
           OR EXISTS (SELECT 1 FROM strategy_shares x
                      WHERE x.strategy_id = s.id AND x.user_id = $1::uuid)
        GROUP BY s.id ORDER BY s.created_at DESC, s.id DESC
        """,
        str(user_id),
    )
    return [_strategy(row) for row in rows]


async def can_read(conn: asyncpg.Connection, strategy_id: UUID | str, user_id: UUID | str) -> bool:
    """Whether the user owns the strategy or it is shared with them."""
    found: bool = await conn.fetchval(
        """
        SELECT EXISTS (SELECT 1 FROM strategies WHERE id = $1::uuid AND owner_id = $2::uuid)
            OR EXISTS (SELECT 1 FROM strategy_shares
                       WHERE strategy_id = $1::uuid AND user_id = $2::uuid)
        """,
        str(strategy_id),
        str(user_id),
    )
    return found


async def update(
    conn: asyncpg.Connection,
    strategy_id: UUID | str,
    *,
    name: str | None = None,
    shared_with: Sequence[UUID] | None = None,
    expected_version: int | None = None,
) -> Strategy:
    """Rename and/or replace the sharing list; bumps ``version``.

    Raises :class:`NotFound`, :class:`StaleVersion` when ``expected_version`` is given and
    differs, and :class:`Conflict` when a user in ``shared_with`` does not exist.
    """
    async with conn.transaction():
        current = await conn.fetchval(
            "SELECT version FROM strategies WHERE id = $1::uuid FOR UPDATE", str(strategy_id)
        )
        if current is None:
            raise NotFound("strategy")
        if expected_version is not None and current != expected_version:
            raise StaleVersion("strategy")
        await conn.execute(
            "UPDATE strategies SET name = COALESCE($2, name), updated_at = now(), "
            "version = version + 1 WHERE id = $1::uuid",
            str(strategy_id),
            name,
        )
        if shared_with is not None:
            await conn.execute(
                "DELETE FROM strategy_shares WHERE strategy_id = $1::uuid AND "
                "NOT (user_id = ANY($2::uuid[]))",
                str(strategy_id),
                list(shared_with),
            )
            try:
                await conn.execute(
                    "INSERT INTO strategy_shares (strategy_id, user_id) "
                    "SELECT $1::uuid, u FROM unnest($2::uuid[]) AS u ON CONFLICT DO NOTHING",
                    str(strategy_id),
                    list(shared_with),
                )
            except asyncpg.ForeignKeyViolationError:
                raise Conflict("shared_with names a user that does not exist") from None
        return await get(conn, strategy_id)


async def delete(conn: asyncpg.Connection, strategy_id: UUID | str) -> None:
    """Delete the strategy, its secrets, shares and alerts; raises :class:`NotFound`."""
    result: str = await conn.execute("DELETE FROM strategies WHERE id = $1::uuid", str(strategy_id))
    if result.split()[-1] == "0":
        raise NotFound("strategy")


async def rotate(
    conn: asyncpg.Connection,
    strategy_id: UUID,
    url_secret_sha256: bytes,
    sealed_signing_secret: bytes,
    grace_seconds: int,
) -> list[SecretGeneration]:
    """Add a secret generation; older ones expire ``grace_seconds`` from now (an earlier
    expiry is kept). Returns every generation still valid. Raises :class:`NotFound`."""
    async with conn.transaction():
        exists = await conn.fetchval(
            "SELECT 1 FROM strategies WHERE id = $1 FOR UPDATE", strategy_id
        )
        if exists is None:
            raise NotFound("strategy")
        await conn.execute(
            "UPDATE strategy_secrets SET expires_at = LEAST(COALESCE(expires_at, 'infinity'), "
            "now() + make_interval(secs => $2)) WHERE strategy_id = $1",
            strategy_id,
            float(grace_seconds),
        )
        await _add_generation(conn, strategy_id, url_secret_sha256, sealed_signing_secret)
        return await generations(conn, strategy_id)


async def generations(conn: asyncpg.Connection, strategy_id: UUID | str) -> list[SecretGeneration]:
    """The valid secret generations, oldest first (metadata only)."""
    rows = await conn.fetch(
        "SELECT id, created_at, expires_at FROM strategy_secrets WHERE strategy_id = $1::uuid "
        "AND (expires_at IS NULL OR expires_at > now()) ORDER BY id",
        str(strategy_id),
    )
    return [SecretGeneration(row["id"], row["created_at"], row["expires_at"]) for row in rows]


async def find_by_url_secret(conn: asyncpg.Connection, url_secret_sha256: bytes) -> UrlMatch:
    """The strategy of a valid URL secret hash; raises :class:`NotFound` for unknown or
    expired secrets alike."""
    row = await conn.fetchrow(
        "SELECT strategy_id, url_secret_sha256, expires_at FROM strategy_secrets "
        "WHERE url_secret_sha256 = $1 AND (expires_at IS NULL OR expires_at > now())",
        url_secret_sha256,
    )
    if row is None:
        raise NotFound("webhook")
    return UrlMatch(row["strategy_id"], bytes(row["url_secret_sha256"]), row["expires_at"])


async def signing_secrets(conn: asyncpg.Connection, strategy_id: UUID | str) -> list[SealedSecret]:
    """The encrypted signing keys of every valid generation, newest first, with their expiry.

    Raises :class:`NotFound` when the strategy has none (unknown strategy)."""
    rows = await conn.fetch(
        "SELECT signing_secret_enc, expires_at FROM strategy_secrets WHERE strategy_id = $1::uuid "
        "AND (expires_at IS NULL OR expires_at > now()) ORDER BY id DESC",
        str(strategy_id),
    )
    if not rows:
        raise NotFound("strategy")
    return [SealedSecret(bytes(row["signing_secret_enc"]), row["expires_at"]) for row in rows]
