"""Opening the database: the asyncpg pool (JSON through orjson, a cheap release: see
:mod:`storage.connections`), the embedded PostgreSQL fallback and migrations, in
:func:`open_database`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from storage.connections import ArenaConnection, reset_on_release
from storage.embedded import start_embedded
from storage.migrate import migrate

log = logging.getLogger("arena.storage")

#: seconds :meth:`OpenDatabase._close` waits for connections still in use before it terminates
#: them (asyncpg's ``Pool.close`` alone waits forever for a connection that is never released)
CLOSE_TIMEOUT = 10.0


class DatabaseUnreachable(ConnectionError):
    """PostgreSQL cannot be reached or refused us; the message names the server (host, port,
    database), never the password."""


def describe_dsn(dsn: str) -> str:
    """``host:port/database`` of a PostgreSQL URL, without credentials."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "the configured address"
    database = parts.path.lstrip("/") or "postgres"
    return f"{host}:{port}/{database}"


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float = 10.0,
    command_timeout: float = 30.0,
) -> asyncpg.Pool:
    """Open a pool whose connections encode and decode JSON columns with orjson and are
    released without a reset round trip unless marked (:mod:`storage.connections`).

    ``connect_timeout`` bounds opening each connection, ``command_timeout`` each statement.
    Raises :class:`DatabaseUnreachable` (a ``ConnectionError``, so one of
    ``storage.errors.UNAVAILABLE``) when the server cannot be reached or refuses the login.
    """
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            connection_class=ArenaConnection,
            reset=reset_on_release,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            max_inactive_connection_lifetime=300,
        )
    except OSError as exc:  # refused, unknown host, timeout
        reason = str(exc) or type(exc).__name__
        raise DatabaseUnreachable(
            f"PostgreSQL at {describe_dsn(dsn)} is unreachable: {reason}"
        ) from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # bad login, no database
        reason = str(exc) or type(exc).__name__
        raise DatabaseUnreachable(
            f"PostgreSQL at {describe_dsn(dsn)} refused the connection: {reason}"
        ) from exc
    assert pool is not None
    return pool


@dataclass(frozen=True, slots=True)
class Database:
    """An open database: its pool, ``kind`` (``postgres`` or ``embedded``) and the migrations
    applied while opening it (names, oldest first)."""

    pool: asyncpg.Pool
    kind: str
    applied: list[str]


class OpenDatabase:
    """``async with open_database(...) as database``: see :func:`open_database`.

    A class rather than an ``asynccontextmanager`` generator on purpose: it is entered from
    aiohttp's cleanup-context generator, and when start-up fails later, the event loop's
    shutdown closes every suspended async generator at once; a nested generator would be
    closed twice ("aclose(): asynchronous generator is already running").
    """

    def __init__(
        self,
        url: str | None,
        data_dir: Path,
        *,
        min_size: int,
        max_size: int,
        connect_timeout: float,
        command_timeout: float,
        apply_migrations: bool,
    ) -> None:
        self._url = url
        self._data_dir = data_dir
        self._sizes = (min_size, max_size)
        self._timeouts = (connect_timeout, command_timeout)
        self._apply = apply_migrations
        self._embedded: Any = None
        self._pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> Database:
        url, kind = self._url, "postgres"
        if url is None:
            self._embedded = await asyncio.to_thread(start_embedded, self._data_dir)
            url, kind = self._embedded.url, "embedded"
        try:
            self._pool = await create_pool(
                url,
                min_size=self._sizes[0],
                max_size=self._sizes[1],
                connect_timeout=self._timeouts[0],
                command_timeout=self._timeouts[1],
            )
            applied: list[str] = []
            if self._apply:
                async with self._pool.acquire() as conn:
                    applied = await migrate(conn)
        except BaseException:
            await self._close()
            raise
        return Database(self._pool, kind, applied)

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        embedded, self._embedded = self._embedded, None
        try:
            if pool is not None:
                await close_pool(pool, CLOSE_TIMEOUT)
        finally:
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)


def open_database(
    url: str | None,
    data_dir: Path,
    *,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float = 10.0,
    command_timeout: float = 30.0,
    apply_migrations: bool = True,
) -> OpenDatabase:
    """Open ``url``, or start the embedded PostgreSQL in ``data_dir`` when it is None; apply
    the migrations (under their advisory lock) unless told not to; close everything on exit.

    The one way the service and every CLI command open the database
    (``async with open_database(...) as database``). Raises :class:`DatabaseUnreachable` when
    the server cannot be reached (the embedded one is stopped again first).
    """
    return OpenDatabase(
        url,
        data_dir,
        min_size=min_size,
        max_size=max_size,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
        apply_migrations=apply_migrations,
    )


async def close_pool(pool: asyncpg.Pool, grace: float) -> None:
    """Close ``pool`` gracefully, waiting at most ``grace`` seconds for connections still in
    use; then terminate them (as asyncpg's documentation advises: ``Pool.close`` waits until
    every connection is released, so one connection that never is, say from a task that was
    dropped mid-query, would hang shutdown for good)."""
    try:
        async with asyncio.timeout(grace):
            await pool.close()
    except TimeoutError:
        log.warning(
            "database connections still in use at shutdown; terminated",
            extra={"grace_seconds": grace},
        )
        pool.terminate()
