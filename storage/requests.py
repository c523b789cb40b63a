"""Buyers' software requests: create, read, list (keyset pagination), update, delete.

Functions take a connection so that callers can run them inside the transaction that also
records the change's outbox event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from storage.errors import Conflict, NotFound, StaleVersion
from storage.query import Params, fetch_by_id, keyset_page

_COLUMNS = (
    "id, owner_id, title, description, requirements, budget, currency, deadline, status, "
    "created_at, updated_at, version"
)

#: Columns :func:`update` may change.
UPDATABLE = frozenset(
    {"title", "description", "requirements", "budget", "currency", "deadline", "status"}
)


@dataclass(frozen=True, slots=True)
class SoftwareRequest:
    """One row of ``requests``. ``requirements`` is a list of ``{name, description, priority}``."""

    id: UUID
    owner_id: UUID
    title: str
    description: str
    requirements: list[dict[str, Any]]
    budget: Decimal | None
    currency: str
    deadline: datetime | None
    status: str
    created_at: datetime
    updated_at: datetime
    version: int


def _request(row: asyncpg.Record) -> SoftwareRequest:
    return SoftwareRequest(**dict(row))


async def create(
    conn: asyncpg.Connection,
    *,
    owner_id: UUID | str,
    title: str,
    description: str,
    requirements: list[dict[str, Any]],
    budget: Decimal | None,
    currency: str,
    deadline: datetime | None,
) -> SoftwareRequest:
    """Insert an open request; raises :class:`NotFound` when the owner does not exist."""
    try:
        row = await conn.fetchrow(
            f"""
            INSERT INTO requests (owner_id, title, description, requirements, budget, currency,
                                  deadline)
            VALUES ($1::uuid, $2, $3, $4, $5, $6, $7)
            RETURNING {_COLUMNS}
            """,  # noqa: S608
            str(owner_id),
            title,
            description,
            requirements,
            budget,
            currency,
            deadline,
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("user") from None
    assert row is not None
    return _request(row)


async def get(
    conn: asyncpg.Connection, request_id: UUID | str, *, for_update: bool = False
) -> SoftwareRequest:
    """The request with ``request_id`` (row-locked with ``for_update``); raises NotFound."""
    select = f"SELECT {_COLUMNS} FROM requests"  # noqa: S608
    return _request(await fetch_by_id(conn, select, request_id, "request", for_update=for_update))


async def list_requests(
    conn: asyncpg.Connection,
    *,
    viewer_id: UUID | str | None,
    include_open: bool,
    status: str | None = None,
    owner_id: UUID | str | None = None,
    after: tuple[datetime, UUID] | None = None,
    limit: int = 20,
) -> list[SoftwareRequest]:
    """Requests newest first, ``limit`` of them, strictly after the ``after`` position.

    Visibility: ``viewer_id=None`` sees everything (admins); otherwise a viewer sees their own
    requests, those they submitted a proposal to or were given access to (``request_vendors``),
    and with ``include_open`` (vendors) every open request.
    """
    where: list[str] = []
    arg = Params()
    if viewer_id is not None:
        viewer = arg(str(viewer_id))
        visible = [
            f"r.owner_id = {viewer}::uuid",
            "EXISTS (SELECT 1 FROM proposals p WHERE p.request_id = r.id "  # noqa: S608
            f"AND p.vendor_id = {viewer}::uuid)",
            "EXISTS (SELECT 1 FROM request_vendors v WHERE v.request_id = r.id "  # noqa: S608
            f"AND v.vendor_id = {viewer}::uuid)",
        ]
        if include_open:
            visible.append("r.status = 'open'")
        where.append("(" + " OR ".join(visible) + ")")
    if status is not None:
        where.append(f"r.status = {arg(status)}")
    if owner_id is not None:
        where.append(f"r.owner_id = {arg(str(owner_id))}::uuid")
    select = f"SELECT {_COLUMNS} FROM requests r"  # noqa: S608
    sql = keyset_page(select, "r", where, arg, after, limit)
    return [_request(row) for row in await conn.fetch(sql, *arg.values)]


async def update(
    conn: asyncpg.Connection,
    request_id: UUID | str,
    changes: Mapping[str, Any],
    *,
    expected_version: int | None = None,
) -> SoftwareRequest:
    """Apply ``changes`` (columns of :data:`UPDATABLE`), bump the version, return the new row.

    Raises :class:`NotFound`, and :class:`StaleVersion` when ``expected_version`` is given and
    is not the row's version.
    """
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    args: list[Any] = [str(request_id)]
    sets = ["updated_at = now()", "version = version + 1"]
    for column, value in changes.items():
        args.append(value)
        sets.append(f"{column} = ${len(args)}")
    condition = "id = $1::uuid"
    if expected_version is not None:
        args.append(expected_version)
        condition += f" AND version = ${len(args)}"
    row = await conn.fetchrow(
        f"UPDATE requests SET {', '.join(sets)} WHERE {condition} RETURNING {_COLUMNS}",  # noqa: S608
        *args,
    )
    if row is None:
        await get(conn, request_id)  # NotFound if it is gone
        raise StaleVersion("request")
    return _request(row)


async def delete(
    conn: asyncpg.Connection, request_id: UUID | str, *, expected_version: int | None = None
) -> None:
    """Delete the request and its proposals.

    Raises :class:`NotFound`, :class:`StaleVersion`, and :class:`Conflict` for an awarded
    request (its accepted proposal is a record both parties rely on).
    """
    current = await get(conn, request_id, for_update=True)
    if expected_version is not None and current.version != expected_version:
        raise StaleVersion("request")
    if current.status == "awarded":
        raise Conflict("an awarded request cannot be deleted")
    await conn.execute("DELETE FROM requests WHERE id = $1::uuid", str(request_id))
