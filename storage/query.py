"""What the repositories' queries share: reading one row by id, and one page of a list
(keyset paging) built from optional filters.

A list query is built piece by piece: every value goes through a :class:`Params`, which hands
back its numbered placeholder (``$1``, ``$2``, ...), so the SQL text holds constants and
placeholders only::

    arg = Params()
    where = [f"r.status = {arg(status)}"]
    sql = keyset_page(f"SELECT {_COLUMNS} FROM requests r", "r", where, arg, after, limit)
    rows = await conn.fetch(sql, *arg.values)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from storage.errors import NotFound


class Params:
    """The values of a query under construction; ``arg(value)`` adds one and returns its
    placeholder."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def keyset_page(
    select: str,
    alias: str,
    where: list[str],
    arg: Params,
    after: tuple[datetime, UUID] | None,
    limit: int,
    *,
    stamp: str = "created_at",
    oldest_first: bool = False,
) -> str:
    """``select`` (``SELECT ... FROM table alias``) with the conditions ``where`` (joined with
    AND): ``limit`` rows ordered by ``(stamp, id)``, newest first (or oldest first), strictly
    after the ``after`` position (the ``(stamp, id)`` of the previous page's last row).
    Keyset paging: a page does not shift while rows are added."""
    conditions = list(where)
    if after is not None:
        beyond = ">" if oldest_first else "<"
        conditions.append(
            f"({alias}.{stamp}, {alias}.id) {beyond} ({arg(after[0])}, {arg(after[1])}::uuid)"
        )
    sql = select
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    order = "" if oldest_first else " DESC"
    return sql + (f" ORDER BY {alias}.{stamp}{order}, {alias}.id{order} LIMIT {arg(limit)}")


async def fetch_by_id(
    conn: asyncpg.Connection,
    select: str,
    row_id: UUID | str,
    what: str,
    *,
    for_update: bool = False,
) -> asyncpg.Record:
    """The row of ``select`` (``SELECT ... FROM table``) whose ``id`` is ``row_id``, row-locked
    until the end of the caller's transaction with ``for_update``; raises
    :class:`NotFound` (``what``) when there is none."""
    lock = " FOR UPDATE" if for_update else ""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"{select} WHERE id = $1::uuid{lock}", str(row_id)
    )
    if row is None:
        raise NotFound(what)
    return row
