"""Presence and join/leave, on one node (memory) and across two nodes (Redis)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from handlers import keys
from pubsub.presence import PresenceEntry, RedisPresence
from server.app import create_app
from tests.helpers import connect, eventually, make_user, receive, request


async def _request_id(client: Any, owner_id: str) -> str:
    async with client.server.app[keys.pool].acquire() as conn:
        value = await conn.fetchval(
            "INSERT INTO requests (owner_id, title) VALUES ($1::uuid, 'Presence') RETURNING id",
            owner_id,
        )
    return str(value)


async def _next_of(ws: ClientWebSocketResponse, kinds: set[str]) -> dict[str, Any]:
    while True:
        message = await receive(ws)
        if message.get("type") in kinds:
            return message


async def test_presence_and_stats_on_one_node(client: Any) -> None:
    owner_id, owner = await make_user(client, "buyer")
    admin_id, admin = await make_user(client, "admin")
    channel = f"proposals:{await _request_id(client, owner_id)}"
    a = await connect(client, owner)
    b = await connect(client, owner)
    c = await connect(client, admin)
    for ws in (a, b, c):
        assert "result" in await request(ws, "subscribe", channel=channel)
    stats = await request(c, "presence_stats", channel=channel)
    assert stats["result"] == {"channel": channel, "num_clients": 3, "num_users": 2}
    presence = (await request(c, "presence", channel=channel))["result"]["clients"]
    assert sorted(entry["user"] for entry in presence.values()) == sorted(
        [owner_id, owner_id, admin_id]
    )
    assert all(entry["info"]["role"] in {"buyer", "admin"} for entry in presence.values())
    await request(a, "unsubscribe", channel=channel)
    await b.close()

    async def one_left() -> bool:
        stats = await request(c, "presence_stats", channel=channel)
        return bool(stats["result"]["num_clients"] == 1)

    await eventually(one_left, what="one client left")
    stats = await request(c, "presence_stats", channel=channel)
    assert stats["result"] == {"channel": channel, "num_clients": 1, "num_users": 1}


async def test_join_and_leave_once_per_user_in_order(client: Any) -> None:
    owner_id, owner = await make_user(client, "buyer")
    admin_id, admin = await make_user(client, "admin")
    channel = f"proposals:{await _request_id(client, owner_id)}"
    watcher = await connect(client, admin)
    reply = await request(watcher, "subscribe", channel=channel)
    assert "result" in reply
    own = await _next_of(watcher, {"join"})
    assert (own["user"], own["channel"]) == (admin_id, channel)
    tab1 = await connect(client, owner)
    await request(tab1, "subscribe", channel=channel)
    joined = await _next_of(watcher, {"join", "leave"})
    assert (joined["type"], joined["user"]) == ("join", owner_id)
    tab2 = await connect(client, owner)  # a second tab: no second join
    await request(tab2, "subscribe", channel=channel)
    await tab1.close()  # not the last tab: no leave
    await tab2.close()
    left = await _next_of(watcher, {"join", "leave"})
    assert (left["type"], left["user"]) == ("leave", owner_id)


async def test_presence_is_off_where_the_namespace_says_so(client: Any) -> None:
    _, admin = await make_user(client, "admin")
    ws = await connect(client, admin)
    reply = await request(ws, "presence", channel="alerts:x")
    assert reply["error"]["code"] == "not_available"


async def test_strangers_may_not_read_presence(client: Any) -> None:
    owner_id, _ = await make_user(client, "buyer")
    _, stranger = await make_user(client, "buyer")
    channel = f"proposals:{await _request_id(client, owner_id)}"
    ws = await connect(client, stranger)
    for command in ("presence", "presence_stats", "subscribe"):
        reply = await request(ws, command, channel=channel)
        assert reply["error"]["code"] == "permission_denied"


@pytest.fixture
async def two_nodes(
    aiohttp_client: Any, make_settings: Any, redis_url: str, redis_prefix: str
) -> tuple[Any, Any]:
    # Live entries are refreshed every PRESENCE_TTL / 3 = 2 s, so a loaded machine has to stall
    # the loop for 4 s before a live client expires by mistake.
    settings = make_settings(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, PRESENCE_TTL="6")
    return await aiohttp_client(create_app(settings)), await aiohttp_client(create_app(settings))


async def test_presence_spans_nodes_and_join_leave_cross_them(two_nodes: tuple[Any, Any]) -> None:
    node_a, node_b = two_nodes
    owner_id, owner = await make_user(node_a, "buyer")
    admin_id, admin = await make_user(node_a, "admin")
    channel = f"proposals:{await _request_id(node_a, owner_id)}"
    watcher = await connect(node_a, admin)
    await request(watcher, "subscribe", channel=channel)
    await _next_of(watcher, {"join"})  # its own
    remote = await connect(node_b, owner)
    await request(remote, "subscribe", channel=channel)
    joined = await _next_of(watcher, {"join", "leave"})
    assert (joined["type"], joined["user"]) == ("join", owner_id)
    stats = await request(watcher, "presence_stats", channel=channel)
    assert stats["result"]["num_clients"] == 2
    assert stats["result"]["num_users"] == 2
    from_b = await request(remote, "presence", channel=channel)
    assert sorted(e["user"] for e in from_b["result"]["clients"].values()) == sorted(
        [owner_id, admin_id]
    )
    await remote.close()
    left = await _next_of(watcher, {"join", "leave"})
    assert (left["type"], left["user"]) == ("leave", owner_id)


async def test_clients_of_a_crashed_node_expire_within_the_bound(
    two_nodes: tuple[Any, Any], redis_prefix: str
) -> None:
    node_a, _ = two_nodes
    owner_id, _ = await make_user(node_a, "buyer")
    _, admin = await make_user(node_a, "admin")
    channel = f"proposals:{await _request_id(node_a, owner_id)}"
    watcher = await connect(node_a, admin)
    await request(watcher, "subscribe", channel=channel)
    await _next_of(watcher, {"join"})
    # A node that registered a client and then died: its entry is never refreshed again.
    # Its ttl leaves time to see it counted first, even on a busy machine.
    ghost = RedisPresence(node_a.server.app[keys.redis], redis_prefix, ttl=2.0)
    ghost_id = uuid.uuid4().hex
    await ghost.add(channel, PresenceEntry(ghost_id, owner_id, {"role": "buyer"}))
    stats = await request(watcher, "presence_stats", channel=channel)
    assert stats["result"]["num_clients"] == 2
    started = time.monotonic()
    left = await _next_of(watcher, {"leave"})
    elapsed = time.monotonic() - started
    assert left["user"] == owner_id
    assert left["client"] == ghost_id
    # Nominal bound: the ghost's ttl (2 s) + the nodes' sweep interval (2 s). A busy machine
    # sweeps late, so allow 15 s: still far below the 60 s after which Redis would drop the
    # keys by itself, so it is the sweep that removed the crashed node's client.
    assert elapsed < 15.0
    stats = await request(watcher, "presence_stats", channel=channel)
    assert stats["result"]["num_clients"] == 1
