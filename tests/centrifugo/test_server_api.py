"""Backends written for Centrifugo publish through us unchanged: Centrifugo's own Python
client (``cent``, pinned in the test extra) talks to ``/api/<method>`` with ``X-API-Key``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType
from cent import (
    AsyncClient,
    BroadcastRequest,
    ChannelsRequest,
    Client,
    Disconnect,
    DisconnectRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    StreamPosition,
    UnsubscribeRequest,
)
from cent.exceptions import CentApiResponseError, CentTransportError, CentUnauthorizedError

from server.app import create_app
from server.settings import Settings, SettingsError, load_settings
from tests.helpers import connect, make_user, receive, request, service_token

STATIC_KEY = "static-centrifugo-api-key-0123456789-abcdefgh"


@pytest.fixture
async def cent_client(client: Any) -> AsyncIterator[AsyncClient]:
    """``cent.AsyncClient`` pointed at the test server's ``/api`` with a service token."""
    api = AsyncClient(str(client.make_url("/api")), service_token(client, "backend"))
    try:
        yield api
    finally:
        await api.close()


async def next_pub(ws: Any, channel: str) -> dict[str, Any]:
    while True:
        message = await receive(ws, timeout=10)
        if message.get("type") == "pub" and message.get("channel") == channel:
            return message


async def test_publish_reaches_subscribers_with_our_offsets(
    client: Any, cent_client: AsyncClient
) -> None:
    user_id, token = await make_user(client)
    channel = f"user:{user_id}"
    ws = await connect(client, token)
    subscribed = await request(ws, "subscribe", channel=channel)
    assert "result" in subscribed

    result = await cent_client.publish(PublishRequest(channel=channel, data={"text": "hello"}))

    assert result.offset == subscribed["result"]["offset"] + 1
    assert result.epoch == subscribed["result"]["epoch"]
    pub = await next_pub(ws, channel)
    assert pub["data"] == {"text": "hello"}
    assert pub["offset"] == result.offset
    await ws.close()


async def test_idempotency_key_returns_the_first_publication(cent_client: AsyncClient) -> None:
    first = await cent_client.publish(
        PublishRequest(channel="alerts:feed", data={"n": 1}, idempotency_key="order-42")
    )
    again = await cent_client.publish(
        PublishRequest(channel="alerts:feed", data={"n": 1}, idempotency_key="order-42")
    )
    history = await cent_client.history(HistoryRequest(channel="alerts:feed", limit=-1))

    assert again.offset == first.offset
    assert [pub.offset for pub in history.publications] == [first.offset]


async def test_broadcast_answers_per_channel(cent_client: AsyncClient) -> None:
    result = await cent_client.broadcast(
        BroadcastRequest(channels=["alerts:a", "nowhere:b", "alerts:c"], data={"x": 1})
    )

    offsets = [(r.result.offset if r.result else None) for r in result.responses]
    assert offsets == [1, None, 1]
    assert [(r.error.code if r.error else None) for r in result.responses] == [None, 102, None]


async def test_history_limit_since_and_reverse(cent_client: AsyncClient) -> None:
    channel = "alerts:history"
    for n in range(1, 6):
        await cent_client.publish(PublishRequest(channel=channel, data={"n": n}))

    position_only = await cent_client.history(HistoryRequest(channel=channel))
    assert position_only.publications == []
    assert position_only.offset == 5

    newest = await cent_client.history(HistoryRequest(channel=channel, limit=2))
    assert [(p.offset, p.data) for p in newest.publications] == [(4, {"n": 4}), (5, {"n": 5})]

    since = StreamPosition(offset=2, epoch=newest.epoch)
    after = await cent_client.history(HistoryRequest(channel=channel, limit=2, since=since))
    assert [p.offset for p in after.publications] == [3, 4]

    backwards = await cent_client.history(
        HistoryRequest(channel=channel, limit=2, since=since, reverse=True)
    )
    assert [p.offset for p in backwards.publications] == [1]
    latest_first = await cent_client.history(HistoryRequest(channel=channel, limit=3, reverse=True))
    assert [p.offset for p in latest_first.publications] == [5, 4, 3]

    with pytest.raises(CentApiResponseError) as wrong_epoch:
        await cent_client.history(
            HistoryRequest(channel=channel, limit=10, since=StreamPosition(offset=1, epoch="x"))
        )
    assert wrong_epoch.value.code == 112


