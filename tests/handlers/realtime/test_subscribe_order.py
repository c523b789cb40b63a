"""A subscribe reply reaches the client before any publication of its channel, and the
publications after it follow with no gap or repeat, while a publisher races the subscribes
(memory broker: the position is read in-process, without a coalesced read task)."""

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
    hub = client.server.app[keys.hub]
    sockets = [await connect(client, admin) for _ in range(20)]
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
    for ws in sockets:
        await ws.close()
