"""Redis-only behaviour the hub depends on: history loss and epochs, and gaps on the live stream
when the pub/sub connection drops while another node keeps publishing. Whatever happens, a hub
subscriber sees every offset exactly once in order, or is told with ``lost()`` — never a silent
hole."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio

from pubsub.broker import BrokerUnavailable, StreamPosition
from pubsub.hub import Hub
from pubsub.namespaces import NamespaceOptions
from pubsub.redis_broker import RedisBroker
from pubsub.redis_pubsub import ReconnectPolicy
from tests.pubsub.support import (
    ENCODER,
    Recorder,
    Sink,
    assert_no_silent_hole,
    encode,
    eventually,
    kill_pubsub,
    wait_for_offsets,
)

NAMESPACES = {"alerts": NamespaceOptions(), "tiny": NamespaceOptions(history_size=3)}
ALERTS = NAMESPACES["alerts"]

MakeHub = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def make_hub(redis_url: str, redis_prefix: str) -> AsyncIterator[MakeHub]:
    """Start hubs over Redis brokers sharing this test's prefix (like nodes of one cluster)."""
    hubs: list[Hub] = []

    async def make(**broker_options: Any) -> Hub:
        broker = RedisBroker(redis_url, prefix=redis_prefix, **broker_options)
        hub = Hub(broker, NAMESPACES, ENCODER, release_delay=0.05)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.close()


@pytest.fixture
async def publisher(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBroker]:
    """Another node's broker, used only to publish."""
    broker = RedisBroker(redis_url, prefix=redis_prefix)
    await broker.start(Recorder())
    yield broker
    await broker.close()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def redis_broker(hub: Hub) -> RedisBroker:
    assert isinstance(hub.broker, RedisBroker)
    return hub.broker


async def subscribe(hub: Hub, channel: str, since: StreamPosition | None = None) -> Sink:
    """Subscribe a new sink the way the WebSocket handler does (reply, then the tail)."""
    sink = Sink()
    result = await hub.subscribe(sink, channel, since)
    for pub in [*result.publications, *result.tail]:
        sink.deliver(encode(pub))
    return sink


async def test_recovery_from_history_in_the_same_epoch(
    make_hub: MakeHub, publisher: RedisBroker
) -> None:
    hub = await make_hub()
    first = [await publisher.publish("alerts:r", b"%d" % n, ALERTS) for n in range(4)]
    sink = Sink()
    result = await hub.subscribe(sink, "alerts:r", StreamPosition(1, first[0].epoch))
    assert result.recovered is True
    assert [p.offset for p in result.publications] == [2, 3, 4]
    assert result.position == StreamPosition(4, first[0].epoch)


async def test_lost_history_starts_a_new_epoch_and_recovery_says_so(
    make_hub: MakeHub, publisher: RedisBroker, admin: redis.asyncio.Redis
) -> None:
    hub = await make_hub()
    old = [await publisher.publish("alerts:h", b"%d" % n, ALERTS) for n in range(3)]
    keys = publisher.keys
    await admin.delete(keys.meta("alerts:h"), keys.stream("alerts:h"))

    sink = Sink()
    result = await hub.subscribe(sink, "alerts:h", StreamPosition(3, old[0].epoch))
    assert result.recovered is False
    assert result.publications == []
    assert result.position.offset == 0
    assert result.position.epoch != old[0].epoch

    new = await publisher.publish("alerts:h", b"1", ALERTS)
    assert (new.offset, new.epoch) == (1, result.position.epoch)
    await eventually(lambda: sink.offsets() == [1], what="first publication of the new epoch")


