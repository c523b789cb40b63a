"""Releasing pooled connections: no reset round trip for plain work, a full reset for
connections that hold session state (session advisory locks, LISTEN)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from storage.connections import mark_session_state
from storage.db import create_pool

LOCK_ID = 0x7E57_0001


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # One connection, so every acquire gets the connection the previous one released.
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        yield pool
    finally:
        await pool.close()


async def _advisory_locks(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1", LOCK_ID
        )
        return count
    finally:
        await conn.close()


async def test_a_plain_release_sends_no_statement(pool: asyncpg.Pool) -> None:
    sent: list[str] = []

    def record(query: Any) -> None:
        sent.append(query.query)

    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
        raw = conn._con  # the pooled connection behind the proxy
        raw.add_query_logger(record)
    try:
        assert sent == []
    finally:
        raw.remove_query_logger(record)


async def test_an_open_transaction_is_rolled_back_on_release(
    pool: asyncpg.Pool, database_url: str
) -> None:
    async with pool.acquire() as conn:
        await conn.execute("BEGIN; CREATE TABLE left_open (x int)")
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT to_regclass('left_open')") is None


async def test_a_marked_session_lock_is_released_with_the_connection(
    pool: asyncpg.Pool, database_url: str
) -> None:
    async with pool.acquire() as conn:
        mark_session_state(conn)
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_ID)
        assert await _advisory_locks(database_url) == 1
    assert await _advisory_locks(database_url) == 0
    async with pool.acquire() as conn:
        # The next borrower of the same connection is not marked any more: a plain release.
        assert not conn._con.session_state


async def test_a_marked_listen_is_undone_on_release(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        mark_session_state(conn)
        await conn.execute("LISTEN pool_release_test")
        assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 1
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0


async def test_add_listener_marks_the_connection(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:

        def ignore(*_: Any) -> None:
            pass

        await conn.add_listener("pool_release_test", ignore)
        assert conn._con.session_state
        await conn.remove_listener("pool_release_test", ignore)


async def test_shutdown_does_not_wait_forever_for_a_connection_never_released(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection that is acquired and never released (a task dropped mid-query) must not
    hang shutdown: ``close_pool`` waits its timeout, then terminates the connections and
    says so. (asyncpg's ``Pool.close`` alone waits forever; a CI run hung on exactly that.)"""
    from storage.db import close_pool

    pool = await create_pool(database_url, min_size=1, max_size=2)
    leaked = await pool.acquire()
    assert await leaked.fetchval("SELECT 1") == 1
    with caplog.at_level("WARNING", logger="arena.storage"):
        await close_pool(pool, 0.5)
    assert pool.is_closing()
    with pytest.raises(asyncpg.InterfaceError):  # terminated under its holder
        await leaked.fetchval("SELECT 1")
    assert "database connections still in use at shutdown; terminated" in caplog.text
