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
    """A loopback TCP proxy to PostgreSQL that a test can cut, like a database outage.

    It can also hold back the end of a connection: when PostgreSQL terminates a backend
    (``pg_terminate_backend``, ``DROP DATABASE ... WITH (FORCE)``) it sends a ``FATAL`` error,
    then closes the socket, and a client on a loaded machine may read the error, run a task
    or two, and only then see the end. :meth:`hold_end` widens that gap at will."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        #: upstream ports whose end is held (when it comes), and those whose end came
        self._hold: set[int] = set()
        self._ended: set[int] = set()
        self._held: list[asyncio.StreamWriter] = []
        #: set once the server ended a connection whose end is held
        self.end_held = asyncio.Event()
        #: set once the client of that connection sent something more, or closed it
        self.client_moved = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        port: int,
        *,
        from_server: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                self._moved(port, from_server)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._moved(port, from_server)
            if from_server and port in self._hold:
                self._ended.add(port)
                self._held.append(writer)
                self.end_held.set()
            else:
                writer.close()

    def _moved(self, port: int, from_server: bool) -> None:
        if not from_server and port in self._ended:
            self.client_moved.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        # PostgreSQL reports this port as the backend's ``client_port``.
        port: int = up_writer.get_extra_info("sockname")[1]
        await asyncio.gather(
            self._pipe(reader, up_writer, port, from_server=False),
            self._pipe(up_reader, writer, port, from_server=True),
        )

    def hold_end(self, client_port: int) -> None:
        """When the server ends the connection of the backend whose ``client_port`` (in
        ``pg_stat_activity``) is ``client_port``, forward what it sent before but keep the
        client's side open (until :meth:`release_ends` or :meth:`cut`)."""
        self._hold.add(client_port)

    def release_ends(self) -> None:
        """Close the client side of the connections whose end was held."""
        held, self._held = self._held, []
        for writer in held:
            writer.close()

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
