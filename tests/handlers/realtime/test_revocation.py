"""Losing access ends live subscriptions, on every node.

Two instances share PostgreSQL and Redis. A client subscribes on node B; a REST call on node A
takes its access away (a strategy unshared, a request deleted, a role changed). The client must
get an ``unsubscribe`` push with code 4403 and no further publication of the channel, while its
other channels and the other subscribers of that channel keep receiving.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from handlers import keys
from server.app import create_app
from services.realtime.codecs.arena import CLOSE_FORBIDDEN
from services.realtime.errors import UNSUBSCRIBE_REVOKED
from storage import strategies as strategies_db
from tests.alerts.util import auth, create_strategy
from tests.auth.flows import closed_with, sign_in
from tests.helpers import connect, make_user, receive, request, service_token
from tests.marketplace.util import post_proposal, post_request

REVOKED_REASON = "access to this channel was revoked"


async def subscribe(ws: ClientWebSocketResponse, channel: str) -> None:
    reply = await request(ws, "subscribe", channel=channel)
    assert "result" in reply, reply


async def publish(node: TestClient, channel: str, data: Any) -> None:
    headers = {"Authorization": f"Bearer {service_token(node)}"}
    resp = await node.post(
        f"/api/v1/channels/{channel}/publish", json={"data": data}, headers=headers
    )
    assert resp.status == 200, await resp.text()


async def unsubscribed(ws: ClientWebSocketResponse, channel: str) -> dict[str, Any]:
    """The ``unsubscribe`` push for ``channel`` (read within a generous deadline)."""
    deadline = time.monotonic() + 15
    while True:
        message = await receive(ws, timeout=max(0.1, deadline - time.monotonic()))
        if message.get("type") == "unsubscribe" and "result" not in message:
            assert message["channel"] == channel, message
            return message


async def nothing_more_from(
    ws: ClientWebSocketResponse, channel: str, control: str, marker: Any
) -> None:
    """Read until ``marker`` arrives on ``control`` (published after ``channel``'s last
    publication, through the same node): nothing of ``channel`` may come before it."""
    while True:
        message = await receive(ws, timeout=15)
        if message.get("type") == "pub":
            assert message["channel"] != channel, f"still receiving {channel}: {message}"
            if message["channel"] == control and message["data"] == marker:
                return


async def next_pub(ws: ClientWebSocketResponse, channel: str, data: Any) -> None:
    """Read until ``channel``'s publication of ``data`` (earlier live events are skipped)."""
    while True:
        message = await receive(ws, timeout=15)
        if message.get("type") == "pub" and (message["channel"], message["data"]) == (
            channel,
            data,
        ):
            return


async def assert_cut_off(
    node: TestClient, ws: ClientWebSocketResponse, user_id: str, channel: str
) -> None:
    """``ws`` (subscribed to ``user:{user_id}`` too) gets nothing more of ``channel``."""
    marker = {"marker": uuid.uuid4().hex}
    await publish(node, channel, {"after": "revocation"})
    await publish(node, f"user:{user_id}", marker)
    await nothing_more_from(ws, channel, f"user:{user_id}", marker)


async def test_unsharing_a_strategy_ends_the_live_subscription_on_another_node(
    redis_settings: Any, aiohttp_client: Any
) -> None:
    node_a = await aiohttp_client(create_app(redis_settings))
    node_b = await aiohttp_client(create_app(redis_settings))
    _, owner = await make_user(node_a)
    friend_id, friend = await make_user(node_a)
    strategy = await create_strategy(node_a, owner)
    url = f"/api/v1/strategies/{strategy['id']}"
    resp = await node_a.patch(url, json={"shared_with": [friend_id]}, headers=auth(owner))
    assert resp.status == 200
    channel = f"alerts:{strategy['id']}"

    ws = await connect(node_b, friend)
    await subscribe(ws, f"user:{friend_id}")
    await subscribe(ws, channel)
    owner_ws = await connect(node_b, owner)
    await subscribe(owner_ws, channel)

    resp = await node_a.patch(url, json={"shared_with": []}, headers=auth(owner))
    assert resp.status == 200

    push = await unsubscribed(ws, channel)
    assert (push["code"], push["reason"]) == (UNSUBSCRIBE_REVOKED, REVOKED_REASON)
    await assert_cut_off(node_a, ws, friend_id, channel)
    await next_pub(owner_ws, channel, {"after": "revocation"})  # the owner is unaffected
    # the subscription is gone: unsubscribing again says so, subscribing again is refused
    assert (await request(ws, "unsubscribe", channel=channel))["error"]["code"] == "not_subscribed"
    denied = await request(ws, "subscribe", channel=channel)
    assert denied["error"]["code"] == "permission_denied"
    await ws.close()
    await owner_ws.close()


