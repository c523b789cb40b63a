"""Migrations: ordered, applied once each, recorded, protected against edits and races."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from storage.migrate import Migration, MigrationError, load_migrations, migrate

NAMES = [migration.name for migration in load_migrations()]


async def recorded(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")
    finally:
        await conn.close()
    return [row["name"] for row in rows]


def test_migration_files_are_ordered_and_named() -> None:
    assert NAMES, "the package ships its migrations"
    assert sorted(NAMES) == NAMES
    for name in NAMES:
        prefix, _, rest = name.partition("_")
        assert prefix.isdigit(), name
        assert len(prefix) == 4, name
        assert rest.endswith(".sql"), name


async def test_applied_once_and_recorded(database_url: str) -> None:
    assert await recorded(database_url) == NAMES
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn) == []  # up to date: nothing runs twice
        checksums = dict(await conn.fetch("SELECT name, checksum FROM schema_migrations"))
    finally:
        await conn.close()
    assert checksums == {m.name: m.checksum for m in load_migrations()}


async def test_edited_migration_is_refused(database_url: str) -> None:
    first = load_migrations()[0]
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(MigrationError, match=f"{first.name} was edited after it was applied"):
            await migrate(conn, [Migration(first.name, first.sql + "\n-- tweak\n")])
        # the advisory lock was released: the normal set still applies cleanly
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_failed_migration_rolls_back_and_is_not_recorded(database_url: str) -> None:
    bad = Migration("9999_bad.sql", "CREATE TABLE half_done (id int); SELECT * FROM no_such;")
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(MigrationError, match=r"9999_bad\.sql failed"):
            await migrate(conn, [*load_migrations(), bad])
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    finally:
        await conn.close()
    assert await recorded(database_url) == NAMES


async def test_concurrent_migrate_applies_each_migration_exactly_once(
    empty_database_url: str,
) -> None:
    conns = [await asyncpg.connect(empty_database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(conn) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()
    applied = [name for result in results for name in result]
    assert sorted(applied) == NAMES, results
    assert await recorded(empty_database_url) == NAMES


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
    env.update(DATABASE_URL=database_url, DATA_DIR=str(data_dir), LOG_LEVEL="INFO")
    return env


async def test_migrate_command_on_an_empty_database(
    empty_database_url: str, tmp_path: Path
) -> None:
    env = cli_env(empty_database_url, tmp_path)
    done = await asyncio.to_thread(run_cli, "migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "database is up to date" in done.stderr
    assert await recorded(empty_database_url) == NAMES
    again = await asyncio.to_thread(run_cli, "migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert "migration applied" not in again.stderr
    assert await recorded(empty_database_url) == NAMES


async def test_migrate_command_reports_an_unreachable_database(tmp_path: Path) -> None:
    env = cli_env("postgresql://postgres@127.0.0.1:1/nowhere", tmp_path)
    done = await asyncio.to_thread(run_cli, "migrate", env=env)
    assert done.returncode == 1
    assert "cannot migrate" in done.stderr
    assert "Traceback" not in done.stderr
