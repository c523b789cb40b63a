"""One client address cannot hold more than ``WS_MAX_UNAUTHENTICATED_PER_IP`` WebSocket sockets
that have not authenticated yet; authenticating or closing frees the slot."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from server.app import create_app
from services.realtime.admission import UnauthenticatedSockets
from tests.helpers import make_user, request

LIMIT = 3
#: The trusted proxy is loopback (the test client); X-Forwarded-For names the client.
PROXIED = {"TRUSTED_PROXIES": "127.0.0.0/8,::1"}
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


@pytest.fixture
async def capped(aiohttp_client: Any, make_settings: Any) -> TestClient:
    settings = make_settings(WS_MAX_UNAUTHENTICATED_PER_IP=str(LIMIT), **PROXIED)
    client: TestClient = await aiohttp_client(create_app(settings))
    return client


async def _open(client: TestClient, ip: str) -> ClientWebSocketResponse:
    return await client.ws_connect("/ws", headers={"X-Forwarded-For": ip})


async def _assert_refused(client: TestClient, ip: str) -> None:
    """The handshake is refused with 429 and the JSON error envelope, before any upgrade."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await _open(client, ip)
    assert info.value.status == 429
    response = await client.get("/ws", headers={**UPGRADE, "X-Forwarded-For": ip})
    assert response.status == 429
    body = await response.json()
    assert body["status_code"] == 429
    assert "not authenticated" in body["message"]
    assert int(response.headers["Retry-After"]) >= 1


async def test_unauthenticated_sockets_per_address_are_capped(capped: TestClient) -> None:
    held = [await _open(capped, "203.0.113.9") for _ in range(LIMIT)]
    await _assert_refused(capped, "203.0.113.9")
    # another address is not affected
    other = await _open(capped, "198.51.100.1")
    _, token = await make_user(capped)
    assert "result" in await request(other, "authenticate", token=token)
    # authenticating one of the held sockets frees its slot ...
    assert "result" in await request(held[0], "authenticate", token=token)
    extra = await _open(capped, "203.0.113.9")
    await _assert_refused(capped, "203.0.113.9")
    # ... and so does closing one
    await held[1].close()
    replacement = await _open(capped, "203.0.113.9")
    for ws in (*held, other, extra, replacement):
        await ws.close()


async def test_sockets_closed_by_the_auth_timeout_free_their_slots(
    aiohttp_client: Any, make_settings: Any
) -> None:
    settings = make_settings(WS_MAX_UNAUTHENTICATED_PER_IP="1", WS_AUTH_TIMEOUT="0.2", **PROXIED)
    client: TestClient = await aiohttp_client(create_app(settings))
    first = await _open(client, "203.0.113.10")
    closing = await first.receive(timeout=10)  # the server closes it: authentication timeout
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert first.close_code == 4001
    await first.close()
    # the server releases the slot when its handler returns; poll with a generous deadline
    deadline = time.monotonic() + 15
    while (status := await _handshake_status(client, "203.0.113.10")) == 429:
        assert time.monotonic() < deadline, "the timed-out socket never freed its slot"
        await asyncio.sleep(0.05)
    assert status == 101


async def _handshake_status(client: TestClient, ip: str) -> int:
    """101 when a WebSocket from ``ip`` is admitted (it is closed again at once), else the
    refusal's status."""
    try:
        ws = await _open(client, ip)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


class Sock:
    def __init__(self) -> None:
        self.authenticated = False


def test_the_counter_on_its_own() -> None:
    sockets: UnauthenticatedSockets[Sock] = UnauthenticatedSockets(2, lambda s: s.authenticated)
    a, b = sockets.admit("x"), sockets.admit("x")
    assert a is not None
    assert b is not None
    assert sockets.admit("x") is None
    assert sockets.admit("y") is not None
    assert sockets.pending("x") == 2
    # a ticket without a socket yet (upgrade in progress) counts
    sock = Sock()
    a.attach(sock)
    sock.authenticated = True
    assert sockets.pending("x") == 1
    assert sockets.admit("x") is not None
    assert sockets.admit("x") is None
    b.release()
    b.release()  # idempotent
    a.release()
    assert sockets.pending("x") == 1


async def test_the_cap_counts_every_websocket_endpoint_together(capped: TestClient) -> None:
    """Our protocol and the Centrifugo-compatible endpoint share one budget per address."""
    held = [await _open(capped, "203.0.113.11") for _ in range(LIMIT - 1)]
    centrifuge = await capped.ws_connect(
        "/connection/websocket", headers={"X-Forwarded-For": "203.0.113.11"}
    )
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await capped.ws_connect(
            "/connection/websocket", headers={"X-Forwarded-For": "203.0.113.11"}
        )
    assert info.value.status == 429
    await _assert_refused(capped, "203.0.113.11")
    for ws in (*held, centrifuge):
        await ws.close()