async def test_expired_history_keeps_offsets_but_recovery_reports_the_loss(
    make_hub: MakeHub, publisher: RedisBroker, admin: redis.asyncio.Redis
) -> None:
    hub = await make_hub()
    old = [await publisher.publish("alerts:x", b"%d" % n, ALERTS) for n in range(3)]
    await admin.delete(publisher.keys.stream("alerts:x"))  # history TTL ran out, meta did not

    sink = Sink()
    result = await hub.subscribe(sink, "alerts:x", StreamPosition(1, old[0].epoch))
    assert result.recovered is False
    assert result.position == StreamPosition(3, old[0].epoch)
    after = await publisher.publish("alerts:x", b"4", ALERTS)
    assert (after.offset, after.epoch) == (4, old[0].epoch), "offsets keep counting"
    await eventually(lambda: sink.offsets() == [4], what="offset 4")


async def test_live_epoch_change_tells_subscribers(
    make_hub: MakeHub, publisher: RedisBroker, admin: redis.asyncio.Redis
) -> None:
    hub = await make_hub()
    sink = await subscribe(hub, "alerts:e")
    first = await publisher.publish("alerts:e", b"1", ALERTS)
    await eventually(lambda: sink.offsets() == [1], what="offset 1")
    await admin.delete(publisher.keys.meta("alerts:e"), publisher.keys.stream("alerts:e"))

    renewed = await publisher.publish("alerts:e", b"1", ALERTS)
    assert renewed.epoch != first.epoch
    await eventually(lambda: bool(sink.losses()), what="lost() after the epoch changed")
    assert sink.losses()[0][1] == renewed.epoch
    following = await publisher.publish("alerts:e", b"2", ALERTS)
    await eventually(lambda: following.offset in sink.offsets(), what="next publication")
    assert_no_silent_hole(sink)


async def test_gaps_from_dropped_connections_are_refilled_in_order(
    make_hub: MakeHub, publisher: RedisBroker, redis_url: str
) -> None:
    hub = await make_hub()
    broker = redis_broker(hub)
    sink = await subscribe(hub, "alerts:g")
    total = 300

    async def publish_continuously() -> None:
        for n in range(total):
            await publisher.publish("alerts:g", b"%d" % n, ALERTS)
            await asyncio.sleep(0.001)

    task = asyncio.create_task(publish_continuously())
    await eventually(lambda: len(sink.offsets()) >= 50, what="50 publications")
    await kill_pubsub(redis_url, broker)
    await eventually(lambda: broker.pubsub.reconnects == 1, what="first reconnect")
    await eventually(lambda: len(sink.offsets()) >= 150, what="150 publications")
    await kill_pubsub(redis_url, broker)
    await task
    await eventually(lambda: len(sink.offsets()) >= total, what="every publication")
    assert sink.offsets() == list(range(1, total + 1)), "each offset exactly once, in order"
    assert sink.losses() == []
    assert broker.pubsub.reconnects == 2


async def test_publications_missed_while_disconnected_arrive_after_reconnect(
    make_hub: MakeHub, publisher: RedisBroker, redis_url: str
) -> None:
    # Nothing is published after the outage, so only the reconnect refill can deliver them.
    hub = await make_hub(reconnect=ReconnectPolicy(minimum=0.3))
    broker = redis_broker(hub)
    sink = await subscribe(hub, "alerts:m")
    await publisher.publish("alerts:m", b"1", ALERTS)
    await eventually(lambda: sink.offsets() == [1], what="offset 1")

    await kill_pubsub(redis_url, broker)
    for n in range(5):
        await publisher.publish("alerts:m", b"%d" % n, ALERTS)
    assert sink.offsets() == [1], "published while the connection was down"
    await eventually(lambda: sink.offsets() == [1, 2, 3, 4, 5, 6], what="refill after reconnect")
    assert sink.losses() == []


