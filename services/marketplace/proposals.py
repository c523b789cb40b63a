"""Vendors' proposals: submit, list, read, and move through the state machine.

A proposal is visible to its vendor, to the owner of the request it answers, and to admins
(:class:`~storage.errors.NotFound` for everyone else). Who may move it where:

* the request's owner (or an admin) shortlists, rejects or accepts;
* the vendor (or an admin) withdraws;

anyone else who can see it gets :class:`~services.errors.Forbidden`. A transition the state
machine (``storage.proposals.TRANSITIONS``) forbids is :class:`~services.errors.InvalidState`.
Accepting requires the request to be open and awards it in the same transaction.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from services.auth.principal import Principal
from services.errors import Forbidden, Invalid, InvalidState
from services.marketplace import events
from services.marketplace.events import Kickable
from services.marketplace.models import ProposalCreate, ProposalQuery
from services.marketplace.requests import is_owner, require_role, viewer_id, visible_request
from storage import proposals
from storage import requests as requests_db
from storage.errors import NotFound, StaleVersion
from storage.proposals import Proposal
from storage.requests import SoftwareRequest

log = logging.getLogger(__name__)

#: Target status -> who may move a proposal there.
OWNER_MOVES = frozenset({"shortlisted", "rejected", "accepted"})
VENDOR_MOVES = frozenset({"withdrawn"})


async def visible_proposal(
    conn: asyncpg.Connection, principal: Principal, proposal_id: UUID, *, for_update: bool = False
) -> tuple[Proposal, SoftwareRequest]:
    """The proposal and its request if the caller may see it; :class:`NotFound` otherwise."""
    row = await proposals.get(conn, proposal_id, for_update=for_update)
    parent = await requests_db.get(conn, row.request_id)
    if not (
        principal.is_privileged or principal.user_id in (str(row.vendor_id), str(parent.owner_id))
    ):
        raise NotFound("proposal")
    return row, parent


async def create_proposal(
    pool: asyncpg.Pool,
    relay: Kickable | None,
    principal: Principal,
    request_id: UUID,
    body: ProposalCreate,
) -> Proposal:
    """Vendors answer an open request once; each answer names one of its requirements."""
    require_role(principal, "vendor")
    async with pool.acquire() as conn, conn.transaction():
        # Share-locking the request keeps it open (and present) until this commits.
        await conn.execute("SELECT 1 FROM requests WHERE id = $1 FOR SHARE", request_id)
        parent = await visible_request(conn, principal, request_id)
        if parent.status != "open":
            raise InvalidState(f"the request is {parent.status}")
        if parent.deadline is not None and parent.deadline <= datetime.now(UTC):
            raise InvalidState("the request's deadline has passed")
        requirement_names = {r["name"] for r in parent.requirements}
        errors = {
            f"answers.{i}.requirement": ["names no requirement of this request"]
            for i, answer in enumerate(body.answers)
            if answer.requirement not in requirement_names
        }
        if errors:
            raise Invalid("request validation failed", errors)
        row = await proposals.create(
            conn,
            request_id=request_id,
            vendor_id=principal.user_id,
            price=body.price,
            currency=body.currency,
            summary=body.summary,
            answers=[a.model_dump() for a in body.answers],
        )
        await events.record_proposal_event(conn, "created", row, parent.owner_id)
    events.kick(relay)
    return row


async def list_proposals(
    pool: asyncpg.Pool,
    principal: Principal,
    query: ProposalQuery,
    after: tuple[datetime, UUID] | None,
) -> list[Proposal]:
    """Up to ``query.limit + 1`` visible proposals, newest first: the caller's own (vendors)
    and those answering the caller's requests (buyers). A trusted service has no proposals of
    its own, so ``mine`` finds none."""
    if query.mine and principal.is_service:
        return []
    async with pool.acquire() as conn:
        return await proposals.list_proposals(
            conn,
            viewer_id=viewer_id(principal),
            vendor_id=principal.user_id if query.mine else None,
            request_id=query.request_id,
            status=query.status,
            after=after,
            limit=query.limit + 1,
        )


async def get_proposal(pool: asyncpg.Pool, principal: Principal, proposal_id: UUID) -> Proposal:
    """The proposal if the caller may see it."""
    async with pool.acquire() as conn:
        row, _ = await visible_proposal(conn, principal, proposal_id)
    return row


def check_mover(
    principal: Principal, status: str, proposal: Proposal, parent: SoftwareRequest
) -> None:
    """:class:`Forbidden` unless the caller may move ``proposal`` to ``status``."""
    if status in OWNER_MOVES and not is_owner(principal, parent.owner_id):
        raise Forbidden("only the request's owner may do this")
    if status in VENDOR_MOVES and not (
        principal.is_admin or principal.user_id == str(proposal.vendor_id)
    ):
        raise Forbidden("only the vendor may withdraw a proposal")


async def change_status(
    pool: asyncpg.Pool,
    relay: Kickable | None,
    principal: Principal,
    proposal_id: UUID,
    status: str,
    expected_version: int | None,
) -> Proposal:
    """Move the proposal to ``status``. An illegal transition is :class:`InvalidState`; a
    stale ``expected_version`` is :class:`~storage.errors.StaleVersion`."""
    async with pool.acquire() as conn, conn.transaction():
        current, _ = await visible_proposal(conn, principal, proposal_id)
        # Lock the request first, then the proposal: every writer takes them in this order.
        parent = await requests_db.get(conn, current.request_id, for_update=True)
        check_mover(principal, status, current, parent)
        locked = await proposals.get(conn, proposal_id, for_update=True)
        if expected_version is not None and locked.version != expected_version:
            raise StaleVersion("proposal")
        if not proposals.can_transition(locked.status, status):
            raise InvalidState(f"a {locked.status} proposal cannot become {status}")
        if status == "accepted" and parent.status != "open":
            raise InvalidState(f"the request is {parent.status}")
        row, previous = await proposals.set_status(
            conn, proposal_id, status, expected_version=expected_version
        )
        await events.record_proposal_event(
            conn, "status_changed", row, parent.owner_id, previous_status=previous
        )
        if status == "accepted":
            awarded = await requests_db.update(conn, parent.id, {"status": "awarded"})
            await events.record_request_event(conn, "updated", awarded)
    events.kick(relay)
    log.info(
        "proposal status changed",
        extra={
            "proposal_id": str(row.id),
            "request_id": str(row.request_id),
            "previous_status": previous,
            "status": row.status,
            "actor_id": principal.user_id,
        },
    )
    return row
