"""Every wait on another service is bounded by a setting (docs/operations.md, Timeouts), and the
setting is the one the running service uses: a statement, a Redis command, a readiness check
or an SMTP exchange that takes longer fails after the configured time instead of hanging."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import redis.exceptions

from handlers import keys
from server.app import create_app
from server.settings import Settings, load_settings
from services.mail.mailer import make_backend
from tests.pubsub.support import BlackHoleProxy


async def test_a_statement_longer_than_db_command_timeout_is_cancelled(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(DB_COMMAND_TIMEOUT="0.5")))
    async with client.server.app[keys.pool].acquire() as conn:
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT pg_sleep(60)")
        assert await conn.fetchval("SELECT 1") == 1, "cancelled, and the connection still works"


async def test_ready_gives_up_after_ready_timeout(
    aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str, redis_prefix: str
) -> None:
    proxy = BlackHoleProxy(redis_url)
    await proxy.start()
    try:
        settings = make_settings(
            REDIS_URL=proxy.url,
            REDIS_PREFIX=redis_prefix,
            REDIS_COMMAND_TIMEOUT="60",
            READY_TIMEOUT="0.5",
        )
        client = await aiohttp_client(create_app(settings))
        assert (await client.get("/ready")).status == 200
        proxy.black_hole()  # Redis stops answering; only READY_TIMEOUT ends the broker check
        response = await client.get("/ready")
        body = await response.json()
    finally:
        await proxy.close()  # resets the connections, so shutdown does not wait on them
    assert response.status == 503, body
    assert body["broker"] == {"ok": False, "error": "TimeoutError", "backend": "redis"}
    assert body["database"]["ok"] is True


async def test_a_redis_command_longer_than_redis_command_timeout_fails(
    aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str, redis_prefix: str
) -> None:
    settings = make_settings(
        REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, REDIS_COMMAND_TIMEOUT="0.5"
    )
    client = await aiohttp_client(create_app(settings))
    with pytest.raises(redis.exceptions.TimeoutError):
        # A blocking pop on a key nobody writes: only the socket timeout ends it.
        await client.server.app[keys.redis].blpop([f"{redis_prefix}:nothing"], timeout=60)


@pytest.fixture
async def silent_smtp() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never says a word (no SMTP greeting)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in held:
        writer.close()
    with contextlib.suppress(Exception):
        await server.wait_closed()


async def test_an_smtp_server_that_never_answers_times_out_after_smtp_timeout(
    silent_smtp: int, tmp_path: Path
) -> None:
    env = {
        "DATA_DIR": str(tmp_path),
        "EMAIL_BACKEND": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(silent_smtp),
        "SMTP_STARTTLS": "false",
        "SMTP_TIMEOUT": "0.5",
    }
    backend = make_backend(load_settings(env).handlers.email)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "hi"
    message.set_content("hello")
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await backend.send(message)
