"""Helpers for the alert-feed tests: strategies with secrets, signed and TradingView posts."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from handlers import keys
from services.alerts.signatures import sign


async def create_strategy(client: TestClient, token: str, name: str = "Breakout") -> dict[str, Any]:
    """POST a strategy; returns the 201 body (with its one-time secrets)."""
    response = await client.post(
        "/api/v1/strategies", json={"name": name}, headers={"Authorization": f"Bearer {token}"}
    )
    body: dict[str, Any] = await response.json()
    assert response.status == 201, body
    return body


def tv_path(strategy: dict[str, Any]) -> str:
    return f"/webhooks/tv/{strategy['secrets']['url_secret']}"


def signed_headers(
    secret: str, body: bytes, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "Content-Type": "application/json",
    }


async def post_signed(
    client: TestClient, strategy: dict[str, Any], payload: Any, **kwargs: Any
) -> Any:
    body = orjson.dumps(payload)
    headers = signed_headers(strategy["secrets"]["signing_secret"], body, **kwargs)
    return await client.post(f"/webhooks/alerts/{strategy['id']}", data=body, headers=headers)


async def count_rows(client: TestClient, table: str, strategy_id: str | None = None) -> int:
    """Rows of ``table`` (alerts or outbox) for the strategy, read straight from PostgreSQL."""
    async with client.server.app[keys.pool].acquire() as conn:
        if table == "alerts":
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM alerts WHERE strategy_id = $1::uuid", strategy_id
                )
            )
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE $1 = ANY(channels)", f"alerts:{strategy_id}"
            )
        )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL that a test can cut, like a database outage."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
