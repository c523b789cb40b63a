"""Releasing pooled connections: no reset round trip for plain work, a full reset for
connections that hold session state (session advisory locks, LISTEN)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from handlers import keys
from server.app import create_app
from server.settings import Settings
from storage import outbox
from storage.connections import mark_session_state
from storage.db import create_pool
from tests.alerts.util import TcpProxy
from tests.helpers import DEADLINE, eventually

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


async def _relay_backend(admin: asyncpg.Connection) -> tuple[int, int] | None:
    """(pid, client_port) of the backend holding the outbox relay's leader lock in the
    database ``admin`` is connected to (other tests' relays hold it in theirs)."""
    row = await admin.fetchrow(
        "SELECT a.pid, a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.objid = $1 AND l.granted "
        "AND a.datname = current_database()",
        outbox.RELAY_LOCK_ID & 0xFFFFFFFF,
    )
    return None if row is None else (row["pid"], row["client_port"])


def _in_use(pool: asyncpg.Pool) -> int:
    """Connections acquired from ``pool`` and not released (closed ones included)."""
    return sum(not holder.is_idle() for holder in pool._holders)


@pytest.fixture
async def pg_proxy(database_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A proxy in front of this test's database and the database's URL through it (ask for
    it before ``aiohttp_client``: the app then closes before the proxy is cut)."""
    target = urlsplit(database_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    try:
        yield proxy, urlunsplit(target._replace(netloc=f"{target.username}@127.0.0.1:{proxy.port}"))
    finally:
        await proxy.cut()


async def test_the_relays_connection_goes_back_to_the_pool_when_its_backend_is_terminated(
    pg_proxy: tuple[TcpProxy, str],
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The outbox relay's connection (LISTEN, leader lock) is given back to the pool when
    PostgreSQL terminates its backend (``pg_terminate_backend``, ``DROP DATABASE ... WITH
    (FORCE)``), also when the relay queries after the server's ``FATAL`` arrived and before
    the end of the connection did: asyncpg then aborts the connection without its cleanup,
    the relay's listener stayed on it, and the pool's warning about it escaped
    ``Pool.release`` (warnings are errors here) before the connection was released, so it
    stayed in use for good and shutdown waited for it (a CI run hung in test_ops on it)."""
    proxy, proxied_url = pg_proxy
    app = create_app(make_settings(DATABASE_URL=proxied_url))
    client = await aiohttp_client(app)
    relay, pool = app[keys.relay], app[keys.pool]
    admin = await asyncpg.connect(database_url)
    try:
        await eventually(lambda: relay.leading, what="the relay leading")
        leader = await _relay_backend(admin)
        assert leader is not None
        pid, port = leader
        proxy.hold_end(port)
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        await asyncio.wait_for(proxy.end_held.wait(), DEADLINE)
        # The app reads the FATAL the proxy forwarded (not the end) at its next turns.
        await asyncio.sleep(0.05)
        relay.kick()  # its round runs on the broken connection
        await asyncio.wait_for(proxy.client_moved.wait(), DEADLINE)
        proxy.release_ends()

        async def leads_again() -> bool:
            backend = await _relay_backend(admin)
            return backend is not None and backend[0] != pid

        await eventually(leads_again, what="the relay leading on a new connection")
    finally:
        await admin.close()
    await eventually(lambda: relay.leading, what="the relay leading again")
    assert _in_use(pool) == 1  # the relay's new connection; the old one went back
    with caplog.at_level(logging.WARNING, logger="arena.storage"):
        await client.close()
    assert "database connections still in use at shutdown" not in caplog.text