async def test_presence_presence_stats_channels_and_info(
    client: Any, cent_client: AsyncClient
) -> None:
    user_id, token = await make_user(client)
    channel = "proposals:room-1"  # the proposals namespace has presence on
    connections = []
    for _ in range(2):
        ws = await connect(client, service_token(client, "tab"))
        assert "result" in await request(ws, "subscribe", channel=channel)
        connections.append(ws)
    own = await connect(client, token)
    assert "result" in await request(own, "subscribe", channel=f"user:{user_id}")

    presence = await cent_client.presence(PresenceRequest(channel=channel))
    assert len(presence.presence) == 2
    for client_id, info in presence.presence.items():
        assert info.client == client_id
        assert info.user == "service:tab"
    stats = await cent_client.presence_stats(PresenceStatsRequest(channel=channel))
    assert (stats.num_clients, stats.num_users) == (2, 1)

    channels = await cent_client.channels(ChannelsRequest())
    assert channels.channels[channel].num_clients == 2
    assert channels.channels[f"user:{user_id}"].num_clients == 1
    filtered = await cent_client.channels(ChannelsRequest(pattern="proposals:*"))
    assert list(filtered.channels) == [channel]

    info = await cent_client.info(InfoRequest())
    (node,) = info.nodes
    assert node.uid
    assert node.name
    assert node.version.startswith("arena-realtime")
    assert (node.num_clients, node.num_users, node.num_subs) == (3, 2, 3)
    assert node.num_channels == 2

    with pytest.raises(CentApiResponseError) as off:
        await cent_client.presence(PresenceRequest(channel="alerts:no-presence"))
    assert off.value.code == 108
    for ws in [*connections, own]:
        await ws.close()


async def test_disconnect_closes_every_connection_of_the_user(
    client: Any, cent_client: AsyncClient
) -> None:
    user_id, token = await make_user(client)
    first, second = await connect(client, token), await connect(client, token)

    await cent_client.disconnect(DisconnectRequest(user=user_id))
    for ws in (first, second):
        message = await ws.receive(timeout=10)
        assert message.type == WSMsgType.CLOSE
        assert ws.close_code == 4003

    third = await connect(client, token)
    await cent_client.disconnect(
        DisconnectRequest(user=user_id, disconnect=Disconnect(code=4500, reason="maintenance"))
    )
    message = await third.receive(timeout=10)
    assert (message.type, third.close_code, message.extra) == (
        WSMsgType.CLOSE,
        4500,
        "maintenance",
    )


async def test_unsubscribe_ends_the_users_subscription_on_every_node(
    redis_settings: Any, aiohttp_client: Any
) -> None:
    node_a = await aiohttp_client(create_app(redis_settings))
    node_b = await aiohttp_client(create_app(redis_settings))
    # admins may read any channel: the unsubscribe is the server's decision, not a rule's
    user_id, token = await make_user(node_a, "admin")
    other_id, other_token = await make_user(node_a, "admin")
    channel = "alerts:cent-unsubscribe"
    ws = await connect(node_b, token)
    bystander = await connect(node_b, other_token)
    for socket in (ws, bystander):
        for name in (channel, f"user:{user_id}" if socket is ws else f"user:{other_id}"):
            assert "result" in await request(socket, "subscribe", channel=name)

    async with AsyncClient(str(node_a.make_url("/api")), service_token(node_a)) as api:
        await api.unsubscribe(UnsubscribeRequest(user=user_id, channel=channel))
        while True:
            push = await receive(ws, timeout=15)
            if push.get("type") == "unsubscribe" and "result" not in push:
                break
        assert (push["channel"], push["code"]) == (channel, 2000)
        await api.publish(PublishRequest(channel=channel, data={"n": 1}))
        await api.publish(PublishRequest(channel=f"user:{user_id}", data={"marker": True}))
    while True:  # the user channel's publication comes; the unsubscribed channel's does not
        message = await receive(ws, timeout=15)
        if message.get("type") == "pub":
            assert message["channel"] == f"user:{user_id}", message
            break
    assert (await next_pub(bystander, channel))["data"] == {"n": 1}
    await ws.close()
    await bystander.close()


