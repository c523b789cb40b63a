"""Who may read the marketplace's channels."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from services.auth.principal import Principal
from services.channels.permissions import Rule
from storage import proposals, request_access
from storage import requests as requests_db
from storage.errors import NotFound


def proposals_rule(pool: asyncpg.Pool) -> Rule:
    """``proposals:{request_id}``: the request's owner, and vendors with a proposal on it or
    invited to it (an accepted invitation)."""

    async def rule(principal: Principal, ident: str) -> bool:
        try:
            request_id = UUID(ident)
        except ValueError:
            return False
        async with pool.acquire() as conn:
            try:
                parent = await requests_db.get(conn, request_id)
            except NotFound:
                return False
            if principal.user_id == str(parent.owner_id):
                return True
            if principal.role != "vendor":
                return False
            return await proposals.has_proposal(
                conn, request_id, principal.user_id
            ) or await request_access.has_access(conn, request_id, principal.user_id)

    return rule