async def test_deleting_a_request_ends_vendor_subscriptions_on_another_node(
    redis_settings: Any, aiohttp_client: Any
) -> None:
    node_a = await aiohttp_client(create_app(redis_settings))
    node_b = await aiohttp_client(create_app(redis_settings))
    _, buyer = await make_user(node_a)
    vendor_id, vendor = await make_user(node_a, "vendor")
    _, admin = await make_user(node_a, "admin")
    created = await post_request(node_a, buyer)
    await post_proposal(node_a, vendor, created["id"])
    channel = f"proposals:{created['id']}"

    ws = await connect(node_b, vendor)
    await subscribe(ws, f"user:{vendor_id}")
    await subscribe(ws, channel)
    admin_ws = await connect(node_b, admin)
    await subscribe(admin_ws, channel)

    resp = await node_a.delete(f"/api/v1/requests/{created['id']}", headers=auth(buyer))
    assert resp.status == 204

    push = await unsubscribed(ws, channel)
    assert push["code"] == UNSUBSCRIBE_REVOKED
    await assert_cut_off(node_a, ws, vendor_id, channel)
    await next_pub(admin_ws, channel, {"after": "revocation"})  # admins still read everything
    await ws.close()
    await admin_ws.close()


async def test_a_role_change_rechecks_the_users_live_subscriptions(
    redis_settings: Any, aiohttp_client: Any
) -> None:
    node_a = await aiohttp_client(create_app(redis_settings))
    node_b = await aiohttp_client(create_app(redis_settings))
    _, admin = await make_user(node_a, "admin")
    demoted_id, demoted = await make_user(node_a, "admin")
    watched_id, watched = await make_user(node_a)
    channel = f"user:{watched_id}"

    ws = await connect(node_b, demoted)
    await subscribe(ws, f"user:{demoted_id}")
    await subscribe(ws, channel)
    watched_ws = await connect(node_b, watched)
    await subscribe(watched_ws, channel)

    resp = await node_a.put(
        f"/api/v1/users/{demoted_id}/role", json={"role": "buyer"}, headers=auth(admin)
    )
    assert resp.status == 200

    push = await unsubscribed(ws, channel)
    assert push["code"] == UNSUBSCRIBE_REVOKED
    await assert_cut_off(node_a, ws, demoted_id, channel)
    await next_pub(watched_ws, channel, {"after": "revocation"})
    # the connection now acts with the new role
    denied = await request(ws, "subscribe", channel=channel)
    assert denied["error"]["code"] == "permission_denied"
    await ws.close()
    await watched_ws.close()


async def _unshare_behind_the_services_back(node: TestClient, strategy_id: str) -> None:
    """Revoke in PostgreSQL directly: no event is sent, only a re-check can notice."""
    async with node.server.app[keys.pool].acquire() as conn:
        await strategies_db.update(conn, strategy_id, name=None, shared_with=[])


async def test_periodic_recheck_ends_access_that_no_event_announced(
    make_settings: Any, redis_url: str, redis_prefix: str, aiohttp_client: Any
) -> None:
    settings = make_settings(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, WS_RECHECK_SECONDS="1")
    node = await aiohttp_client(create_app(settings))
    _, owner = await make_user(node)
    friend_id, friend = await make_user(node)
    strategy = await create_strategy(node, owner)
    url = f"/api/v1/strategies/{strategy['id']}"
    await node.patch(url, json={"shared_with": [friend_id]}, headers=auth(owner))
    channel = f"alerts:{strategy['id']}"
    ws = await connect(node, friend)
    await subscribe(ws, f"user:{friend_id}")
    await subscribe(ws, channel)

    await _unshare_behind_the_services_back(node, strategy["id"])

    push = await unsubscribed(ws, channel)
    assert push["code"] == UNSUBSCRIBE_REVOKED
    await assert_cut_off(node, ws, friend_id, channel)
    await ws.close()


async def test_refresh_rechecks_the_connections_subscriptions(redis_client: Any) -> None:
    node = redis_client
    _, owner = await make_user(node)
    friend_id, friend = await make_user(node)
    strategy = await create_strategy(node, owner)
    url = f"/api/v1/strategies/{strategy['id']}"
    await node.patch(url, json={"shared_with": [friend_id]}, headers=auth(owner))
    channel = f"alerts:{strategy['id']}"
    ws = await connect(node, friend)
    await subscribe(ws, f"user:{friend_id}")
    await subscribe(ws, channel)

    await _unshare_behind_the_services_back(node, strategy["id"])
    fresh = node.server.app[keys.tokens].issue_access(friend_id, "buyer", None).token
    assert "result" in await request(ws, "refresh", token=fresh)

    push = await unsubscribed(ws, channel)
    assert push["code"] == UNSUBSCRIBE_REVOKED
    await assert_cut_off(node, ws, friend_id, channel)
    await ws.close()


async def test_a_reused_refresh_token_closes_the_users_connections_on_every_node(
    redis_settings: Any, aiohttp_client: Any
) -> None:
    node_a = await aiohttp_client(create_app(redis_settings))
    node_b = await aiohttp_client(create_app(redis_settings))
    session = await sign_in(node_a, "reuse@example.com")
    ws = await connect(node_b, session["access_token"])
    _, other = await make_user(node_a)
    bystander = await connect(node_b, other)
    rotated = await node_a.post(
        "/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert rotated.status == 200
    reused = await node_a.post(
        "/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert reused.status == 401  # the family is revoked...
    await closed_with(ws, CLOSE_FORBIDDEN)  # ...and its user's live connections are closed
    assert "result" in await request(bystander, "ping")
    await bystander.close()
