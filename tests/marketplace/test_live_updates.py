"""Live updates through the transactional outbox: who gets what, and nothing is lost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from handlers import keys
from pubsub.broker import BrokerUnavailable
from server.app import create_app
from server.settings import Settings
from tests.helpers import connect, eventually, make_user, receive, request
from tests.marketplace.util import auth, post_proposal, post_request, set_status


async def next_pub(ws: ClientWebSocketResponse, channel: str) -> dict[str, Any]:
    """The data of the next publication on ``channel`` (presence pushes are skipped)."""
    while True:
        message = await receive(ws)
        if message.get("type") == "pub" and message.get("channel") == channel:
            data: dict[str, Any] = message["data"]
            return data


async def subscribe(ws: ClientWebSocketResponse, channel: str) -> dict[str, Any]:
    reply = await request(ws, "subscribe", channel=channel)
    return reply


async def test_each_party_sees_changes_live_and_rivals_see_no_prices(client: Any) -> None:
    buyer_id, buyer = await make_user(client, "buyer")
    vendor_id, vendor = await make_user(client, "vendor")
    _, rival = await make_user(client, "vendor")
    _, stranger = await make_user(client, "buyer")
    created = await post_request(client, buyer)
    room = f"proposals:{created['id']}"

    buyer_ws = await connect(client, buyer)
    assert "result" in await subscribe(buyer_ws, f"user:{buyer_id}")
    assert "result" in await subscribe(buyer_ws, room)
    stranger_ws = await connect(client, stranger)
    assert "error" in await subscribe(stranger_ws, room)
    rival_ws = await connect(client, rival)
    assert "error" in await subscribe(rival_ws, room)  # not before proposing
    await post_proposal(client, rival, created["id"], price="1.00")
    assert "result" in await subscribe(rival_ws, room)
    vendor_ws = await connect(client, vendor)
    assert "result" in await subscribe(vendor_ws, f"user:{vendor_id}")

    proposal = await post_proposal(client, vendor, created["id"])
    for ws in (buyer_ws, vendor_ws):
        channel = f"user:{buyer_id}" if ws is buyer_ws else f"user:{vendor_id}"
        event = await next_pub(ws, channel)
        # On the buyer's channel the request's own event (the relay may publish it after the
        # subscription) and the rival's proposal may come first.
        while ws is buyer_ws and event.get("proposal", {}).get("id") != proposal["id"]:
            assert event["type"] in ("request.created", "proposal.created"), event
            event = await next_pub(ws, channel)
        assert event["type"] == "proposal.created"
        assert event["request_id"] == created["id"]
        assert event["proposal"] == proposal
        assert isinstance(event["event_id"], int)

    rival_view = await next_pub(rival_ws, room)
    if rival_view["proposal"]["id"] != proposal["id"]:
        rival_view = await next_pub(rival_ws, room)  # its own proposal's event came first
    assert rival_view["type"] == "proposal.created"
    assert rival_view["proposal"] == {
        "id": proposal["id"],
        "vendor_id": vendor_id,
        "status": "submitted",
    }

    assert (await set_status(client, buyer, proposal["id"], "shortlisted")).status == 200
    event = await next_pub(vendor_ws, f"user:{vendor_id}")
    assert event["type"] == "proposal.status_changed"
    assert event["previous_status"] == "submitted"
    assert event["proposal"]["status"] == "shortlisted"
    for ws in (buyer_ws, vendor_ws, rival_ws, stranger_ws):
        await ws.close()


@pytest.fixture(params=["memory", "redis"])
async def any_client(
    request: pytest.FixtureRequest,
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    redis_url: str,
    redis_prefix: str,
) -> Any:
    """The app with each broker backend."""
    env = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix} if request.param == "redis" else {}
    return await aiohttp_client(create_app(make_settings(**env)))


async def test_events_made_while_the_broker_is_down_arrive_in_order(
    any_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = any_client
    app = client.server.app
    buyer_id, buyer = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    ws = await connect(client, buyer)
    channel = f"user:{buyer_id}"
    assert "result" in await subscribe(ws, channel)

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailable("broker is down (test)")

    hub = app[keys.hub]
    # Both publishing verbs: the relay sends a channel's batch with publish_many.
    monkeypatch.setattr(hub.broker, "publish", unavailable)
    monkeypatch.setattr(hub.broker, "publish_many", unavailable)

    # Every change commits (2xx) although nothing can be published.
    created = await post_request(client, buyer)
    proposal = await post_proposal(client, vendor, created["id"])
    response = await client.patch(
        f"/api/v1/requests/{created['id']}", json={"title": "Renamed"}, headers=auth(buyer)
    )
    assert response.status == 200
    assert (await set_status(client, buyer, proposal["id"], "shortlisted")).status == 200
    assert (await set_status(client, buyer, proposal["id"], "accepted")).status == 200
    async with app[keys.pool].acquire() as conn:
        pending = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    assert pending >= 5

    monkeypatch.undo()
    app[keys.relay].kick()
    expected = [
        "request.created",
        "proposal.created",
        "request.updated",
        "proposal.status_changed",
        "proposal.status_changed",
        "request.updated",
    ]
    events = [await next_pub(ws, channel) for _ in expected]
    assert [event["type"] for event in events] == expected
    ids = [event["event_id"] for event in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert events[2]["request"]["title"] == "Renamed"
    assert [e["proposal"]["status"] for e in events[3:5]] == ["shortlisted", "accepted"]
    assert events[5]["request"]["status"] == "awarded"

    # The relay marks a batch once all of it is published: wait for that, within reason.
    async def nothing_pending() -> bool:
        async with app[keys.pool].acquire() as conn:
            sql = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            return bool(await conn.fetchval(sql) == 0)

    await eventually(nothing_pending, what="every outbox event marked published")
    await ws.close()
