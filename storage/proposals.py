"""Vendors' proposals and their state machine.

::

    submitted ──> shortlisted ──> accepted | rejected | withdrawn
        └──────────────────────> accepted | rejected | withdrawn

``accepted``, ``rejected`` and ``withdrawn`` are final. The database enforces the same
transitions (trigger ``proposals_transition``) and at most one accepted proposal per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from storage.errors import Conflict, NotFound, StaleVersion
from storage.query import Params, fetch_by_id, keyset_page

TRANSITIONS: dict[str, frozenset[str]] = {
    "submitted": frozenset({"shortlisted", "rejected", "accepted", "withdrawn"}),
    "shortlisted": frozenset({"rejected", "accepted", "withdrawn"}),
    "rejected": frozenset(),
    "accepted": frozenset(),
    "withdrawn": frozenset(),
}

_COLUMNS = (
    "id, request_id, vendor_id, price, currency, summary, answers, status, created_at, "
    "updated_at, version"
)


@dataclass(frozen=True, slots=True)
class Proposal:
    """One row of ``proposals``; ``answers`` holds ``{requirement, response, compliance}``."""

    id: UUID
    request_id: UUID
    vendor_id: UUID
    price: Decimal
    currency: str
    summary: str
    answers: list[dict[str, Any]]
    status: str
    created_at: datetime
    updated_at: datetime
    version: int


def _proposal(row: asyncpg.Record) -> Proposal:
    return Proposal(**dict(row))


def can_transition(current: str, target: str) -> bool:
    """Whether the state machine allows ``current -> target``."""
    return target in TRANSITIONS.get(current, frozenset())


async def create(
    conn: asyncpg.Connection,
    *,
    request_id: UUID | str,
    vendor_id: UUID | str,
    price: Decimal,
    currency: str,
    summary: str,
    answers: list[dict[str, Any]],
) -> Proposal:
    """Insert a submitted proposal.

    Raises :class:`Conflict` when the vendor already has one on this request and
    :class:`NotFound` when the request (or vendor) no longer exists.
    """
    try:
        row = await conn.fetchrow(
            f"""
            INSERT INTO proposals (request_id, vendor_id, price, currency, summary, answers)
            VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6)
            RETURNING {_COLUMNS}
            """,  # noqa: S608
            str(request_id),
            str(vendor_id),
            price,
            currency,
            summary,
            answers,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict("you already submitted a proposal for this request") from None
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("request") from None
    assert row is not None
    return _proposal(row)


async def get(
    conn: asyncpg.Connection, proposal_id: UUID | str, *, for_update: bool = False
) -> Proposal:
    """The proposal with ``proposal_id`` (row-locked with ``for_update``); raises NotFound."""
    select = f"SELECT {_COLUMNS} FROM proposals"  # noqa: S608
    return _proposal(
        await fetch_by_id(conn, select, proposal_id, "proposal", for_update=for_update)
    )


async def has_proposal(
    conn: asyncpg.Connection, request_id: UUID | str, vendor_id: UUID | str
) -> bool:
    """Whether ``vendor_id`` submitted a proposal (in any state) to ``request_id``."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM proposals WHERE request_id = $1::uuid "
        "AND vendor_id = $2::uuid)",
        str(request_id),
        str(vendor_id),
    )
    return found


async def vendor_ids(conn: asyncpg.Connection, request_id: UUID | str) -> list[UUID]:
    """The vendors with a proposal on ``request_id``."""
    rows = await conn.fetch(
        "SELECT vendor_id FROM proposals WHERE request_id = $1::uuid ORDER BY vendor_id",
        str(request_id),
    )
    return [row["vendor_id"] for row in rows]


async def list_proposals(
    conn: asyncpg.Connection,
    *,
    viewer_id: UUID | str | None,
    vendor_id: UUID | str | None = None,
    request_id: UUID | str | None = None,
    status: str | None = None,
    after: tuple[datetime, UUID] | None = None,
    limit: int = 20,
) -> list[Proposal]:
    """Proposals newest first, ``limit`` of them, strictly after the ``after`` position.

    ``viewer_id=None`` sees everything (admins); otherwise only proposals the viewer submitted
    or that answer the viewer's own requests.
    """
    where: list[str] = []
    arg = Params()
    if viewer_id is not None:
        viewer = arg(str(viewer_id))
        where.append(
            f"(p.vendor_id = {viewer}::uuid OR EXISTS (SELECT 1 FROM requests r "  # noqa: S608
            f"WHERE r.id = p.request_id AND r.owner_id = {viewer}::uuid))"
        )
    if vendor_id is not None:
        where.append(f"p.vendor_id = {arg(str(vendor_id))}::uuid")
    if request_id is not None:
        where.append(f"p.request_id = {arg(str(request_id))}::uuid")
    if status is not None:
        where.append(f"p.status = {arg(status)}")
    select = f"SELECT {_COLUMNS} FROM proposals p"  # noqa: S608
    sql = keyset_page(select, "p", where, arg, after, limit)
    return [_proposal(row) for row in await conn.fetch(sql, *arg.values)]


async def set_status(
    conn: asyncpg.Connection,
    proposal_id: UUID | str,
    status: str,
    *,
    expected_version: int | None = None,
) -> tuple[Proposal, str]:
    """Move the proposal to ``status``; returns the new row and the previous status.

    Locks the row, so concurrent changes are serialised: the loser sees the winner's state.
    Raises :class:`NotFound`; :class:`StaleVersion` when ``expected_version`` is given and is
    not the row's version; :class:`Conflict` for a transition the state machine forbids or a
    second accepted proposal on the request.
    """
    current = await get(conn, proposal_id, for_update=True)
    if expected_version is not None and current.version != expected_version:
        raise StaleVersion("proposal")
    if not can_transition(current.status, status):
        raise Conflict(f"a {current.status} proposal cannot become {status}")
    try:
        row = await conn.fetchrow(
            f"""
            UPDATE proposals SET status = $2, updated_at = now(), version = version + 1
            WHERE id = $1::uuid RETURNING {_COLUMNS}
            """,  # noqa: S608
            str(proposal_id),
            status,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict("the request already has an accepted proposal") from None
    except asyncpg.CheckViolationError:
        raise Conflict(f"a {current.status} proposal cannot become {status}") from None
    assert row is not None
    return _proposal(row), current.status
