"""Buyers' software requests: create, list, read, change, delete, and who may see them.

Visibility: owners and admins (and trusted services) see a request; vendors see open requests,
those they sent a proposal to and those they were invited to; to anyone else it does not exist
(:class:`~storage.errors.NotFound`). Only the owner (or an admin) changes or deletes it
(:class:`~services.errors.Forbidden`). Every change records its outbox event in the same
transaction and wakes the relay after the commit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.auth.principal import Principal
from services.channels import names, revocation
from services.channels.revocation import ControlPublisher
from services.errors import Forbidden, Invalid, InvalidState
from services.marketplace import events
from services.marketplace.events import Kickable
from services.marketplace.models import RequestCreate, RequestPatch, RequestQuery
from storage import proposals, request_access
from storage import requests as requests_db
from storage.errors import NotFound
from storage.requests import SoftwareRequest


def viewer_id(principal: Principal) -> str | None:
    """``None`` for callers who see everything (admins, trusted services), else the user id."""
    return None if principal.is_privileged else principal.user_id


def is_owner(principal: Principal, owner_id: UUID) -> bool:
    """Whether the caller owns the resource (admins count as owners)."""
    return principal.is_admin or principal.user_id == str(owner_id)


def require_role(principal: Principal, *roles: str) -> None:
    """:class:`Forbidden` unless the caller has one of ``roles`` (admins always pass)."""
    if principal.role not in roles and not principal.is_admin:
        raise Forbidden("your role may not do this")


async def can_see(conn: asyncpg.Connection, principal: Principal, row: SoftwareRequest) -> bool:
    """Whether ``principal`` may see the request ``row``."""
    if principal.is_privileged or principal.user_id == str(row.owner_id):
        return True
    if principal.role == "vendor":
        if row.status == "open":
            return True
        return await proposals.has_proposal(
            conn, row.id, principal.user_id
        ) or await request_access.has_access(conn, row.id, principal.user_id)
    return False


async def visible_request(
    conn: asyncpg.Connection,
    principal: Principal,
    request_id: UUID,
    *,
    for_update: bool = False,
) -> SoftwareRequest:
    """The request if the caller may see it; :class:`NotFound` otherwise."""
    row = await requests_db.get(conn, request_id, for_update=for_update)
    if not await can_see(conn, principal, row):
        raise NotFound("request")
    return row


async def create_request(
    pool: asyncpg.Pool, relay: Kickable | None, principal: Principal, body: RequestCreate
) -> SoftwareRequest:
    """Buyers (and admins) post a request; it starts ``open``."""
    require_role(principal, "buyer")
    if body.deadline is not None and body.deadline <= datetime.now(UTC):
        raise Invalid("request validation failed", {"deadline": ["must be in the future"]})
    async with pool.acquire() as conn, conn.transaction():
        row = await requests_db.create(
            conn,
            owner_id=principal.user_id,
            title=body.title,
            description=body.description,
            requirements=[r.model_dump() for r in body.requirements],
            budget=body.budget,
            currency=body.currency,
            deadline=body.deadline,
        )
        await events.record_request_event(conn, "created", row)
    events.kick(relay)
    return row


async def list_requests(
    pool: asyncpg.Pool,
    principal: Principal,
    query: RequestQuery,
    after: tuple[datetime, UUID] | None,
) -> list[SoftwareRequest]:
    """Up to ``query.limit + 1`` visible requests, newest first, after the ``after`` position
    (the extra one tells the caller that there is a next page)."""
    async with pool.acquire() as conn:
        return await requests_db.list_requests(
            conn,
            viewer_id=viewer_id(principal),
            include_open=principal.role == "vendor",
            status=query.status,
            owner_id=query.owner,
            after=after,
            limit=query.limit + 1,
        )


async def get_request(
    pool: asyncpg.Pool, principal: Principal, request_id: UUID
) -> SoftwareRequest:
    """The request if the caller may see it."""
    async with pool.acquire() as conn:
        return await visible_request(conn, principal, request_id)


async def update_request(
    pool: asyncpg.Pool,
    relay: Kickable | None,
    principal: Principal,
    request_id: UUID,
    body: RequestPatch,
    expected_version: int | None,
) -> SoftwareRequest:
    """Change the fields present in ``body`` (``null`` clears ``budget`` or ``deadline``)."""
    changes: dict[str, Any] = body.model_dump(
        include=set(requests_db.UPDATABLE), exclude_unset=True
    )
    if "requirements" in changes:
        changes["requirements"] = [r.model_dump() for r in body.requirements or []]
    if not changes:
        raise Invalid("nothing to change: send at least one field")
    async with pool.acquire() as conn, conn.transaction():
        current = await visible_request(conn, principal, request_id, for_update=True)
        if not is_owner(principal, current.owner_id):
            raise Forbidden("only the request's owner may change it")
        if "status" in changes and current.status == "awarded":
            raise InvalidState("an awarded request cannot be reopened or closed")
        row = await requests_db.update(conn, request_id, changes, expected_version=expected_version)
        await events.record_request_event(conn, "updated", row)
    events.kick(relay)
    return row


async def delete_request(
    pool: asyncpg.Pool,
    relay: Kickable | None,
    principal: Principal,
    request_id: UUID,
    expected_version: int | None,
    hub: ControlPublisher | None = None,
) -> None:
    """The owner (or an admin) deletes a request that has not been awarded, with its
    proposals; the vendors who had one or were invited hear of it, and lose their live
    subscriptions to its channel (on every node, via ``hub``)."""
    async with pool.acquire() as conn, conn.transaction():
        current = await visible_request(conn, principal, request_id, for_update=True)
        if not is_owner(principal, current.owner_id):
            raise Forbidden("only the request's owner may delete it")
        vendors = sorted(
            {
                *await proposals.vendor_ids(conn, request_id),
                *await request_access.vendor_ids(conn, request_id),
            }
        )
        await requests_db.delete(conn, request_id, expected_version=expected_version)
        await events.record_request_deleted(conn, request_id, current.owner_id, vendors)
    events.kick(relay)
    await revocation.channel_changed(hub, names.proposals(request_id))
