"""The operator's command line against real databases: ``migrate --status``, a clear error
when PostgreSQL is unreachable, and ``seed-demo``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from handlers import keys
from server.app import create_app
from server.settings import Settings
from storage.migrate import load_migrations
from tests.conftest import TEST_SECRET, TEST_SERVICE_SECRET
from tests.helpers import connect, request

NAMES = [migration.name for migration in load_migrations()]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli_env(database_url: str, data_dir: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.endswith("_URL")}
    env.update(
        DATABASE_URL=database_url,
        DATA_DIR=str(data_dir),
        LOG_LEVEL="INFO",
        JWT_SECRET=TEST_SECRET,
        SERVICE_SECRET=TEST_SERVICE_SECRET,
    )
    return env


async def test_migrate_status_lists_pending_then_applied(
    empty_database_url: str, tmp_path: Path
) -> None:
    env = cli_env(empty_database_url, tmp_path)
    before = await asyncio.to_thread(run_cli, "migrate", "--status", env=env)
    assert before.returncode == 0, before.stderr
    lines = before.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["pending"] * len(NAMES)
    assert [line.split()[-1] for line in lines[:-1]] == NAMES
    assert lines[-1] == f"0 applied, {len(NAMES)} pending"
    conn = await asyncpg.connect(empty_database_url)
    try:  # --status changed nothing
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()

    assert (await asyncio.to_thread(run_cli, "migrate", env=env)).returncode == 0
    after = await asyncio.to_thread(run_cli, "migrate", "--status", env=env)
    assert after.returncode == 0, after.stderr
    lines = after.stdout.strip().splitlines()
    assert all(line.startswith("applied ") for line in lines[:-1])
    assert all(line.split()[1][:4].isdigit() for line in lines[:-1])  # when it was applied
    assert lines[-1] == f"{len(NAMES)} applied, 0 pending"


async def test_an_unreachable_postgresql_is_named_in_one_line(tmp_path: Path) -> None:
    url = "postgresql://postgres:hunter2-not-logged@127.0.0.1:1/nowhere"
    env = cli_env(url, tmp_path)
    env["PORT"] = "0"
    for command in (["serve"], ["migrate"], ["migrate", "--status"], ["seed-demo"]):
        done = await asyncio.to_thread(run_cli, *command, env=env)
        assert done.returncode == 1, (command, done.stderr)
        assert "Traceback" not in done.stderr
        assert "hunter2" not in done.stderr + done.stdout
        errors = [line for line in done.stderr.splitlines() if '"level":"error"' in line]
        assert len(errors) == 1, done.stderr
        assert "PostgreSQL at 127.0.0.1:1/nowhere is unreachable" in errors[0], errors[0]


async def test_seed_demo_fills_an_empty_database_and_the_service_shows_it(
    empty_database_url: str,
    tmp_path: Path,
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
) -> None:
    env = cli_env(empty_database_url, tmp_path)
    done = await asyncio.to_thread(run_cli, "seed-demo", env=env)
    assert done.returncode == 0, done.stderr
    assert "demo data created: 6 users, 3 requests, 5 proposals" in done.stdout
    assert "/webhooks/tv/" in done.stdout

    settings = make_settings(DATABASE_URL=empty_database_url)
    client = await aiohttp_client(create_app(settings))
    app = client.server.app
    async with app[keys.pool].acquire() as conn:
        maria = await conn.fetchrow(
            "SELECT id, role FROM users WHERE email = 'maria.keller@northwind.example'"
        )
        strategy_id = await conn.fetchval("SELECT id FROM strategies")
    assert maria["role"] == "buyer"
    token = app[keys.tokens].issue_access(str(maria["id"]), "buyer", None).token
    headers = {"Authorization": f"Bearer {token}"}

    mine = await (
        await client.get("/api/v1/requests?owner=" + str(maria["id"]), headers=headers)
    ).json()
    assert len(mine["items"]) == 2
    crm = next(item for item in mine["items"] if item["title"].startswith("CRM"))
    offers = await (
        await client.get(f"/api/v1/proposals?request_id={crm['id']}", headers=headers)
    ).json()
    assert sorted(p["status"] for p in offers["items"]) == ["rejected", "shortlisted"]
    feed = await (
        await client.get(f"/api/v1/alerts?strategy={strategy_id}", headers=headers)
    ).json()
    assert len(feed["items"]) == 6

    # The relay publishes the demo's outbox events: Maria's channel has the live history.
    deadline = time.monotonic() + 30
    async with app[keys.pool].acquire() as conn:
        while await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            assert time.monotonic() < deadline, "the outbox relay did not publish the demo events"
            app[keys.relay].kick()
            await asyncio.sleep(0.1)
    ws = await connect(client, token)
    history = await request(ws, "history", channel=f"user:{maria['id']}", limit=100)
    types = [pub["data"]["type"] for pub in history["result"]["publications"]]
    assert types.count("request.created") == 2
    assert "proposal.status_changed" in types
    await ws.close()


async def test_seed_demo_refuses_a_database_that_is_not_empty(
    database_url: str, tmp_path: Path
) -> None:
    env = cli_env(database_url, tmp_path)
    first = await asyncio.to_thread(run_cli, "seed-demo", env=env)
    assert first.returncode == 0, first.stderr
    conn = await asyncpg.connect(database_url)
    try:
        users_before = await conn.fetchval("SELECT count(*) FROM users")
        again = await asyncio.to_thread(run_cli, "seed-demo", env=env)
        assert again.returncode == 1
        assert "Traceback" not in again.stderr
        assert "the database is not empty (6 users, 3 requests" in again.stderr
        assert await conn.fetchval("SELECT count(*) FROM users") == users_before
    finally:
        await conn.close()
