"""Who may read alert feeds."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from services.auth.principal import Principal
from services.channels.permissions import Rule
from storage import strategies


def alerts_rule(pool: asyncpg.Pool) -> Rule:
    """``alerts:{strategy_id}``: the strategy's owner and the users it is shared with."""

    async def rule(principal: Principal, ident: str) -> bool:
        try:
            strategy_id = UUID(ident)
            UUID(principal.user_id)
        except ValueError:
            return False
        async with pool.acquire() as conn:
            return await strategies.can_read(conn, strategy_id, principal.user_id)

    return rule
