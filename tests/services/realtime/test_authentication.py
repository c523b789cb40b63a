"""WebSocket authentication: first command, timeout, in-band refresh, expiry, limits.

Bad tokens of every kind (forged, expired, wrong audience, ``alg: none``...) are refused by
``tests/security/test_tokens.py``."""

from __future__ import annotations

import time
from typing import Any

from server.app import create_app
from services.realtime.codecs.arena import (
    CLOSE_RATE_LIMITED,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_UNAUTHENTICATED,
)
from tests.auth.flows import closed_with
from tests.auth.tokens import forge
from tests.helpers import connect, make_user, request, send


async def test_authenticate_must_come_first(client: Any) -> None:
    ws = await client.ws_connect("/ws")
    await send(ws, "subscribe", channel="user:someone")
    await closed_with(ws, CLOSE_UNAUTHENTICATED)


async def test_no_authenticate_within_the_timeout_closes(
    make_settings: Any, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(create_app(make_settings(WS_AUTH_TIMEOUT="0.3")))
    ws = await client.ws_connect("/ws")
    await closed_with(ws, CLOSE_UNAUTHENTICATED)


async def test_token_in_query_string_is_ignored(client: Any) -> None:
    _, token = await make_user(client)
    ws = await client.ws_connect(f"/ws?token={token}&access_token={token}")
    await send(ws, "ping")
    await closed_with(ws, CLOSE_UNAUTHENTICATED)


async def test_access_expiry_without_refresh_closes(client: Any) -> None:
    user_id, _ = await make_user(client)
    ws = await connect(client, forge(sub=user_id, exp=int(time.time()) + 1))
    await closed_with(ws, CLOSE_UNAUTHENTICATED)


async def test_in_band_refresh_extends_the_session(client: Any) -> None:
    user_id, _ = await make_user(client)
    # Expires in 2-3 s: time enough for the refresh to land first even on a busy machine.
    short = forge(sub=user_id, exp=int(time.time()) + 3)
    ws = await connect(client, short)
    control = await connect(client, short)  # the same session, never refreshed
    later = int(time.time()) + 600
    reply = await request(ws, "refresh", token=forge(sub=user_id, exp=later))
    assert reply["result"]["expires_at"] == later
    # Once the server has closed the control for expiry, the original token is past its
    # expiry for the refreshed connection too (no fixed sleep: a busy server sweeps late).
    await closed_with(control, CLOSE_UNAUTHENTICATED)
    assert (await request(ws, "ping"))["result"] == {}
    await ws.close()


async def test_refresh_with_another_users_token_is_refused(client: Any) -> None:
    user_id, token = await make_user(client)
    _, other = await make_user(client)
    ws = await connect(client, token)
    reply = await request(ws, "refresh", token=other)
    assert reply["error"]["code"] == "unauthenticated"
    reply = await request(ws, "refresh", token=forge(sub=user_id, typ="refresh"))
    assert reply["error"]["code"] == "unauthenticated"
    await ws.close()


async def test_per_user_connection_limit(make_settings: Any, aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(WS_MAX_CONNECTIONS_PER_USER="2")))
    _, token = await make_user(client)
    first, second = await connect(client, token), await connect(client, token)
    third = await client.ws_connect("/ws")
    await send(third, "authenticate", token=token)
    await closed_with(third, CLOSE_TOO_MANY_CONNECTIONS)
    _, other = await make_user(client)
    await (await connect(client, other)).close()
    await first.close()
    await second.close()


async def test_per_user_command_limit_spans_connections(
    make_settings: Any, aiohttp_client: Any
) -> None:
    settings = make_settings(WS_USER_COMMAND_BURST="4", WS_USER_COMMAND_RATE="1")
    client = await aiohttp_client(create_app(settings))
    _, token = await make_user(client)
    one, two = await connect(client, token), await connect(client, token)
    for _ in range(2):
        assert "result" in await request(one, "ping")
        assert "result" in await request(two, "ping")
    # the user's burst of 4 is spent across both connections (each alone allows 100); 20 more
    # exceed it even if a busy machine took seconds so far (it refills one per second)
    for _ in range(20):
        await send(one, "ping")
    await closed_with(one, CLOSE_RATE_LIMITED)
    await two.close()
