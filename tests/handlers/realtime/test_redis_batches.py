"""Through Redis (or the server's memory broker under load) to WebSocket connections:
publications that arrive together (one pub/sub read, one busy loop pass) reach each subscriber
in one socket write, in offset order, each exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from handlers.realtime.transport import Connection, Flusher
from handlers.realtime.websocket import ARENA_WEBSOCKET
from pubsub.broker import Broker, Publication
from pubsub.hub import Hub
from pubsub.memory import MemoryBroker
from pubsub.namespaces import default_namespaces
from pubsub.redis_broker import RedisBroker
from tests.handlers.realtime.test_fanout import _connections, _text_frames
from tests.handlers.realtime.test_transport import FakeTransport
from tests.helpers import eventually

CHANNEL = "alerts:batches"


class CountingHub(Hub):
    """A hub counting the broker's hand-overs (each one fan-out pass)."""

    passes = 0

    def on_publication(self, publication: Publication) -> None:
        self.passes += 1
        super().on_publication(publication)

    def on_publications(self, publications: list[Publication]) -> None:
        self.passes += 1
        super().on_publications(publications)


@pytest.fixture(params=["redis", "memory"])
async def hub(request: pytest.FixtureRequest) -> AsyncIterator[CountingHub]:
    broker: Broker
    if request.param == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        broker = RedisBroker(url, prefix=prefix)
    else:
        broker = MemoryBroker(collect_under_load=True)  # as the server makes it
    hub = CountingHub(broker, default_namespaces(), ARENA_WEBSOCKET)
    await hub.start()
    yield hub
    await hub.close()


def _offsets(transport: FakeTransport) -> list[int]:
    return [
        orjson.loads(payload)["offset"] for payload in _text_frames(b"".join(transport.written))
    ]


async def _subscribed(hub: Hub, count: int) -> tuple[list[Connection], list[FakeTransport]]:
    conns, transports = _connections(count, Flusher())
    for conn in conns:
        await hub.subscribe(conn, CHANNEL, encoder=ARENA_WEBSOCKET)
    return conns, transports


async def test_a_read_with_many_publications_is_one_write_per_subscriber(
    hub: CountingHub,
) -> None:
    _, transports = await _subscribed(hub, 5)
    passes_before = hub.passes
    # Redis: one script call, whose 50 echoes the reader takes in one read (or a few, if the
    # socket splits them). Memory: 50 publications in a loop pass after a busy one.
    await hub.publish_many(CHANNEL, [({"n": n}, None) for n in range(2)])
    await asyncio.sleep(0)
    await hub.publish_many(CHANNEL, [({"n": n}, None) for n in range(50)])
    await eventually(lambda: all(len(_offsets(t)) == 52 for t in transports), what="52 each")
    passes = hub.passes - passes_before
    assert passes < 52
    for transport in transports:
        assert _offsets(transport) == list(range(1, 53))
        assert len(transport.written) <= passes  # one write per subscriber per pass


async def test_concurrent_publishers_reach_every_subscriber_in_order_each_once(
    hub: CountingHub,
) -> None:
    _, transports = await _subscribed(hub, 3)

    async def publisher(name: int) -> list[int]:
        return [(await hub.publish(CHANNEL, {"p": name, "i": i})).offset for i in range(10)]

    offsets = await asyncio.gather(*(publisher(name) for name in range(8)))
    assert sorted(o for mine in offsets for o in mine) == list(range(1, 81))
    await eventually(lambda: all(len(_offsets(t)) == 80 for t in transports), what="80 each")
    for transport in transports:
        assert _offsets(transport) == list(range(1, 81))
    written: Any = [len(t.written) for t in transports]
    assert max(written) < 80, "publications read together share a write"
