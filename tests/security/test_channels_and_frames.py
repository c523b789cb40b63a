"""WebSocket boundaries: channel permissions, foreign Origin, oversized frames, floods."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from handlers import keys
from server.app import create_app
from services.realtime.codecs.arena import CLOSE_RATE_LIMITED, CLOSE_TOO_BIG
from tests.helpers import DEADLINE, connect, make_user, request, send, service_token


async def _publications_until_pong(ws: Any) -> list[dict[str, Any]]:
    """Pushes received before the reply to a ping (which follows anything already queued)."""
    command_id = await send(ws, "ping")
    pushes = []
    while True:
        msg = await ws.receive(timeout=DEADLINE)
        assert msg.type == WSMsgType.TEXT
        data = msg.json()
        if data.get("type") == "reply" and data.get("id") == command_id:
            return pushes
        pushes.append(data)


async def test_user_channel_is_readable_by_its_owner_only(client: Any) -> None:
    owner_id, owner_token = await make_user(client)
    _, other_token = await make_user(client)
    hub = client.server.app[keys.hub]
    await hub.publish(f"user:{owner_id}", {"n": 0})
    owner = await connect(client, owner_token)
    other = await connect(client, other_token)
    channel = f"user:{owner_id}"
    assert "result" in await request(owner, "subscribe", channel=channel)
    denied = await request(other, "subscribe", channel=channel)
    assert denied["error"]["code"] == "permission_denied"
    # recovery (subscribe with a position) and history are checked the same way
    since = {"offset": 0, "epoch": "x"}
    denied = await request(other, "subscribe", channel=channel, since=since)
    assert denied["error"]["code"] == "permission_denied"
    denied = await request(other, "history", channel=channel)
    assert denied["error"]["code"] == "permission_denied"
    assert "result" in await request(owner, "history", channel=channel)

    await hub.publish(channel, {"n": 1, "secret": "for the owner"})
    owner_pushes = await _publications_until_pong(owner)
    assert any("for the owner" in str(p) for p in owner_pushes)
    assert await _publications_until_pong(other) == []


async def test_owner_can_recover_own_channel(client: Any) -> None:
    owner_id, token = await make_user(client)
    channel = f"user:{owner_id}"
    hub = client.server.app[keys.hub]
    first = await hub.publish(channel, {"n": 1})
    await hub.publish(channel, {"n": 2})
    ws = await connect(client, token)
    since = {"offset": first.offset, "epoch": first.epoch}
    reply = await request(ws, "subscribe", channel=channel, since=since)
    assert reply["result"]["recovered"] is True
    assert [p["data"]["n"] for p in reply["result"]["publications"]] == [2]


async def test_admin_and_service_may_read_user_channels(client: Any) -> None:
    owner_id, _ = await make_user(client)
    _, admin = await make_user(client, "admin")
    for token in (admin, service_token(client)):
        ws = await connect(client, token)
        assert "result" in await request(ws, "subscribe", channel=f"user:{owner_id}")
        await ws.close()


async def test_vendor_cannot_read_a_buyers_user_channel(client: Any) -> None:
    buyer_id, _ = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    ws = await connect(client, vendor)
    reply = await request(ws, "subscribe", channel=f"user:{buyer_id}")
    assert reply["error"]["code"] == "permission_denied"


async def test_unknown_namespace_is_refused(client: Any) -> None:
    _, token = await make_user(client)
    ws = await connect(client, token)
    reply = await request(ws, "subscribe", channel="secret:everything")
    assert reply["error"]["code"] in {"invalid_channel", "permission_denied"}


async def test_foreign_origin_is_refused_before_upgrade(client: Any) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws", origin="https://evil.example")
    assert info.value.status == 403
    # the refusal is the usual JSON error envelope (a plain GET with the upgrade headers)
    response = await client.get(
        "/ws",
        headers={
            "Origin": "https://evil.example",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    )
    assert response.status == 403
    assert (await response.json())["status_code"] == 403
    assert len(client.server.app[keys.connections]) == 0


async def test_oversized_frame_closes_with_1009(client: Any) -> None:
    _, token = await make_user(client)
    ws = await connect(client, token)
    size = client.server.app[keys.config].ws.max_frame_bytes + 1
    await ws.send_str('{"id": 1, "type": "ping", "pad": "' + "x" * size + '"}')
    msg = await ws.receive(timeout=DEADLINE)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert ws.close_code == CLOSE_TOO_BIG


async def test_oversized_frame_before_authenticate_closes_too(client: Any) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_str("x" * (client.server.app[keys.config].ws.max_frame_bytes + 1))
    msg = await ws.receive(timeout=DEADLINE)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert ws.close_code == CLOSE_TOO_BIG


async def test_command_flood_closes_with_4029_before_all_commands_run(
    make_settings: Any, aiohttp_client: Any
) -> None:
    settings = make_settings(WS_COMMAND_BURST="10", WS_COMMAND_RATE="1")
    client = await aiohttp_client(create_app(settings))
    _, token = await make_user(client)
    ws = await connect(client, token)
    await asyncio.gather(*(send(ws, "ping") for _ in range(50)))
    replies = 0
    while True:
        msg = await ws.receive(timeout=DEADLINE)
        if msg.type != WSMsgType.TEXT:
            break
        replies += 1
    assert ws.close_code == CLOSE_RATE_LIMITED
    assert replies < 50
