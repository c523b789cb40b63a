"""The WebSocket routes skip the middleware chain (``handlers.middlewares.owns_request``) and
still do what it did for them: the request id in the log context for the connection's life,
the access log line and request metrics, and the JSON error envelope for a refused upgrade."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from server.logs import JsonFormatter
from tests.helpers import connect, eventually, make_user, request

_UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


class _JsonLines(logging.Handler):
    """Formats as in production, when the record is emitted (the request id is the one of the
    task that logs)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def logs() -> Iterator[_JsonLines]:
    logger = logging.getLogger("arena.http")
    handler, level = _JsonLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _access_lines(logs: _JsonLines, route: str) -> list[dict[str, Any]]:
    return [line for line in logs.lines if line["message"] == "request" and line["route"] == route]


async def _requests_metric(client: Any, route: str, status: int) -> float:
    text = await (await client.get("/metrics")).text()
    wanted = f'arena_http_requests_total{{method="GET",route="{route}",status="{status}"}} '
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("path", ["/ws", "/connection/websocket"])
async def test_the_connection_logs_its_request_id_and_is_counted_when_it_ends(
    client: Any, logs: _JsonLines, path: str
) -> None:
    ws = await client.ws_connect(path, headers={"X-Request-ID": "ws-conn-1"})
    if path == "/ws":
        _, token = await make_user(client, "admin")
        assert "result" in await request(ws, "authenticate", token=token)
    await ws.close()
    await eventually(lambda: _access_lines(logs, path) != [], what="the access log line")
    (line,) = _access_lines(logs, path)
    # logged at the end of the connection, from its task: every line the connection logs
    # carries the handshake's request id
    assert line["request_id"] == "ws-conn-1"
    assert (line["method"], line["status"]) == ("GET", 101)
    assert line["duration_ms"] >= 0
    assert await _requests_metric(client, path, 101) == 1


async def test_a_refused_origin_gets_the_error_envelope_with_the_request_id(
    client: Any, logs: _JsonLines
) -> None:
    resp = await client.get(
        "/ws",
        headers={**_UPGRADE, "Origin": "https://evil.example", "X-Request-ID": "ws-refused"},
    )
    assert resp.status == 403
    assert resp.headers["X-Request-ID"] == "ws-refused"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"  # security headers as usual
    body = await resp.json()
    assert (body["error"], body["status_code"], body["message"], body["request_id"]) == (
        True,
        403,
        "origin not allowed",
        "ws-refused",
    )
    (line,) = _access_lines(logs, "/ws")
    assert (line["status"], line["request_id"]) == (403, "ws-refused")
    assert await _requests_metric(client, "/ws", 403) == 1


async def test_a_plain_get_of_the_websocket_route_gets_a_400_envelope(client: Any) -> None:
    resp = await client.get("/ws", headers={"X-Request-ID": "not-an-upgrade"})
    assert resp.status == 400
    body = await resp.json()
    assert body["status_code"] == 400
    assert "upgrade" in body["message"].lower()  # aiohttp's reason, not a bare "Bad Request"
    assert body["request_id"] == "not-an-upgrade"
    assert resp.headers["X-Request-ID"] == "not-an-upgrade"


def _awaited_chain(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines ``task`` is suspended in, outermost first."""
    names = []
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_name)
        coro = coro.cr_await
    return names


async def test_an_open_connection_holds_no_middleware_frame(client: Any) -> None:
    """Every idle connection pays for each frame its handler awaits under (memory, see
    ``bench/conn_memory.py``): the read loop is awaited straight from aiohttp's request
    handling (and aiohttp's own ``_fix_request_current_app``, which any app with middlewares
    has)."""
    _, token = await make_user(client, "admin")
    ws = await connect(client, token)
    chains = [_awaited_chain(task) for task in asyncio.all_tasks()]
    (chain,) = [chain for chain in chains if "_serve" in chain]
    middlewares = {
        "request_context",
        "_request_context",
        "conditional_get_and_gzip",
        "error_envelope",
        "service_signatures",
    }
    assert not middlewares & set(chain), chain
    await ws.close()
