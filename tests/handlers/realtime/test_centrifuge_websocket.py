"""``/connection/websocket`` with the exact frames a Centrifugo SDK sends (client protocol v2,
JSON): newline-batched commands, replies keyed by method, pushes, error and close codes."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import ClientWebSocketResponse, WSMsgType

from handlers import keys
from server.app import create_app
from tests.helpers import make_user

PATH = "/connection/websocket"


async def _frames(ws: ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    """The next ``count`` JSON messages (a frame may carry several, one per line)."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        msg = await ws.receive(timeout=10)
        assert msg.type == WSMsgType.TEXT, msg
        out.extend(orjson.loads(line) for line in msg.data.split("\n") if line)
    return out


async def test_batched_connect_subscribe_and_a_publication(client: Any) -> None:
    _user_id, token = await make_user(client, "admin")
    ws = await client.ws_connect(PATH)
    batch = "\n".join(
        (
            orjson.dumps({"id": 1, "connect": {"token": token, "name": "js"}}).decode(),
            orjson.dumps(
                {"id": 2, "subscribe": {"channel": "alerts:raw", "recoverable": True}}
            ).decode(),
        )
    )
    await ws.send_str(batch)
    connect, subscribe = await _frames(ws, 2)
    assert connect["id"] == 1
    assert connect["connect"]["client"]
    assert connect["connect"]["version"]
    assert connect["connect"]["expires"] is True
    assert connect["connect"]["ttl"] > 0
    # Server pings every WS_HEARTBEAT seconds, answered with {}: the SDK's ping timer.
    assert (connect["connect"]["ping"], connect["connect"]["pong"]) == (25, True)
    assert subscribe == {
        "id": 2,
        "subscribe": {
            "recoverable": True,
            "positioned": True,
            "offset": 0,
            "epoch": subscribe["subscribe"]["epoch"],
        },
    }
    await client.server.app[keys.hub].publish("alerts:raw", {"price": 1})
    (push,) = await _frames(ws, 1)
    assert push == {"push": {"channel": "alerts:raw", "pub": {"data": {"price": 1}, "offset": 1}}}
    await ws.send_str("{}")  # a pong: ignored, no reply
    await ws.send_str(orjson.dumps({"id": 3, "history": {"channel": "alerts:raw"}}).decode())
    (history,) = await _frames(ws, 1)
    # no limit: only the stream position, as Centrifugo
    assert history["history"]["publications"] == []
    assert history["history"]["offset"] == 1
    await ws.send_str(orjson.dumps({"id": 4, "unsubscribe": {"channel": "alerts:nope"}}).decode())
    assert (await _frames(ws, 1)) == [{"id": 4, "unsubscribe": {}}]
    await ws.send_str(orjson.dumps({"id": 5, "subscribe": {"channel": "alerts:raw"}}).decode())
    assert (await _frames(ws, 1))[0]["error"]["code"] == 105
    await ws.send_str(orjson.dumps({"id": 6, "sub_refresh": {"channel": "alerts:raw"}}).decode())
    assert (await _frames(ws, 1))[0] == {
        "id": 6,
        "error": {"code": 108, "message": "subscription tokens are not used by this server"},
    }
    await ws.close()


async def test_recovery_fields_in_the_subscribe_reply(client: Any) -> None:
    _, token = await make_user(client, "admin")
    hub = client.server.app[keys.hub]
    for i in range(3):
        await hub.publish("alerts:rec", {"i": i})
    position = await hub.position("alerts:rec")
    ws = await client.ws_connect(PATH)
    await ws.send_str(orjson.dumps({"id": 1, "connect": {"token": token}}).decode())
    await _frames(ws, 1)
    sub = {"channel": "alerts:rec", "recover": True, "offset": 1, "epoch": position.epoch}
    await ws.send_str(orjson.dumps({"id": 2, "subscribe": sub}).decode())
    (reply,) = await _frames(ws, 1)
    body = reply["subscribe"]
    assert body["was_recovering"] is True
    assert body["recovered"] is True
    assert [(p["offset"], p["data"]) for p in body["publications"]] == [
        (2, {"i": 1}),
        (3, {"i": 2}),
    ]
    # a wrong epoch: not recovered (the stream was reset), never a silent gap
    await ws.send_str(orjson.dumps({"id": 3, "unsubscribe": {"channel": "alerts:rec"}}).decode())
    await _frames(ws, 1)
    sub["epoch"] = "other"
    await ws.send_str(orjson.dumps({"id": 4, "subscribe": sub}).decode())
    (reply,) = await _frames(ws, 1)
    assert reply["subscribe"]["was_recovering"] is True
    assert reply["subscribe"]["recovered"] is False
    await ws.close()


async def test_bad_token_closes_with_3500(client: Any) -> None:
    ws = await client.ws_connect(PATH)
    await ws.send_str(orjson.dumps({"id": 1, "connect": {"token": "nope"}}).decode())
    msg = await ws.receive(timeout=10)
    assert msg.type == WSMsgType.CLOSE
    assert ws.close_code == 3500  # invalid token: the SDK does not reconnect


async def test_a_command_before_connect_closes_with_3500(client: Any) -> None:
    ws = await client.ws_connect(PATH)
    await ws.send_str(orjson.dumps({"id": 1, "subscribe": {"channel": "alerts:x"}}).decode())
    await ws.receive(timeout=10)
    assert ws.close_code == 3500


async def test_binary_frames_close_with_3501(client: Any) -> None:
    _, token = await make_user(client, "admin")
    ws = await client.ws_connect(PATH)
    await ws.send_str(orjson.dumps({"id": 1, "connect": {"token": token}}).decode())
    await _frames(ws, 1)
    await ws.send_bytes(b"\x00")
    await ws.receive(timeout=10)
    assert ws.close_code == 3501


async def test_server_pings_come_every_heartbeat_even_to_a_busy_client(
    aiohttp_client: Any, make_settings: Any
) -> None:
    """Centrifugo SDKs reconnect when a server ping ``{}`` is later than ``ping`` seconds (plus
    their ``maxServerPingDelay``) after the last one, whatever else arrives: the pings come on
    schedule even to a client that sends commands all the time, and its ``{}`` pongs keep it
    connected."""
    client = await aiohttp_client(create_app(make_settings(WS_HEARTBEAT="1")))
    _user_id, token = await make_user(client, "admin")
    ws = await client.ws_connect(PATH)
    await ws.send_str(orjson.dumps({"id": 1, "connect": {"token": token}}).decode())
    (connect,) = await _frames(ws, 1)
    assert (connect["connect"]["ping"], connect["connect"]["pong"]) == (1, True)
    pings = 0
    command = 1
    while pings < 3:
        command += 1  # busy: a command before every read (paced under the command rate limit)
        assert command < 600, f"{pings} server pings in {command} round trips"
        await asyncio.sleep(0.05)
        await ws.send_str(orjson.dumps({"id": command, "ping": {}}).decode())
        (message,) = await _frames(ws, 1)
        if message == {}:
            pings += 1
            await ws.send_str("{}")  # the pong
        else:
            assert message == {"id": message["id"], "ping": {}}, message
    assert not ws.closed
    await ws.close()
