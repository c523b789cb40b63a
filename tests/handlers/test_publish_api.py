"""``POST /api/v1/channels/{channel}/publish``: service tokens, request signatures, idempotency."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import orjson
import pytest

from handlers import keys
from server.app import create_app
from tests.helpers import DEADLINE, connect, make_user, request, service_token


async def test_publish_api_with_service_token_and_idempotency(client: Any) -> None:
    token = service_token(client)
    headers = {"Authorization": f"Bearer {token}"}
    body = {"data": {"hello": "world"}, "idempotency_key": "once"}
    first = await client.post("/api/v1/channels/alerts:pub/publish", json=body, headers=headers)
    assert first.status == 200, await first.text()
    again = await client.post("/api/v1/channels/alerts:pub/publish", json=body, headers=headers)
    first_body, again_body = await first.json(), await again.json()
    assert first_body["offset"] == again_body["offset"] == 1
    assert (first_body["duplicate"], again_body["duplicate"]) == (False, True)


def _signed(method: str, body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(time.time() * 1000))
    message = method.encode() + b"|" + body + b"|" + ts.encode()
    return {
        "x-timestamp": ts,
        "x-signature": hmac.new(secret.encode(), message, hashlib.sha256).hexdigest(),
        "Content-Type": "application/json",
    }


async def test_publish_api_with_request_signature(client: Any) -> None:
    secret = client.server.app[keys.config].auth.service_secret
    body = orjson.dumps({"data": [1, 2, 3]})
    ok = await client.post(
        "/api/v1/channels/alerts:sig/publish", data=body, headers=_signed("POST", body, secret)
    )
    assert ok.status == 200
    assert (await ok.json())["offset"] == 1
    stale = await client.post(
        "/api/v1/channels/alerts:sig/publish",
        data=body,
        headers=_signed("POST", body, secret, int(time.time() * 1000) - 3 * 60 * 1000),
    )
    assert stale.status == 401
    forged = await client.post(
        "/api/v1/channels/alerts:sig/publish", data=body, headers=_signed("POST", body, "x" * 40)
    )
    assert forged.status == 401
    hub = client.server.app[keys.hub]
    position = await hub.broker.position("alerts:sig", hub.options("alerts:sig"))
    assert position.offset == 1  # nothing published by the rejected requests


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/v1/channels/alerts:x/publish", b"{", 400),
        ("/api/v1/channels/alerts:x/publish", b'{"data": 1, "extra": 2}', 400),
        ("/api/v1/channels/bogus/publish", b'{"data": 1}', 400),
        ("/api/v1/channels/nowhere:x/publish", b'{"data": 1}', 400),
    ],
)
async def test_publish_api_rejects_bad_input(
    client: Any, path: str, body: bytes, status: int
) -> None:
    headers = {"Authorization": f"Bearer {service_token(client)}"}
    response = await client.post(path, data=body, headers=headers)
    assert response.status == status
    envelope = await response.json()
    assert envelope["error"] is True
    assert envelope["status_code"] == status


async def test_publish_api_refuses_users(client: Any) -> None:
    _, token = await make_user(client, "buyer")
    response = await client.post(
        "/api/v1/channels/alerts:x/publish",
        json={"data": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status == 403
    anonymous = await client.post("/api/v1/channels/alerts:x/publish", json={"data": 1})
    assert anonymous.status == 401


async def test_concurrent_publishes_on_two_redis_nodes_are_delivered_in_offset_order(
    aiohttp_client: Any, redis_settings: Any
) -> None:
    """Two instances on one Redis get concurrent REST publishes to one channel (each instance
    sends those of one loop pass as one batch), each idempotency key
    twice: the two replies of a key name one offset, and a subscriber on each instance receives
    every publication once, in offset order, with the data of the replies naming its offset."""
    nodes = [await aiohttp_client(create_app(redis_settings)) for _ in range(2)]
    channel = "alerts:concurrent"
    watchers = []
    for node in nodes:
        _, token = await make_user(node, "admin")
        ws = await connect(node, token)
        reply = await request(ws, "subscribe", channel=channel)
        assert reply["result"]["offset"] == 0, reply
        watchers.append((ws, reply["result"]["epoch"]))

    async def publish(node: Any, n: int) -> tuple[int, int]:
        headers = {"Authorization": f"Bearer {service_token(node)}"}
        body = {"data": {"n": n % 20}, "idempotency_key": f"key-{n % 20}"}
        resp = await node.post(f"/api/v1/channels/{channel}/publish", json=body, headers=headers)
        assert resp.status == 200, await resp.text()
        return n, (await resp.json())["offset"]

    replies = await asyncio.gather(*(publish(nodes[n % 2], n) for n in range(40)))
    published = {offset: n % 20 for n, offset in replies}
    assert sorted(published) == list(range(1, 21)), "one offset per idempotency key"
    assert all(published[offset] == n % 20 for n, offset in replies)
    for ws, epoch in watchers:
        frames = [(await ws.receive(timeout=DEADLINE)).data for _ in range(20)]
        assert frames == [
            f'{{"type":"pub","channel":"{channel}","offset":{offset},"epoch":"{epoch}",'
            f'"data":{{"n":{published[offset]}}}}}'
            for offset in range(1, 21)
        ]
    for ws, _ in watchers:
        await ws.close()
