"""The transactional outbox: events recorded with the change they describe.

Write an event with :func:`add_event` inside the same transaction as the change; the relay
(``services.outbox.relay``) publishes unpublished events in id order and marks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

#: Advisory lock held by the one relay that publishes at a time (keeps per-channel order).
RELAY_LOCK_ID = 0x4152454E42

NOTIFY_CHANNEL = "arena_outbox"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    id: int
    channels: list[str]
    payload: dict[str, Any]


async def add_event(
    conn: asyncpg.Connection, channels: Sequence[str], payload: dict[str, Any]
) -> int:
    """Record an event for ``channels``; returns its id. Call inside the change's transaction."""
    event_id: int = await conn.fetchval(
        "INSERT INTO outbox (channels, payload) VALUES ($1, $2) RETURNING id",
        list(channels),
        payload,
    )
    return event_id


async def fetch_unpublished(conn: asyncpg.Connection, limit: int = 500) -> list[OutboxEvent]:
    """The oldest unpublished events, in id order."""
    rows = await conn.fetch(
        "SELECT id, channels, payload FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1",
        limit,
    )
    return [OutboxEvent(row["id"], list(row["channels"]), row["payload"]) for row in rows]


async def mark_published(conn: asyncpg.Connection, ids: Sequence[int]) -> None:
    """Stamp events as published."""
    await conn.execute(
        "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", list(ids)
    )


async def mark_published_and_fetch(
    conn: asyncpg.Connection, ids: Sequence[int], limit: int = 500
) -> list[OutboxEvent]:
    """:func:`mark_published` ``ids`` and :func:`fetch_unpublished` the next batch, in one
    statement (one round trip for a relay that is kept busy)."""
    # The SELECT sees the snapshot from before the UPDATE, hence the explicit exclusion.
    rows = await conn.fetch(
        "WITH marked AS (UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])) "
        "SELECT id, channels, payload FROM outbox WHERE published_at IS NULL "
        "AND id <> ALL($1::bigint[]) ORDER BY id LIMIT $2",
        list(ids),
        limit,
    )
    return [OutboxEvent(row["id"], list(row["channels"]), row["payload"]) for row in rows]


async def pending_count(conn: asyncpg.Connection) -> int:
    """How many events wait to be published (exported as a metric)."""
    count: int = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    return count


async def prune_published(conn: asyncpg.Connection, older_than_seconds: int) -> int:
    """Delete published events older than the given age; returns how many."""
    result: str = await conn.execute(
        "DELETE FROM outbox WHERE published_at IS NOT NULL "
        "AND published_at < now() - make_interval(secs => $1)",
        float(older_than_seconds),
    )
    return int(result.split()[-1])
