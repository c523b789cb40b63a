"""Two app instances on one Redis behave as one service: what is published through node B
reaches WebSocket subscribers on node A in order, a client whose node dies resumes on the other
node without a gap or a duplicate, and a node whose Redis pub/sub connection drops refills the
gap."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from handlers import keys
from pubsub.redis_broker import RedisBroker
from server.app import create_app
from server.settings import Settings
from tests.helpers import DEADLINE, connect, make_user, request, service_token
from tests.pubsub.support import kill_pubsub

Nodes = tuple[TestClient, TestClient]


@pytest.fixture
async def nodes(aiohttp_client: Any, redis_settings: Settings) -> Nodes:
    """Node A and node B: same database, same Redis URL and prefix."""
    node_a = await aiohttp_client(create_app(redis_settings))
    node_b = await aiohttp_client(create_app(redis_settings))
    return node_a, node_b


async def next_push(
    ws: ClientWebSocketResponse, timeout: float = DEADLINE
) -> dict[str, Any] | None:
    """The next server push, or None once the socket is closed."""
    msg = await ws.receive(timeout=timeout)
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        return None
    assert msg.type == WSMsgType.TEXT, msg
    data: dict[str, Any] = orjson.loads(msg.data)
    return data


async def collect_until(ws: ClientWebSocketResponse, channel: str, last: int) -> list[int]:
    """Offsets pushed on ``channel`` until ``last`` arrives; fails on a resync."""
    offsets: list[int] = []
    while not offsets or offsets[-1] < last:
        push = await next_push(ws)
        assert push is not None, f"socket closed after {offsets}"
        assert push["type"] == "pub", push
        if push["channel"] == channel:
            offsets.append(push["offset"])
    return offsets


async def test_publish_through_one_node_reaches_subscribers_on_the_other(nodes: Nodes) -> None:
    node_a, node_b = nodes
    _, token = await make_user(node_a, "admin")
    ws = await connect(node_a, token)
    reply = await request(ws, "subscribe", channel="alerts:mn")
    epoch = reply["result"]["epoch"]

    headers = {"Authorization": f"Bearer {service_token(node_b)}"}
    for n in range(20):
        response = await node_b.post(
            "/api/v1/channels/alerts:mn/publish", json={"data": {"n": n}}, headers=headers
        )
        assert response.status == 200, await response.text()
    pushes = [await next_push(ws) for _ in range(20)]
    assert [p["offset"] for p in pushes if p] == list(range(1, 21))
    assert [p["data"] for p in pushes if p] == [{"n": n} for n in range(20)]
    assert {p["epoch"] for p in pushes if p} == {epoch}

    body = {"data": {"order": 1}, "idempotency_key": "order-1"}
    first = await node_a.post(
        "/api/v1/channels/alerts:mn/publish",
        json=body,
        headers={"Authorization": f"Bearer {service_token(node_a)}"},
    )
    again = await node_b.post("/api/v1/channels/alerts:mn/publish", json=body, headers=headers)
    first_body, again_body = await first.json(), await again.json()
    assert (first_body["duplicate"], again_body["duplicate"]) == (False, True)
    assert again_body["offset"] == first_body["offset"] == 21, "idempotency spans nodes"
    await ws.close()


async def test_client_resumes_on_another_node_without_gap_or_duplicate(nodes: Nodes) -> None:
    node_a, node_b = nodes
    _, token = await make_user(node_a, "admin")
    ws_a = await connect(node_a, token)
    reply = await request(ws_a, "subscribe", channel="alerts:fail")
    epoch = reply["result"]["epoch"]
    total = 60
    hub_b = node_b.server.app[keys.hub]

    async def publish_continuously() -> None:
        for n in range(total):
            await hub_b.publish("alerts:fail", {"n": n})
            await asyncio.sleep(0.003)

    publishing = asyncio.create_task(publish_continuously())
    seen_on_a: list[int] = []
    while len(seen_on_a) < 15:
        push = await next_push(ws_a)
        assert push is not None
        seen_on_a.append(push["offset"])
    await node_a.close()  # node A dies mid-stream
    while (push := await next_push(ws_a)) is not None:
        seen_on_a.append(push["offset"])
    assert seen_on_a == list(range(1, len(seen_on_a) + 1))

    ws_b = await connect(node_b, token)
    since = {"offset": seen_on_a[-1], "epoch": epoch}
    reply = await request(ws_b, "subscribe", channel="alerts:fail", since=since)
    assert reply["result"]["recovered"] is True
    recovered = [p["offset"] for p in reply["result"]["publications"]]
    await publishing
    # Node A may have delivered everything before it died (a slow reader): nothing is left then.
    last = (recovered or seen_on_a)[-1]
    live = [] if last == total else await collect_until(ws_b, "alerts:fail", total)
    assert seen_on_a + recovered + live == list(range(1, total + 1))
    await ws_b.close()


async def test_node_refills_the_gap_after_losing_its_redis_connection(
    nodes: Nodes, redis_url: str
) -> None:
    node_a, node_b = nodes
    _, token = await make_user(node_a, "admin")
    ws = await connect(node_a, token)
    await request(ws, "subscribe", channel="alerts:gap")
    broker = node_a.server.app[keys.hub].broker
    assert isinstance(broker, RedisBroker)
    hub_b = node_b.server.app[keys.hub]
    total = 100

    async def publish_continuously() -> None:
        for n in range(total):
            await hub_b.publish("alerts:gap", {"n": n})
            await asyncio.sleep(0.002)

    publishing = asyncio.create_task(publish_continuously())
    offsets = await collect_until(ws, "alerts:gap", 30)
    await kill_pubsub(redis_url, broker)
    offsets += await collect_until(ws, "alerts:gap", total)
    await publishing
    assert offsets == list(range(1, total + 1)), "every offset once, in order, no resync"
    assert broker.pubsub.reconnects == 1
    await ws.close()
