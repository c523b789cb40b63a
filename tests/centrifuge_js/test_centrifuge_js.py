"""The real centrifuge-js SDK against ``/connection/websocket``: connect with our token, subscribe,
receive REST publications, recover what it missed while disconnected, presence, permission
errors, client publications refused, token refresh through ``getToken``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from handlers import keys
from services.realtime.errors import Disconnect
from tests.centrifuge_js import NODE, NODE_REQUIRED, Driver, install
from tests.helpers import make_user, service_token

pytestmark = pytest.mark.skipif(
    NODE is None and not NODE_REQUIRED, reason="Node.js is not installed (CI requires it)"
)


@pytest.fixture(scope="module", autouse=True)
def _sdk() -> None:
    install()


def _url(client: Any) -> str:
    return f"ws://{client.host}:{client.port}/connection/websocket"


async def _request_channel(client: Any, owner_id: str) -> str:
    async with client.server.app[keys.pool].acquire() as conn:
        value = await conn.fetchval(
            "INSERT INTO requests (owner_id, title) VALUES ($1::uuid, 'SDK') RETURNING id",
            owner_id,
        )
    return f"proposals:{value}"


async def _publish(client: Any, channel: str, data: Any) -> int:
    response = await client.post(
        f"/api/v1/channels/{channel}/publish",
        json={"data": data},
        headers={"Authorization": f"Bearer {service_token(client)}"},
    )
    assert response.status < 300, await response.text()
    body = await response.json()
    return int(body["offset"])


async def test_subscribe_receive_and_recover_after_a_server_drop(client: Any) -> None:
    user_id, token = await make_user(client, "buyer")
    channel = await _request_channel(client, user_id)
    registry = client.server.app[keys.connections]
    sdk = await Driver.start(_url(client), token)
    try:
        await sdk.next("connected")
        sdk.send("subscribe", channel=channel)
        first = await sdk.next("subscribed", channel=channel)
        assert first["recoverable"] is True
        assert first["wasRecovering"] is False
        for i in range(5):
            await _publish(client, channel, {"i": i})
        for i in range(5):
            pub = await sdk.next("publication", channel=channel)
            assert (pub["data"], pub["offset"]) == ({"i": i}, i + 1)

        # The server drops every connection (as a node shutting down does) and refuses new
        # ones until five more publications are made: the SDK must recover all five.
        registry.close_all(Disconnect.SHUTDOWN, "test drop")
        await sdk.next("connecting")
        for i in range(5, 10):
            await _publish(client, channel, {"i": i})
        registry.accepting = True
        again = await sdk.next("subscribed", channel=channel)
        assert again["wasRecovering"] is True
        assert again["recovered"] is True
        for i in range(5, 10):
            pub = await sdk.next("publication", channel=channel)
            assert (pub["data"], pub["offset"]) == ({"i": i}, i + 1)
        # Live again after the recovery.
        await _publish(client, channel, {"i": 10})
        assert (await sdk.next("publication", channel=channel))["offset"] == 11
    finally:
        await sdk.close()


async def test_presence_permissions_publish_and_rpc(client: Any) -> None:
    user_id, token = await make_user(client, "buyer")
    channel = await _request_channel(client, user_id)
    sdk = await Driver.start(_url(client), token)
    try:
        connected = await sdk.next("connected")
        sdk.send("subscribe", channel=channel)
        await sdk.next("subscribed", channel=channel)
        # Presence is registered after the subscribe reply: poll until it shows up.
        loop_deadline = time.monotonic() + 15
        while True:
            sdk.send("presence", channel=channel)
            presence = (await sdk.next("result", op="presence"))["result"]["clients"]
            if presence or time.monotonic() > loop_deadline:
                break
        assert presence[connected["client"]]["user"] == user_id
        sdk.send("presenceStats", channel=channel)
        stats = (await sdk.next("result", op="presenceStats"))["result"]
        assert (stats["numClients"], stats["numUsers"]) == (1, 1)

        # A channel this buyer may not read: the SDK reports Centrifugo's 103.
        other = "alerts:00000000-0000-0000-0000-000000000000"
        sdk.send("subscribe", channel=other)
        denied = await sdk.next("unsubscribed", channel=other)
        assert denied["code"] == 103
        # An unknown namespace: 102 unknown channel.
        sdk.send("subscribe", channel="nosuch:thing")
        assert (await sdk.next("unsubscribed", channel="nosuch:thing"))["code"] == 102
        # Clients may not publish (only trusted backends, through the REST API): 103.
        sdk.send("publish", channel=channel, data={"x": 1})
        assert (await sdk.next("call_error", op="publish"))["code"] == 103
        # No RPC methods: 104 method not found.
        sdk.send("rpc", method="anything")
        assert (await sdk.next("call_error", op="rpc"))["code"] == 104
        # History: the position and the newest publications.
        await _publish(client, channel, {"h": 1})
        await sdk.next("publication", channel=channel)
        sdk.send("history", channel=channel, limit=10)
        history = (await sdk.next("result", op="history"))["result"]
        assert [p["data"] for p in history["publications"]] == [{"h": 1}]
        assert history["offset"] == 1
        # Centrifugo's filter: the newest first with ``reverse``, the ones after ``since``.
        await _publish(client, channel, {"h": 2})
        await sdk.next("publication", channel=channel)
        sdk.send("history", channel=channel, limit=1, reverse=True)
        newest = (await sdk.next("result", op="history"))["result"]
        assert [p["data"] for p in newest["publications"]] == [{"h": 2}]
        since = {"offset": 1, "epoch": history["epoch"]}
        sdk.send("history", channel=channel, limit=5, since=since)
        after = (await sdk.next("result", op="history"))["result"]
        assert [(p["offset"], p["data"]) for p in after["publications"]] == [(2, {"h": 2})]
        # Still connected through all of it.
        assert not [e for e in sdk.events if e["event"] == "disconnected"]
    finally:
        await sdk.close()


async def test_join_and_leave_reach_other_subscribers(client: Any) -> None:
    user_id, token = await make_user(client, "buyer")
    admin_id, admin_token = await make_user(client, "admin")
    channel = await _request_channel(client, user_id)
    watcher = await Driver.start(_url(client), token)
    other = await Driver.start(_url(client), admin_token)
    try:
        await watcher.next("connected")
        watcher.send("subscribe", channel=channel)
        await watcher.next("subscribed", channel=channel)
        await other.next("connected")
        other.send("subscribe", channel=channel)
        await other.next("subscribed", channel=channel)
        assert (await watcher.next("join", channel=channel, user=admin_id))["client"]
        await other.close()
        await watcher.next("leave", channel=channel, user=admin_id)
    finally:
        await watcher.close()
        await other.close()


async def test_token_refresh_through_get_token(client: Any) -> None:
    tokens = client.server.app[keys.tokens]
    short = tokens.issue_service("sdk-refresh", ttl=10)
    channel = "alerts:refresh"
    sdk = await Driver.start(_url(client), short.token)
    try:
        await sdk.next("connected")
        sdk.send("subscribe", channel=channel)
        await sdk.next("subscribed", channel=channel)
        # The connect reply said the connection expires: the SDK asks for a new token.
        await sdk.next("getToken")
        fresh = tokens.issue_service("sdk-refresh", ttl=600)
        sdk.send("token", token=fresh.token)
        # Past the first token's expiry (and a sweep of the expiry task), still connected.
        while time.time() < short.expires_at + 2.5:
            await _publish(client, channel, {"t": time.time()})
            await sdk.next("publication", channel=channel)
        # ... on the first connection: connected once, never dropped.
        assert [e["event"] for e in sdk.events if e["event"] in {"connected", "disconnected"}] == [
            "connected"
        ]
        assert not [e for e in sdk.events if e["event"] == "connecting" and e["code"] != 0]
    finally:
        await sdk.close()


async def test_an_expired_connection_reconnects_with_a_new_token(client: Any) -> None:
    tokens = client.server.app[keys.tokens]
    short = tokens.issue_service("sdk-expire", ttl=2)
    sdk = await Driver.start(_url(client), short.token)
    try:
        await sdk.next("connected")
        # The SDK's refresh (getToken) goes unanswered: the connection expires with
        # Centrifugo's "connection expired", which the SDK reconnects after ...
        connecting = await sdk.next("connecting", code=3005)
        # ... its reconnect with the old token gets 109 "token expired", so it asks for a new one
        assert (await sdk.next("error", type="connect"))["code"] == 109
        await sdk.next("getToken")
        sdk.send("token", token=tokens.issue_service("sdk-expire", ttl=600).token)
        assert connecting["reason"] == "token expired"
        await sdk.next("connected")
    finally:
        await sdk.close()