async def test_errors_are_the_ones_cent_raises(client: Any, cent_client: AsyncClient) -> None:
    url = str(client.make_url("/api"))
    async with AsyncClient(url, "not-a-key") as bad_key:
        with pytest.raises(CentUnauthorizedError):
            await bad_key.publish(PublishRequest(channel="alerts:x", data={}))
    _, buyer = await make_user(client)
    async with AsyncClient(url, buyer) as buyer_client:
        with pytest.raises(CentTransportError) as forbidden:
            await buyer_client.publish(PublishRequest(channel="alerts:x", data={}))
    assert forbidden.value.status_code == 403

    with pytest.raises(CentApiResponseError) as unknown:
        await cent_client.publish(PublishRequest(channel="chat:index", data={}))
    assert (unknown.value.code, unknown.value.message) == (102, "unknown channel")
    with pytest.raises(CentApiResponseError) as no_namespace:
        await cent_client.publish(PublishRequest(channel="index", data={}))
    assert no_namespace.value.code == 102
    with pytest.raises(CentApiResponseError) as tags:
        await cent_client.publish(PublishRequest(channel="alerts:x", data={}, tags={"k": "v"}))
    assert tags.value.code == 107
    with pytest.raises(CentApiResponseError) as no_user:
        await cent_client.unsubscribe(UnsubscribeRequest(user="", channel="alerts:x"))
    assert no_user.value.code == 107
    with pytest.raises(CentApiResponseError) as bad_channel:
        await cent_client.unsubscribe(UnsubscribeRequest(user="1", channel="chat:x"))
    assert bad_channel.value.code == 102


async def test_static_key_older_header_and_transport_error_mode(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(HTTP_API_KEY=STATIC_KEY)))
    body = {"channel": "alerts:static", "data": {"ok": True}}

    resp = await client.post("/api/publish", json=body, headers={"X-API-Key": STATIC_KEY})
    assert resp.status == 200
    assert await resp.json() == {
        "result": {"offset": 1, "epoch": (await resp.json())["result"]["epoch"]}
    }

    resp = await client.post(
        "/api/publish", json=body, headers={"Authorization": f"apikey {STATIC_KEY}"}
    )
    assert (await resp.json())["result"]["offset"] == 2

    resp = await client.post(
        "/api/publish",
        json={"channel": "chat:index", "data": {}},
        headers={"X-API-Key": STATIC_KEY, "X-Centrifugo-Error-Mode": "transport"},
    )
    assert resp.status == 404
    assert await resp.json() == {"code": 102, "message": "unknown channel"}

    resp = await client.post("/api/publish", data=b"{not json", headers={"X-API-Key": STATIC_KEY})
    assert resp.status == 400
    resp = await client.post("/api/publish", json=body, headers={"X-API-Key": STATIC_KEY[:-1]})
    assert resp.status == 401

    resp = await client.post(
        "/api/batch",
        json={"commands": [{"publish": body}, {"publish": {"channel": "x:y", "data": {}}}]},
        headers={"X-API-Key": STATIC_KEY},
    )
    assert (await resp.json())["replies"] == [
        {"publish": {"offset": 3, "epoch": (await resp.json())["replies"][0]["publish"]["epoch"]}},
        {"error": {"code": 102, "message": "unknown channel"}},
    ]


async def test_the_blocking_client_works_too(client: Any) -> None:
    api = Client(str(client.make_url("/api")), service_token(client))
    try:
        result = await asyncio.to_thread(
            api.publish, PublishRequest(channel="alerts:sync", data={"from": "requests"})
        )
    finally:
        api.close()
    assert result.offset == 1


def test_a_short_static_key_is_refused_at_startup(tmp_path: Any) -> None:
    with pytest.raises(SettingsError, match="HTTP_API_KEY"):
        load_settings({"DATA_DIR": str(tmp_path), "HTTP_API_KEY": "short"})


async def test_two_nodes_share_publications_presence_and_disconnects(
    aiohttp_client: Any, redis_settings: Settings
) -> None:
    """With the Redis broker, the node answering the API call is not the node the users are
    connected to: publications, presence and disconnects still reach them."""
    api_node = await aiohttp_client(create_app(redis_settings))
    ws_node = await aiohttp_client(create_app(redis_settings))
    user_id, token = await make_user(ws_node)
    ws = await connect(ws_node, token)
    channel = f"user:{user_id}"
    assert "result" in await request(ws, "subscribe", channel=channel)
    watcher = await connect(ws_node, service_token(ws_node, "watcher"))
    assert "result" in await request(watcher, "subscribe", channel="proposals:shared")

    async with AsyncClient(str(api_node.make_url("/api")), service_token(api_node)) as api:
        published = await api.publish(PublishRequest(channel=channel, data={"via": "node A"}))
        pub = await next_pub(ws, channel)
        assert (pub["offset"], pub["data"]) == (published.offset, {"via": "node A"})

        stats = await api.presence_stats(PresenceStatsRequest(channel="proposals:shared"))
        assert (stats.num_clients, stats.num_users) == (1, 1)

        await api.disconnect(DisconnectRequest(user=user_id))
        message = await ws.receive(timeout=10)
        assert (message.type, ws.close_code) == (WSMsgType.CLOSE, 4003)
    await watcher.close()
