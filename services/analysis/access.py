"""Who may watch an analysis stream."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from services.auth.principal import Principal
from services.channels.permissions import Rule
from storage import analyses


def analysis_rule(pool: asyncpg.Pool) -> Rule:
    """``analysis:{id}``: the owner of the analysed request (admins pass before rules run)."""

    async def rule(principal: Principal, ident: str) -> bool:
        try:
            analysis_id = UUID(ident)
        except ValueError:
            return False
        async with pool.acquire() as conn:
            owner = await analyses.analysed_request_owner(conn, analysis_id)
        return owner is not None and principal.user_id == str(owner)

    return rule
