"""AI analyses: their rows, and the read queries that gather what an analysis is about.

An analysis is ``queued`` → ``running`` → one of ``done``, ``failed``, ``cancelled``. Every
state change is a conditional ``UPDATE`` on the current status, so a late writer (a checkpoint
racing the final write, a sweeper racing a finishing node) never overwrites a finished row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from storage.errors import Conflict, NotFound
from storage.query import Params, keyset_page

KINDS = ("compare_proposals", "summarize_request", "question")
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")

_COLUMNS = (
    "id, request_id, owner_id, kind, question, status, provider, model, text, seq, usage, "
    "stop_reason, error_code, error_message, created_at, started_at, first_token_at, finished_at"
)


class TooManyActive(Conflict):
    """The user already has as many queued or running analyses as allowed."""


@dataclass(frozen=True, slots=True)
class Analysis:
    """One analysis row. ``text`` is final once ``status`` is finished, a checkpoint before."""

    id: UUID
    request_id: UUID
    owner_id: UUID
    kind: str
    #: what the caller asked, for ``kind == "question"``; None for the other kinds
    question: str | None
    status: str
    provider: str
    model: str
    text: str
    seq: int
    usage: dict[str, Any] | None
    stop_reason: str | None
    error_code: str | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    first_token_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Requirement:
    """One requirement of a request; ``priority`` is ``must``, ``should`` or ``nice``."""

    name: str
    description: str
    priority: str


@dataclass(frozen=True, slots=True)
class Answer:
    """A proposal's answer to one requirement; ``compliance`` is ``full``, ``partial``, ``none``."""

    requirement: str
    response: str
    compliance: str


@dataclass(frozen=True, slots=True)
class ProposalFacts:
    """A proposal as analyses see it."""

    id: UUID
    vendor_id: UUID
    vendor_email: str
    price: Decimal
    currency: str
    summary: str
    answers: tuple[Answer, ...]
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """A request as analyses see it."""

    id: UUID
    owner_id: UUID
    title: str
    description: str
    requirements: tuple[Requirement, ...]
    budget: Decimal | None
    currency: str
    deadline: datetime | None
    status: str


@dataclass(frozen=True, slots=True)
class AnalysisInput:
    """Everything an analysis reads: the request and every proposal, oldest first."""

    request: RequestFacts
    proposals: tuple[ProposalFacts, ...]


def _uuid(value: UUID) -> UUID:
    # asyncpg returns its own UUID subclass, which orjson does not serialise.
    return UUID(int=value.int)


def _analysis(row: asyncpg.Record) -> Analysis:
    values = {key: row[key] for key in row.keys()}  # noqa: SIM118
    for key in ("id", "request_id", "owner_id"):
        values[key] = _uuid(values[key])
    return Analysis(**values)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _requirements(raw: Any) -> tuple[Requirement, ...]:
    items = raw if isinstance(raw, list) else []
    found: list[Requirement] = []
    for item in items:
        if isinstance(item, dict) and _text(item.get("name")):
            priority = _text(item.get("priority"))
            found.append(
                Requirement(
                    _text(item.get("name")),
                    _text(item.get("description")),
                    priority if priority in ("must", "should", "nice") else "should",
                )
            )
    return tuple(found)


def _answers(raw: Any) -> tuple[Answer, ...]:
    items = raw if isinstance(raw, list) else []
    found: list[Answer] = []
    for item in items:
        if isinstance(item, dict) and _text(item.get("requirement")):
            compliance = _text(item.get("compliance"))
            found.append(
                Answer(
                    _text(item.get("requirement")),
                    _text(item.get("response")),
                    compliance if compliance in ("full", "partial", "none") else "none",
                )
            )
    return tuple(found)


async def request_owner(conn: asyncpg.Connection, request_id: UUID) -> UUID:
    """The owner of request ``request_id``; raises :class:`NotFound`."""
    owner: UUID | None = await conn.fetchval(
        "SELECT owner_id FROM requests WHERE id = $1", request_id
    )
    if owner is None:
        raise NotFound("request")
    return _uuid(owner)