async def test_subscriber_is_told_when_history_no_longer_covers_the_gap(
    make_hub: MakeHub, publisher: RedisBroker, redis_url: str
) -> None:
    hub = await make_hub(reconnect=ReconnectPolicy(minimum=0.3))
    broker = redis_broker(hub)
    tiny = NAMESPACES["tiny"]
    sink = await subscribe(hub, "tiny:t")
    for n in range(2):
        await publisher.publish("tiny:t", b"%d" % n, tiny)
    await eventually(lambda: sink.offsets() == [1, 2], what="offsets 1, 2")

    await kill_pubsub(redis_url, broker)
    results = [await publisher.publish("tiny:t", b"%d" % n, tiny) for n in range(10)]
    await eventually(lambda: bool(sink.losses()), what="lost()")
    assert sink.losses() == [(9, results[0].epoch)], "history keeps only 10, 11, 12"
    await eventually(lambda: sink.offsets()[-1] == 12, what="what history still had")
    last = await publisher.publish("tiny:t", b"13", tiny)
    await eventually(lambda: sink.offsets()[-1] == last.offset, what="live again")
    assert sink.offsets() == [1, 2, 10, 11, 12, 13]
    assert_no_silent_hole(sink)


async def test_start_fails_fast_when_redis_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    broker = RedisBroker(f"redis://127.0.0.1:{port}/0", connect_timeout=1.0)
    with pytest.raises(BrokerUnavailable):
        await broker.start(Recorder())
    await broker.close()


async def test_reader_survives_malformed_messages(
    make_hub: MakeHub,
    publisher: RedisBroker,
    admin: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = await make_hub()
    sink = await subscribe(hub, "alerts:bad")
    live = publisher.keys.live("alerts:bad")
    await admin.publish(live, b"not a publication")
    await admin.publish(live, b"x y z")
    await admin.publish(publisher.keys.control, b"\xff not json")  # handlers decide
    first = await publisher.publish("alerts:bad", b"1", ALERTS)
    await eventually(lambda: sink.offsets() == [first.offset], what="a good message afterwards")
    assert redis_broker(hub).pubsub.reconnects == 0, "the connection was kept"
    assert "pub/sub message handling failed" in caplog.text


async def test_nodes_publishing_concurrently_share_one_offset_sequence(
    make_hub: MakeHub, redis_url: str, redis_prefix: str
) -> None:
    hub = await make_hub()
    sink = await subscribe(hub, "alerts:shared")
    nodes = [RedisBroker(redis_url, prefix=redis_prefix) for _ in range(2)]
    for node in nodes:
        await node.start(Recorder())
    try:
        results = await asyncio.gather(
            *(
                node.publish("alerts:shared", b"%d" % n, ALERTS)
                for n in range(100)
                for node in nodes
            )
        )
    finally:
        for node in nodes:
            await node.close()
    assert sorted(r.offset for r in results) == list(range(1, 201))
    await eventually(lambda: len(sink.offsets()) == 200, what="200 publications")
    assert sink.offsets() == list(range(1, 201))


async def test_subscribes_racing_a_publish_stream_miss_nothing(
    make_hub: MakeHub, publisher: RedisBroker
) -> None:
    # Redis delivers asynchronously, so a subscribe can land between a publication's offset
    # assignment and its arrival on the live stream; the hub must neither skip nor repeat it.
    hub = await make_hub()
    total = 200

    async def publish_continuously() -> None:
        for n in range(total):
            await publisher.publish("alerts:race", b"%d" % n, ALERTS)
            if n % 10 == 0:
                await asyncio.sleep(0.001)

    task = asyncio.create_task(publish_continuously())
    joined: list[tuple[Sink, int]] = []
    for _ in range(20):
        sink = Sink()
        result = await hub.subscribe(sink, "alerts:race")
        start = result.position.offset
        if result.tail:
            assert result.tail[0].offset == start + 1
        for pub in result.tail:
            sink.deliver(encode(pub))
        joined.append((sink, start))
        await asyncio.sleep(0.002)
    await task
    for sink, start in joined:
        expected = list(range(start + 1, total + 1))
        await wait_for_offsets(sink, len(expected))
        assert sink.losses() == []
        assert sink.offsets() == expected
