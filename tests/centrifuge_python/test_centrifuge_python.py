"""The real centrifuge-python SDK against ``/connection/websocket``: subscribe, REST
publications, presence, errors, and recovery when its node goes away and it reconnects to
another node on the same Redis (through a switchable TCP proxy, as a load balancer does)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    PublicationContext,
    StreamPosition,
    SubscribedContext,
    SubscriptionEventHandler,
    UnsubscribedContext,
)
from centrifuge.exceptions import ReplyError

from handlers import keys
from handlers.realtime.heartbeat import heartbeat_key
from server.app import create_app
from server.settings import Settings
from services.realtime.errors import Disconnect
from tests.helpers import eventually, make_user, service_token


class Events(ClientEventHandler, SubscriptionEventHandler):
    """Every SDK callback as ``(kind, context)`` in one queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        await self.queue.put(("connecting", ctx))

    async def on_connected(self, ctx: ConnectedContext) -> None:  # type: ignore[override]
        await self.queue.put(("connected", ctx))

    async def on_subscribed(self, ctx: SubscribedContext) -> None:  # type: ignore[override]
        await self.queue.put(("subscribed", ctx))

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:  # type: ignore[override]
        await self.queue.put(("unsubscribed", ctx))

    async def on_publication(self, ctx: PublicationContext) -> None:  # type: ignore[override]
        await self.queue.put(("publication", ctx))

    async def next(self, kind: str, timeout: float = 20.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                got, ctx = await self.queue.get()
                if got == kind:
                    return ctx


class Proxy:
    """A TCP proxy to one node at a time; ``target`` switches where new connections go."""

    def __init__(self, target: TestClient) -> None:
        self.target = target
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target.host, self.target.port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _request_channel(node: TestClient, owner_id: str) -> str:
    async with node.server.app[keys.pool].acquire() as conn:
        value = await conn.fetchval(
            "INSERT INTO requests (owner_id, title) VALUES ($1::uuid, 'SDK') RETURNING id",
            owner_id,
        )
    return f"proposals:{value}"


async def _publish(node: TestClient, channel: str, data: Any) -> None:
    response = await node.post(
        f"/api/v1/channels/{channel}/publish",
        json={"data": data},
        headers={"Authorization": f"Bearer {service_token(node)}"},
    )
    assert response.status < 300, await response.text()


def _url(node: TestClient) -> str:
    return f"ws://{node.host}:{node.port}/connection/websocket"


async def test_subscribe_presence_and_errors(client: TestClient) -> None:
    user_id, token = await make_user(client, "buyer")
    channel = await _request_channel(client, user_id)
    events = Events()
    sdk = Client(_url(client), events=events, token=token)
    sub = sdk.new_subscription(channel, events=events, recoverable=True, join_leave=True)
    try:
        await sdk.connect()
        connected = await events.next("connected")
        await sub.subscribe()
        subscribed = await events.next("subscribed")
        assert subscribed.recoverable is True
        assert subscribed.was_recovering is False
        for i in range(3):
            await _publish(client, channel, {"i": i})
        for i in range(3):
            pub = (await events.next("publication")).pub
            assert (pub.data, pub.offset) == ({"i": i}, i + 1)

        async with asyncio.timeout(15):  # presence is registered just after the reply
            while not (presence := await sdk.presence(channel)).clients:
                await asyncio.sleep(0.05)
        assert presence.clients[connected.client].user == user_id
        stats = await sdk.presence_stats(channel)
        assert (stats.num_clients, stats.num_users) == (1, 1)
        history = await sdk.history(channel, limit=10)
        assert [p.data for p in history.publications] == [{"i": 0}, {"i": 1}, {"i": 2}]

        with pytest.raises(ReplyError) as denied:
            await sub.publish({"x": 1})
        assert denied.value.code == 103
        with pytest.raises(ReplyError) as missing:
            await sdk.rpc("anything", {})
        assert missing.value.code == 104
        with pytest.raises(ReplyError) as off:
            await sdk.presence("alerts:00000000-0000-0000-0000-000000000000")
        assert off.value.code == 103

        forbidden = sdk.new_subscription(
            "alerts:00000000-0000-0000-0000-000000000000", events=events
        )
        await forbidden.subscribe()
        assert (await events.next("unsubscribed")).code == 103
    finally:
        await sdk.disconnect()


async def test_recovery_across_two_nodes_on_redis(
    aiohttp_client: Any, redis_settings: Settings
) -> None:
    node_a = await aiohttp_client(create_app(redis_settings))
    node_b = await aiohttp_client(create_app(redis_settings))
    user_id, token = await make_user(node_a, "buyer")
    channel = await _request_channel(node_a, user_id)
    proxy = Proxy(node_a)
    await proxy.start()
    events = Events()
    sdk = Client(
        f"ws://127.0.0.1:{proxy.port}/connection/websocket",
        events=events,
        token=token,
        max_reconnect_delay=0.5,
    )
    sub = sdk.new_subscription(channel, events=events, recoverable=True)
    try:
        await sdk.connect()
        await sub.subscribe()
        assert (await events.next("subscribed")).was_recovering is False
        for i in range(5):
            await _publish(node_b, channel, {"i": i})  # through the other node
        assert [(await events.next("publication")).pub.offset for _ in range(5)] == [1, 2, 3, 4, 5]

        # Node A goes away; the balancer sends new connections to node B. Publications made
        # meanwhile (through node B) must all be recovered, in order.
        node_a.server.app[keys.connections].accepting = False
        node_a.server.app[keys.connections].close_all(Disconnect.SHUTDOWN, "node down")
        await events.next("connecting")
        for i in range(5, 10):
            await _publish(node_b, channel, {"i": i})
        proxy.target = node_b
        again = await events.next("subscribed")
        assert again.was_recovering is True
        assert again.recovered is True
        pubs = [(await events.next("publication")).pub for _ in range(5)]
        assert [(p.offset, p.data) for p in pubs] == [(i + 1, {"i": i}) for i in range(5, 10)]
        assert node_b.server.app[keys.connections].user_connections(user_id) == 1
    finally:
        await sdk.disconnect()
        await proxy.close()


@pytest.fixture(params=["memory", "redis"])
def broker_settings(request: pytest.FixtureRequest, make_settings: Any) -> Settings:
    """The app's settings with each broker in turn."""
    if request.param == "memory":
        return make_settings()  # type: ignore[no-any-return]
    redis_settings: Settings = request.getfixturevalue("redis_settings")
    return redis_settings


async def test_history_follows_centrifugo_filter_semantics(
    aiohttp_client: Any, broker_settings: Settings
) -> None:
    """``limit``, ``since`` and ``reverse`` as Centrifugo serves them: without ``since`` the
    oldest ``limit`` from the stream's start (or with ``reverse`` the newest, newest first);
    with ``since`` the ones after it (or with ``reverse`` before it, newest first); a ``since``
    of another epoch is 112 unrecoverable position. Memory and Redis brokers alike."""
    client: TestClient = await aiohttp_client(create_app(broker_settings))
    channel = "alerts:history-filters"
    for i in range(1, 7):
        await _publish(client, channel, {"i": i})
    sdk = Client(_url(client), token=service_token(client))

    async def offsets(**options: Any) -> tuple[list[int], StreamPosition]:
        history = await sdk.history(channel, **options)
        assert [p.data for p in history.publications] == [
            {"i": p.offset} for p in history.publications
        ]
        return [p.offset for p in history.publications], StreamPosition(
            history.offset, history.epoch
        )

    try:
        await sdk.connect()
        top, position = await offsets()  # no limit: only the stream's position
        assert (top, position.offset) == ([], 6)
        epoch = position.epoch
        assert (await offsets(limit=2))[0] == [1, 2]
        assert (await offsets(limit=-1))[0] == [1, 2, 3, 4, 5, 6]
        assert (await offsets(limit=2, reverse=True))[0] == [6, 5]
        assert (await offsets(limit=2, since=StreamPosition(2, epoch)))[0] == [3, 4]
        assert (await offsets(limit=10, since=StreamPosition(6, epoch)))[0] == []
        assert (await offsets(limit=2, since=StreamPosition(5, epoch), reverse=True))[0] == [4, 3]
        assert (await offsets(limit=-1, since=StreamPosition(3, epoch), reverse=True))[0] == [2, 1]
        assert (await offsets(limit=5, since=StreamPosition(1, epoch), reverse=True))[0] == []
        # An empty epoch is accepted (as Centrifugo); another one is not.
        assert (await offsets(limit=1, since=StreamPosition(4, "")))[0] == [5]
        with pytest.raises(ReplyError) as stale:
            await sdk.history(channel, limit=2, since=StreamPosition(2, "another-epoch"))
        assert stale.value.code == 112
        with pytest.raises(ReplyError) as bad:
            await sdk.history(channel, limit=2, since=StreamPosition(0, epoch), reverse=True)
        assert bad.value.code == 107
    finally:
        await sdk.disconnect()


async def test_the_sdk_stays_connected_across_server_pings(
    aiohttp_client: Any, make_settings: Any
) -> None:
    """The connect reply announces ``ping`` = WS_HEARTBEAT: the SDK then expects a ``{}`` at
    least every ``ping + max_server_ping_delay`` seconds and reconnects otherwise. With a 1 s
    heartbeat and a 1 s allowed delay, the SDK stays on one connection while the server sweeps
    through many ping intervals."""
    client: TestClient = await aiohttp_client(create_app(make_settings(WS_HEARTBEAT="1")))
    _, token = await make_user(client, "admin")
    events = Events()
    sdk = Client(_url(client), events=events, token=token, max_server_ping_delay=1.0)
    sweep = client.server.app[heartbeat_key]
    try:
        await sdk.connect()
        first = await events.next("connected")
        start = sweep.rounds
        await eventually(lambda: sweep.rounds >= start + 12, what="six ping intervals")
        kinds = [kind for kind, _ in list(events.queue._queue)]  # type: ignore[attr-defined]
        assert "connecting" not in kinds, kinds
        assert "connected" not in kinds, kinds
        assert sdk.state.value == "connected"
        assert first.client
    finally:
        await sdk.disconnect()


async def test_client_publications_where_the_namespace_allows_them(
    aiohttp_client: Any, make_settings: Any
) -> None:
    """``client_publish`` in CHANNEL_NAMESPACES: the SDK publishes to a channel it may read
    (here each user's own ``user:{id}``); the publication gets an offset and reaches the
    subscribers; a channel it may not read, or a namespace without the option, is 103."""
    settings = make_settings(CHANNEL_NAMESPACES='{"user": {"client_publish": true}}')
    client: TestClient = await aiohttp_client(create_app(settings))
    user_id, token = await make_user(client, "buyer")
    other_id, _ = await make_user(client, "buyer")
    events = Events()
    sdk = Client(_url(client), events=events, token=token)
    own = sdk.new_subscription(f"user:{user_id}", events=events)
    try:
        await sdk.connect()
        await events.next("connected")
        await own.subscribe()
        await events.next("subscribed")
        await own.publish({"note": "from the phone"})
        pub = (await events.next("publication")).pub
        assert (pub.data, pub.offset) == ({"note": "from the phone"}, 1)
        for channel in (f"user:{other_id}", "alerts:x"):
            with pytest.raises(ReplyError) as refused:
                await sdk.publish(channel, {"x": 1})
            assert refused.value.code == 103, channel
    finally:
        await sdk.disconnect()
