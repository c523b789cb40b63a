"""Small helpers shared by tests: users with tokens, authenticated WebSocket clients, and
waiting for something to happen without depending on how fast the machine is."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from handlers import keys
from storage import users

_ids = itertools.count(1)

#: How long a test waits for something that should happen (a frame, a reconnect, a row). The
#: suite must pass on a loaded machine (2 cores, load average 6 and more), and a generous
#: deadline costs time only when the test fails anyway.
DEADLINE = 20.0


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout: float = DEADLINE,
    what: str = "",
    interval: float = 0.01,
) -> None:
    """Wait until ``check()`` (a function or a coroutine function) is true; fail after
    ``timeout`` seconds. Use it instead of ``sleep(x)`` followed by an assertion."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or check}")
        await asyncio.sleep(interval)


async def make_user(
    client: TestClient, role: str = "buyer", email: str | None = None
) -> tuple[str, str]:
    """Create a user with ``role``; returns ``(user_id, access_token)``."""
    app = client.server.app
    email = email or f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    async with app[keys.pool].acquire() as conn:
        user = await users.get_or_create(conn, email, role)
        if user.role != role:
            user = await users.set_role(conn, user.id, role)
    token = app[keys.tokens].issue_access(str(user.id), user.role, user.email).token
    return str(user.id), token


def service_token(client: TestClient, name: str = "tests") -> str:
    return client.server.app[keys.tokens].issue_service(name).token


async def send(ws: ClientWebSocketResponse, type_: str, **fields: Any) -> int:
    """Send a command; returns its id."""
    command_id = next(_ids)
    await ws.send_str(orjson.dumps({"id": command_id, "type": type_, **fields}).decode())
    return command_id


async def receive(ws: ClientWebSocketResponse, timeout: float = DEADLINE) -> dict[str, Any]:
    """The next JSON message; fails on close."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r}"
    data: dict[str, Any] = orjson.loads(msg.data)
    return data


async def request(ws: ClientWebSocketResponse, type_: str, **fields: Any) -> dict[str, Any]:
    """Send a command and return its reply, collecting pushes that arrive first."""
    command_id = await send(ws, type_, **fields)
    while True:
        message = await receive(ws)
        if message.get("type") == "reply" and message.get("id") == command_id:
            return message


async def connect(client: TestClient, token: str, **kwargs: Any) -> ClientWebSocketResponse:
    """An authenticated WebSocket connection."""
    ws = await client.ws_connect("/ws", **kwargs)
    reply = await request(ws, "authenticate", token=token)
    assert "result" in reply, reply
    return ws


async def close_code(ws: ClientWebSocketResponse, timeout: float = DEADLINE) -> int | None:
    """Read (and drop) frames until the server closes ``ws``; returns the close code."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            return ws.close_code
