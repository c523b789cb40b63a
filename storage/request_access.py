"""Vendors granted access to a request (table ``request_vendors``, migration 0007).

A vendor gets access by accepting an invitation from the request's owner; with it they see the
request whatever its status and may read its ``proposals:{request_id}`` room.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg


async def grant(
    conn: asyncpg.Connection,
    request_id: UUID | str,
    vendor_id: UUID | str,
    invite_id: UUID | str | None = None,
) -> bool:
    """Give ``vendor_id`` access to ``request_id``; False when they already had it."""
    status: str = await conn.execute(
        "INSERT INTO request_vendors (request_id, vendor_id, invite_id) "
        "VALUES ($1::uuid, $2::uuid, $3::uuid) ON CONFLICT DO NOTHING",
        str(request_id),
        str(vendor_id),
        None if invite_id is None else str(invite_id),
    )
    return status.endswith(" 1")


async def has_access(
    conn: asyncpg.Connection, request_id: UUID | str, vendor_id: UUID | str
) -> bool:
    """Whether ``vendor_id`` was granted access to ``request_id``."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM request_vendors WHERE request_id = $1::uuid "
        "AND vendor_id = $2::uuid)",
        str(request_id),
        str(vendor_id),
    )
    return found


async def vendor_ids(conn: asyncpg.Connection, request_id: UUID | str) -> list[UUID]:
    """The vendors with access to ``request_id``."""
    rows = await conn.fetch(
        "SELECT vendor_id FROM request_vendors WHERE request_id = $1::uuid ORDER BY vendor_id",
        str(request_id),
    )
    return [row["vendor_id"] for row in rows]