async def analysed_request_owner(conn: asyncpg.Connection, analysis_id: UUID) -> UUID | None:
    """The owner of the request that analysis ``analysis_id`` is about, None if no such analysis."""
    owner: UUID | None = await conn.fetchval(
        "SELECT r.owner_id FROM analyses a JOIN requests r ON r.id = a.request_id WHERE a.id = $1",
        analysis_id,
    )
    return owner


async def load_input(conn: asyncpg.Connection, request_id: UUID) -> AnalysisInput:
    """The request with its requirements and every proposal; raises :class:`NotFound`.

    Malformed JSON items (which the schema's checks cannot rule out) are skipped, never fatal.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(
            "SELECT id, owner_id, title, description, requirements, budget, currency, deadline, "
            "status FROM requests WHERE id = $1",
            request_id,
        )
        if row is None:
            raise NotFound("request")
        rows = await conn.fetch(
            "SELECT p.id, p.vendor_id, u.email, p.price, p.currency, p.summary, p.answers, "
            "p.status, p.created_at FROM proposals p JOIN users u ON u.id = p.vendor_id "
            "WHERE p.request_id = $1 ORDER BY p.created_at, p.id",
            request_id,
        )
    request = RequestFacts(
        row["id"],
        row["owner_id"],
        row["title"],
        row["description"],
        _requirements(row["requirements"]),
        row["budget"],
        row["currency"],
        row["deadline"],
        row["status"],
    )
    proposals = tuple(
        ProposalFacts(
            p["id"],
            p["vendor_id"],
            p["email"],
            p["price"],
            p["currency"],
            p["summary"],
            _answers(p["answers"]),
            p["status"],
            p["created_at"],
        )
        for p in rows
    )
    return AnalysisInput(request, proposals)


async def create(
    conn: asyncpg.Connection,
    *,
    analysis_id: UUID,
    request_id: UUID,
    owner_id: UUID,
    kind: str,
    provider: str,
    model: str,
    node: str,
    per_user_limit: int,
    question: str | None = None,
) -> Analysis:
    """Insert a ``queued`` analysis with the given id. Call inside a transaction.

    Raises :class:`TooManyActive` when ``owner_id`` already has ``per_user_limit`` queued or
    running analyses (counted under a per-user advisory lock, so concurrent starts cannot both
    slip under the limit) and :class:`NotFound` when the request is gone.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", str(owner_id))
    active: int = await conn.fetchval(
        "SELECT count(*) FROM analyses WHERE owner_id = $1 AND status IN ('queued', 'running')",
        owner_id,
    )
    if active >= per_user_limit:
        raise TooManyActive(f"at most {per_user_limit} analyses may run at once per user")
    try:
        row = await conn.fetchrow(
            "INSERT INTO analyses (id, request_id, owner_id, kind, question, provider, model, "  # noqa: S608
            f"node) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS}",
            analysis_id,
            request_id,
            owner_id,
            kind,
            question,
            provider,
            model,
            node,
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("request") from None
    assert row is not None
    return _analysis(row)


async def get(conn: asyncpg.Connection, analysis_id: UUID) -> Analysis:
    """The analysis ``analysis_id``; raises :class:`NotFound`."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM analyses WHERE id = $1",  # noqa: S608
        analysis_id,
    )
    if row is None:
        raise NotFound("analysis")
    return _analysis(row)


async def list_for_request(
    conn: asyncpg.Connection, request_id: UUID, *, limit: int = 50
) -> list[Analysis]:
    """The newest ``limit`` analyses of a request, newest first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM analyses WHERE request_id = $1 "  # noqa: S608
        "ORDER BY created_at DESC, id DESC LIMIT $2",
        request_id,
        limit,
    )
    return [_analysis(row) for row in rows]


