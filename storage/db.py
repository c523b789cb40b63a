"""The asyncpg connection pool."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson


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
    """Open a pool whose connections encode and decode JSON columns with orjson.

    ``connect_timeout`` bounds opening each connection, ``command_timeout`` each statement.

    Raises the driver's connection errors (see ``storage.errors.UNAVAILABLE``) when the server
    cannot be reached.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        timeout=connect_timeout,
        command_timeout=command_timeout,
        max_inactive_connection_lifetime=300,
    )
    assert pool is not None
    return pool
