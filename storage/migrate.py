"""Ordered SQL migrations in ``storage/migrations``, applied once each, under an advisory lock.

Files are named ``NNNN_description.sql`` and applied in name order, each in its own
transaction; ``schema_migrations`` records the name and a checksum. Two instances starting at
once serialise on a PostgreSQL advisory lock, so a migration never runs twice. A recorded
migration whose file has changed is an error: migrations are append-only.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import asyncpg

from storage.connections import mark_session_state

log = logging.getLogger(__name__)

#: Arbitrary constant identifying "arena-realtime migrations" among advisory locks.
MIGRATION_LOCK_ID = 0x4152454E41  # "ARENA"


class MigrationError(Exception):
    """A migration failed or an applied migration's file was edited."""


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """All migration files shipped with the package, in order."""
    folder = resources.files("storage") / "migrations"
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    return [Migration(entry.name, entry.read_text(encoding="utf-8")) for entry in files]


@dataclass(frozen=True, slots=True)
class MigrationState:
    """Where one migration stands: ``applied`` (with ``applied_at``), ``pending``, ``edited``
    (applied, but its file changed since) or ``unknown`` (recorded, but no such file ships)."""

    name: str
    status: str
    applied_at: datetime | None = None


async def migration_status(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[MigrationState]:
    """Every shipped and every recorded migration, in name order; changes nothing."""
    migrations = load_migrations() if migrations is None else migrations
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    rows = (
        await conn.fetch("SELECT name, checksum, applied_at FROM schema_migrations")
        if exists
        else []
    )
    recorded = {row["name"]: row for row in rows}
    states = []
    for migration in migrations:
        row = recorded.pop(migration.name, None)
        if row is None:
            states.append(MigrationState(migration.name, "pending"))
        else:
            status = "applied" if row["checksum"] == migration.checksum else "edited"
            states.append(MigrationState(migration.name, status, row["applied_at"]))
    states += [MigrationState(name, "unknown", row["applied_at"]) for name, row in recorded.items()]
    return sorted(states, key=lambda state: state.name)


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    migrations = load_migrations() if migrations is None else migrations
    mark_session_state(conn)  # a session lock: a pooled connection must be reset after
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                name text PRIMARY KEY,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT name, checksum FROM schema_migrations")
        applied = {row["name"]: row["checksum"] for row in rows}
        done: list[str] = []
        for migration in migrations:
            recorded = applied.get(migration.name)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} was edited after it was applied; "
                        "add a new migration instead"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
            log.info("migration applied", extra={"migration": migration.name})
            done.append(migration.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
