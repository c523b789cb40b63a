"""A subscribe reply reaches the client before any publication of its channel, and the
publications after it follow with no gap or repeat, while a publisher races the subscribes
(memory broker: the position is read in-process, without a coalesced read task; Redis broker:
the channel is live on the node, so later subscribers start at its live stream's offset while
publications are on their way through Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from handlers import keys
from tests.helpers import connect, make_user, receive, send


@pytest.fixture
async def admin(client: Any) -> str:
    return (await make_user(client, "admin"))[1]


async def test_the_subscribe_reply_comes_first_then_every_publication_once(
    client: Any, admin: str
) -> None:
    await _subscribes_race_a_publisher(client, admin, [])


async def test_over_redis_subscribers_of_a_live_channel_get_every_publication_once(
    redis_client: Any,
) -> None:
    _, token = await make_user(redis_client, "admin")
    # the channel's stream is live on this node before the burst
    first = await connect(redis_client, token)
    await send(first, "subscribe", channel="alerts:order")
    assert (await receive(first))["type"] == "reply"
    await _subscribes_race_a_publisher(redis_client, token, [first])


async def _subscribes_race_a_publisher(client: Any, admin: str, others: list[Any]) -> None:
    hub = client.server.app[keys.hub]
    # at most WS_MAX_CONNECTIONS_PER_USER (20) in all
    sockets = [await connect(client, admin) for _ in range(20 - len(others))]
    last = 0
    stop = asyncio.Event()

    async def publisher() -> None:
        nonlocal last
        while not stop.is_set():
            last = (await hub.publish("alerts:order", {"n": last})).offset
            await asyncio.sleep(0)

    async def subscribe(ws: Any) -> int:
        command_id = await send(ws, "subscribe", channel="alerts:order")
        first = await receive(ws)
        assert (first["type"], first["id"]) == ("reply", command_id), first
        offset: int = first["result"]["offset"]
        return offset

    publishing = asyncio.create_task(publisher())
    try:
        starts = await asyncio.gather(*(subscribe(ws) for ws in sockets))
    finally:
        stop.set()
        await publishing
    assert last > 0
    for ws, start in zip(sockets, starts, strict=True):
        got = [(await receive(ws))["offset"] for _ in range(last - start)]
        assert got == list(range(start + 1, last + 1))
    for ws in others:  # subscribed before: every offset from the first publication on
        got = [(await receive(ws))["offset"] for _ in range(last)]
        assert got == list(range(1, last + 1))
    for ws in [*sockets, *others]:
        await ws.close()
