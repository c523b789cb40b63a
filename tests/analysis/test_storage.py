"""Storage rules that protect finished analyses from late writers."""

from __future__ import annotations

import uuid
from typing import Any

from handlers import keys
from storage import analyses
from tests.analysis.support import seed_request
from tests.helpers import make_user


async def test_finished_rows_ignore_late_checkpoints_and_sweeps(client: Any) -> None:
    owner, _token = await make_user(client, "buyer")
    request_id = uuid.UUID(await seed_request(client, owner))
    async with client.server.app[keys.pool].acquire() as conn:
        async with conn.transaction():
            row = await analyses.create(
                conn,
                analysis_id=uuid.uuid4(),
                request_id=request_id,
                owner_id=uuid.UUID(owner),
                kind="summarize_request",
                provider="offline",
                model="m",
                node="n",
                per_user_limit=5,
            )
        assert await analyses.mark_running(conn, row.id)
        assert not await analyses.mark_running(conn, row.id)
        assert await analyses.checkpoint(conn, row.id, text="ab", seq=2, first_token_at=None)
        assert not await analyses.checkpoint(conn, row.id, text="a", seq=1, first_token_at=None)
        assert await analyses.finish(conn, row.id, status="done", text="abc", seq=3)
        assert not await analyses.checkpoint(conn, row.id, text="abcd", seq=9, first_token_at=None)
        assert not await analyses.finish(conn, row.id, status="failed", text="", seq=0)
        await conn.execute("UPDATE analyses SET heartbeat_at = now() - interval '1 day'")
        swept = await analyses.fail_abandoned(conn, lease_seconds=15, code="x", message="y")
        stored = await analyses.get(conn, row.id)
    assert swept == []
    assert (stored.status, stored.text, stored.seq, stored.error_code) == ("done", "abc", 3, None)
    assert stored.finished_at is not None
