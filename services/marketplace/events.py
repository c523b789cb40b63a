"""The marketplace's live events, written to the transactional outbox.

Every change records its events in the transaction that makes it, so an acknowledged change is
never missing from a channel; the outbox relay publishes them after the commit (:func:`kick`
wakes it at once). Payloads carry the same models the REST API returns
(:class:`~services.marketplace.models.RequestOut`, ``ProposalOut``), built from the row.

=====================  ==============================================  =========================
event                  channels                                        ``request``/``proposal``
=====================  ==============================================  =========================
``request.created``    ``proposals:{request_id}``, ``user:{owner}``    ``RequestOut``
``request.updated``    same                                            ``RequestOut``
``request.deleted``    same + ``user:{vendor}`` of every proposal      (only ``request_id``)
``request.invited``    ``user:{vendor}`` (an accepted invitation)      ``RequestOut``
``proposal.created``   ``user:{owner}``, ``user:{vendor}``             ``ProposalOut``
``proposal.*``         ``proposals:{request_id}``                      ``ProposalSummary``
=====================  ==============================================  =========================
"""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID

import asyncpg

from services.channels import names
from services.marketplace.models import ProposalOut, ProposalSummary, RequestOut
from storage import outbox
from storage.proposals import Proposal
from storage.requests import SoftwareRequest


class Kickable(Protocol):
    """The outbox relay, as far as writers are concerned."""

    def kick(self) -> None: ...


def kick(relay: Kickable | None) -> None:
    """Wake the outbox relay right after a commit that wrote events (no relay: nothing to do)."""
    if relay is not None:
        relay.kick()


async def record_request_event(conn: asyncpg.Connection, kind: str, row: SoftwareRequest) -> None:
    """``request.{kind}`` to the request's room and its owner."""
    payload = {
        "type": f"request.{kind}",
        "request_id": str(row.id),
        "request": RequestOut.json_of(row),
    }
    await outbox.add_event(conn, [names.proposals(row.id), names.user(row.owner_id)], payload)


async def record_request_deleted(
    conn: asyncpg.Connection, request_id: UUID, owner_id: UUID, vendor_ids: list[UUID]
) -> None:
    """``request.deleted`` to the room, the owner and every vendor who had a proposal on it."""
    channels = [names.proposals(request_id), names.user(owner_id)]
    channels += [names.user(vendor) for vendor in vendor_ids]
    await outbox.add_event(
        conn, channels, {"type": "request.deleted", "request_id": str(request_id)}
    )


async def record_request_invited(
    conn: asyncpg.Connection, row: SoftwareRequest, vendor_id: UUID
) -> None:
    """``request.invited`` to the vendor who just accepted an invitation to ``row``."""
    payload = {
        "type": "request.invited",
        "request_id": str(row.id),
        "request": RequestOut.json_of(row),
    }
    await outbox.add_event(conn, [names.user(vendor_id)], payload)


async def record_proposal_event(
    conn: asyncpg.Connection,
    kind: str,
    row: Proposal,
    owner_id: UUID,
    **extra: Any,
) -> None:
    """``proposal.{kind}``: full details to the two parties, a summary to the room (rivals)."""
    base = {"type": f"proposal.{kind}", "request_id": str(row.request_id), **extra}
    await outbox.add_event(
        conn,
        [names.proposals(row.request_id)],
        {**base, "proposal": ProposalSummary.json_of(row)},
    )
    await outbox.add_event(
        conn,
        [names.user(owner_id), names.user(row.vendor_id)],
        {**base, "proposal": ProposalOut.json_of(row)},
    )
