"""Admission limits, shutdown and crash recovery of analyses."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from handlers import keys
from server.app import create_app
from server.settings import Settings
from tests.analysis.fake_anthropic import FakeAnthropic, Script
from tests.analysis.support import auth, get, seed_request, start, wait_status
from tests.helpers import DEADLINE, make_user


async def test_full_queue_answers_429_and_frees_up_after_cancel(
    fake_anthropic: FakeAnthropic, aiohttp_client: Any, claude_settings: Callable[..., Settings]
) -> None:
    fake_anthropic.script = Script(tokens=["busy "], hang_after=0)
    settings = claude_settings(
        ANALYSIS_CONCURRENCY="1", ANALYSIS_QUEUE_SIZE="1", ANALYSIS_PER_USER="10"
    )
    client = await aiohttp_client(create_app(settings))
    owner, token = await make_user(client, "buyer")
    request_id = await seed_request(client, owner)

    running = await start(client, token, request_id)
    await wait_status(client, token, running["id"], "running")
    queued = await start(client, token, request_id)
    resp = await client.post(
        f"/api/v1/requests/{request_id}/analyses",
        json={"kind": "summarize_request"},
        headers=auth(token),
    )
    body = await resp.json()
    assert resp.status == 429
    assert body["error"] is True
    assert resp.headers["Retry-After"]
    assert len(fake_anthropic.requests) == 1, "only one analysis may run at a time"

    waiting = await get(client, token, queued["id"])
    assert waiting["status"] == "queued"
    assert waiting["started_at"] is None
    resp = await client.delete(f"/api/v1/analyses/{queued['id']}", headers=auth(token))
    cancelled = await resp.json()
    assert resp.status == 200
    assert cancelled["status"] == "cancelled"
    assert cancelled["started_at"] is None
    assert len(fake_anthropic.requests) == 1, "a cancelled queued analysis never starts"

    listed = await client.get(f"/api/v1/requests/{request_id}/analyses", headers=auth(token))
    items = (await listed.json())["items"]
    assert [item["id"] for item in items] == [queued["id"], running["id"]]
    assert [item["text"] for item in items] == [None, None]

    await start(client, token, request_id)  # the freed place is usable again


async def test_per_user_limit_holds_under_concurrent_starts(
    fake_anthropic: FakeAnthropic, aiohttp_client: Any, claude_settings: Callable[..., Settings]
) -> None:
    fake_anthropic.script = Script(tokens=["x "], hang_after=0)
    settings = claude_settings(ANALYSIS_CONCURRENCY="10", ANALYSIS_PER_USER="2")
    client = await aiohttp_client(create_app(settings))
    owner, token = await make_user(client, "buyer")
    _admin, admin_token = await make_user(client, "admin")
    request_id = await seed_request(client, owner)

    async def post() -> int:
        resp = await client.post(
            f"/api/v1/requests/{request_id}/analyses",
            json={"kind": "compare_proposals"},
            headers=auth(token),
        )
        await resp.read()
        return resp.status

    statuses = await asyncio.gather(*(post() for _ in range(6)))
    assert sorted(statuses) == [202, 202, 429, 429, 429, 429]
    # The limit is per user: an admin may still analyse the same request.
    await start(client, admin_token, request_id)


async def test_shutdown_records_running_analysis_as_interrupted(
    fake_anthropic: FakeAnthropic,
    aiohttp_client: Any,
    claude_settings: Callable[..., Settings],
    database_url: str,
) -> None:
    fake_anthropic.script = Script(tokens=["before ", "after "], hang_after=1)
    client = await aiohttp_client(create_app(claude_settings()))
    owner, token = await make_user(client, "buyer")
    request_id = await seed_request(client, owner)
    created = await start(client, token, request_id)
    async with asyncio.timeout(DEADLINE):
        while (await get(client, token, created["id"]))["text"] != "before ":
            await asyncio.sleep(0.02)

    await client.close()

    async with asyncio.timeout(DEADLINE):
        await fake_anthropic.disconnected.wait()
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT status, error_code, text, finished_at FROM analyses WHERE id = $1",
            uuid.UUID(created["id"]),
        )
    finally:
        await conn.close()
    assert row["status"] == "failed"
    assert row["error_code"] == "interrupted"
    assert row["text"] == "before "
    assert row["finished_at"] is not None


async def test_analysis_left_running_by_a_crash_fails_on_next_start(
    offline_client: Any, aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    owner, token = await make_user(offline_client, "buyer")
    request_id = await seed_request(offline_client, owner)
    pool = offline_client.server.app[keys.pool]
    stale = await pool.fetchval(
        "INSERT INTO analyses (request_id, owner_id, kind, status, provider, model, text, seq, "
        "node, started_at, heartbeat_at) VALUES ($1, $2, 'compare_proposals', 'running', "
        "'anthropic', 'claude-test-1', 'half an ans', 3, 'crashed-node', "
        "now() - interval '1 hour', now() - interval '1 hour') RETURNING id",
        uuid.UUID(request_id),
        uuid.UUID(owner),
    )

    restarted = await aiohttp_client(create_app(make_settings()))

    body = await get(restarted, token, str(stale))
    assert body["status"] == "failed"
    assert body["error"]["code"] == "interrupted"
    assert body["text"] == "half an ans"
    hub = restarted.server.app[keys.hub]
    channel = f"analysis:{stale}"
    history = await hub.broker.history(channel, hub.options(channel))
    events = [pub.data for pub in history.publications]
    assert len(events) == 1
    assert b'"code":"interrupted"' in events[0]
    # The crashed analysis no longer counts against the user's limit.
    await start(restarted, token, request_id)


async def test_cancel_reaches_the_node_running_the_analysis(
    fake_anthropic: FakeAnthropic,
    aiohttp_client: Any,
    claude_settings: Callable[..., Settings],
    redis_url: str,
    redis_prefix: str,
) -> None:
    fake_anthropic.script = Script(tokens=["remote ", "never "], hang_after=1)
    settings = claude_settings(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    runner_node = await aiohttp_client(create_app(settings))
    other_node = await aiohttp_client(create_app(settings))
    owner, token = await make_user(runner_node, "buyer")
    request_id = await seed_request(runner_node, owner)
    created = await start(runner_node, token, request_id)
    await wait_status(other_node, token, created["id"], "running")
    async with asyncio.timeout(DEADLINE):
        await fake_anthropic.streaming.wait()

    resp = await other_node.delete(f"/api/v1/analyses/{created['id']}", headers=auth(token))
    body = await resp.json()
    assert resp.status == 200, body
    assert body["status"] == "cancelled"
    async with asyncio.timeout(DEADLINE):
        await fake_anthropic.disconnected.wait()
    assert (await get(runner_node, token, created["id"]))["status"] == "cancelled"