async def list_analyses(
    conn: asyncpg.Connection,
    *,
    viewer_id: UUID | None,
    kind: str | None = None,
    status: str | None = None,
    request_id: UUID | None = None,
    after: tuple[datetime, UUID] | None = None,
    limit: int = 20,
) -> list[Analysis]:
    """Analyses newest first, ``limit`` of them, strictly after the ``after`` position.

    ``viewer_id=None`` sees every analysis (admins); a viewer sees the analyses of the requests
    they own (whoever started them), which are exactly those they may read.
    """
    where: list[str] = []
    arg = Params()
    if viewer_id is not None:
        # Placeholders only: every value goes in ``args``.
        owned = f"SELECT r.id FROM requests r WHERE r.owner_id = {arg(viewer_id)}"  # noqa: S608
        where.append(f"a.request_id IN ({owned})")
    if kind is not None:
        where.append(f"a.kind = {arg(kind)}")
    if status is not None:
        where.append(f"a.status = {arg(status)}")
    if request_id is not None:
        where.append(f"a.request_id = {arg(request_id)}")
    columns = ", ".join(f"a.{name.strip()}" for name in _COLUMNS.split(","))
    select = f"SELECT {columns} FROM analyses a"  # noqa: S608
    sql = keyset_page(select, "a", where, arg, after, limit)
    rows = await conn.fetch(sql, *arg.values)
    return [_analysis(row) for row in rows]


async def mark_running(conn: asyncpg.Connection, analysis_id: UUID) -> bool:
    """``queued`` → ``running``; False when the analysis is no longer queued."""
    result: str = await conn.execute(
        "UPDATE analyses SET status = 'running', started_at = now(), heartbeat_at = now() "
        "WHERE id = $1 AND status = 'queued'",
        analysis_id,
    )
    return result == "UPDATE 1"


async def checkpoint(
    conn: asyncpg.Connection,
    analysis_id: UUID,
    *,
    text: str,
    seq: int,
    first_token_at: datetime | None,
) -> bool:
    """Store the partial text of a running analysis (only ever moving forward)."""
    result: str = await conn.execute(
        "UPDATE analyses SET text = $2, seq = $3, heartbeat_at = now(), "
        "first_token_at = coalesce(first_token_at, $4) "
        "WHERE id = $1 AND status = 'running' AND seq < $3",
        analysis_id,
        text,
        seq,
        first_token_at,
    )
    return result == "UPDATE 1"


async def heartbeat(conn: asyncpg.Connection, analysis_ids: list[UUID]) -> None:
    """Mark the given active analyses as still owned by a live process."""
    await conn.execute(
        "UPDATE analyses SET heartbeat_at = now() "
        "WHERE id = ANY($1::uuid[]) AND status IN ('queued', 'running')",
        analysis_ids,
    )


async def finish(
    conn: asyncpg.Connection,
    analysis_id: UUID,
    *,
    status: str,
    text: str,
    seq: int,
    first_token_at: datetime | None = None,
    usage: dict[str, Any] | None = None,
    stop_reason: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Record the outcome of an active analysis; False when it had already finished."""
    if status not in FINISHED:
        raise ValueError(f"not a final status: {status}")
    result: str = await conn.execute(
        "UPDATE analyses SET status = $2, text = $3, seq = $4, "
        "first_token_at = coalesce(first_token_at, $5), usage = $6, stop_reason = $7, "
        "error_code = $8, error_message = $9, finished_at = now(), heartbeat_at = now() "
        "WHERE id = $1 AND status IN ('queued', 'running')",
        analysis_id,
        status,
        text,
        seq,
        first_token_at,
        usage,
        stop_reason,
        error_code,
        error_message,
    )
    return result == "UPDATE 1"


async def fail_abandoned(
    conn: asyncpg.Connection, *, lease_seconds: float, code: str, message: str
) -> list[UUID]:
    """Fail active analyses whose process stopped refreshing them for ``lease_seconds``.

    Their partial text (the last checkpoint) is kept. Returns the ids that were failed.
    """
    rows = await conn.fetch(
        "UPDATE analyses SET status = 'failed', error_code = $2, error_message = $3, "
        "finished_at = now() WHERE status IN ('queued', 'running') "
        "AND heartbeat_at < now() - make_interval(secs => $1) RETURNING id",
        float(lease_seconds),
        code,
        message,
    )
    return [_uuid(row["id"]) for row in rows]
