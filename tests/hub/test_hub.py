"""Hub semantics on the memory broker: offsets, recovery, races, gaps, one upstream subscription."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from pubsub.broker import Publication, StreamPosition
from pubsub.hub import Hub, SubscribeResult
from pubsub.memory import MemoryBroker
from pubsub.namespaces import NamespaceOptions, default_namespaces
from tests.helpers import eventually


class Recorder:
    """A subscriber that decodes what it is given (the encoder below emits plain JSON)."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.lost_positions: list[StreamPosition] = []

    def deliver(self, frame: bytes) -> None:
        self.offsets.append(orjson.loads(frame)["offset"])

    def lost(self, channel: str, position: StreamPosition) -> None:
        self.lost_positions.append(position)

    def take(self, result: SubscribeResult) -> None:
        """What a WebSocket session does with a subscribe result: reply, then tail."""
        self.offsets.extend(p.offset for p in result.publications)
        self.offsets.extend(p.offset for p in result.tail)


def encode(pub: Publication) -> bytes:
    return orjson.dumps({"offset": pub.offset, "epoch": pub.epoch})


class YieldingBroker(MemoryBroker):
    """The memory broker, but every read yields to the loop a random number of times, so
    publishers really interleave with subscribes (as they do over a network)."""

    def __init__(self, seed: int = 7) -> None:
        super().__init__()
        self.random = random.Random(seed)
        self.subscribe_calls = 0

    async def _yield(self) -> None:
        for _ in range(self.random.randint(0, 5)):
            await asyncio.sleep(0)

    async def subscribe(self, channel: str) -> None:
        self.subscribe_calls += 1
        await self._yield()
        await super().subscribe(channel)
        await self._yield()

    async def history(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        await self._yield()
        result = await super().history(*args, **kwargs)
        await self._yield()
        return result

    async def position(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        await self._yield()
        result = await super().position(*args, **kwargs)
        await self._yield()
        return result


@pytest.fixture
async def hub() -> Hub:
    namespaces = default_namespaces()
    namespaces["tiny"] = NamespaceOptions(history_size=5)
    hub = Hub(YieldingBroker(), namespaces, encode, release_delay=0.01)
    await hub.start()
    yield hub
    await hub.close()


async def test_offsets_are_sequential_with_one_epoch(hub: Hub) -> None:
    results = [await hub.publish("alerts:a", {"i": i}) for i in range(3)]
    assert [r.offset for r in results] == [1, 2, 3]
    assert len({r.epoch for r in results}) == 1


async def test_one_upstream_subscription_for_many_local_subscribers(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, YieldingBroker)
    subs = [Recorder() for _ in range(50)]
    await asyncio.gather(*(hub.subscribe(sub, "alerts:shared") for sub in subs))
    assert broker.subscribe_calls == 1
    await hub.publish("alerts:shared", {"x": 1})
    assert all(sub.offsets == [1] for sub in subs)


async def test_publication_is_encoded_once_for_all_subscribers() -> None:
    calls = 0

    def counting(pub: Publication) -> bytes:
        nonlocal calls
        calls += 1
        return encode(pub)

    hub = Hub(MemoryBroker(), default_namespaces(), counting)
    await hub.start()
    subs = [Recorder() for _ in range(100)]
    for sub in subs:
        await hub.subscribe(sub, "alerts:x")
    await hub.publish("alerts:x", {"x": 1})
    await hub.close()
    assert calls == 1
    assert all(sub.offsets == [1] for sub in subs)


async def test_recovery_returns_missed_publications(hub: Hub) -> None:
    first = await hub.publish("alerts:r", 1)
    for i in range(4):
        await hub.publish("alerts:r", i)
    sub = Recorder()
    result = await hub.subscribe(sub, "alerts:r", StreamPosition(2, first.epoch))
    assert result.recovered is True
    assert [p.offset for p in result.publications] == [3, 4, 5]
    assert result.position.offset == 5


async def test_recovery_fails_when_epoch_changed_or_history_trimmed(hub: Hub) -> None:
    result = await hub.publish("tiny:t", 0)
    stale = await hub.subscribe(Recorder(), "tiny:t", StreamPosition(1, "other-epoch"))
    assert stale.recovered is False
    for i in range(10):
        await hub.publish("tiny:t", i)
    trimmed = await hub.subscribe(Recorder(), "tiny:t", StreamPosition(1, result.epoch))
    assert trimmed.recovered is False
    # what is still in history is returned anyway
    assert [p.offset for p in trimmed.publications] == [7, 8, 9, 10, 11]


async def test_recovery_is_gap_free_while_publishers_race(hub: Hub) -> None:
    """Thousands of publications from several publishers while subscribers (re)subscribe with
    ``since``: each subscriber sees every offset after its ``since`` exactly once, in order."""
    channel = "alerts:race"
    total = 3000
    first = await hub.publish(channel, 0)

    async def publisher(count: int) -> None:
        for i in range(count):
            await hub.publish(channel, i)
            if i % 7 == 0:
                await asyncio.sleep(0)

    async def resubscriber(seed: int) -> Recorder:
        rng = random.Random(seed)
        sub = Recorder()
        since = StreamPosition(1, first.epoch)
        sub.offsets.append(1)
        for _ in range(20):
            result = await hub.subscribe(sub, channel, since)
            assert result.recovered is True
            sub.take(result)
            for _ in range(rng.randint(0, 30)):
                await asyncio.sleep(0)
            hub.unsubscribe(sub, channel)
            since = StreamPosition(sub.offsets[-1], first.epoch)
        await hub.subscribe(sub, channel, since)
        return sub

    publishers = [asyncio.create_task(publisher((total - 1) // 3 + 1)) for _ in range(3)]
    subscribers = await asyncio.gather(*(resubscriber(seed) for seed in range(8)))
    await asyncio.gather(*publishers)
    last = (await hub.broker.position(channel, hub.options(channel))).offset
    for sub in subscribers:
        assert sub.offsets == list(range(1, last + 1))


async def test_plain_subscribe_during_publishing_has_no_gap_or_duplicate(hub: Hub) -> None:
    channel = "alerts:plain"
    stop = asyncio.Event()

    async def publisher() -> None:
        while not stop.is_set():
            await hub.publish(channel, 1)
            await asyncio.sleep(0)

    task = asyncio.create_task(publisher())
    subs: list[tuple[Recorder, int]] = []
    for _ in range(30):
        sub = Recorder()
        result = await hub.subscribe(sub, channel)
        sub.take(result)
        subs.append((sub, result.position.offset - len(result.tail)))
        await asyncio.sleep(0)
    stop.set()
    await task
    last = (await hub.broker.position(channel, hub.options(channel))).offset
    for sub, start in subs:
        assert sub.offsets == list(range(start + 1, last + 1))


async def test_gap_on_live_stream_is_refilled_from_history(hub: Hub) -> None:
    channel = "alerts:gap"
    sub = Recorder()
    await hub.subscribe(sub, channel)
    await hub.publish(channel, 1)
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    # Simulate Redis pub/sub dropping two messages: they reach history but not the hub.
    broker._subscribed.discard(channel)
    await hub.publish(channel, 2)
    await hub.publish(channel, 3)
    broker._subscribed.add(channel)
    await hub.publish(channel, 4)
    await eventually(lambda: len(sub.offsets) == 4, what="len(sub.offsets) == 4")
    assert sub.offsets == [1, 2, 3, 4]
    assert sub.lost_positions == []


async def test_gap_beyond_history_tells_subscribers(hub: Hub) -> None:
    channel = "tiny:lost"
    sub = Recorder()
    await hub.subscribe(sub, channel)
    await hub.publish(channel, 1)
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    broker._subscribed.discard(channel)
    for i in range(10):  # history keeps only 5 of these
        await hub.publish(channel, i)
    broker._subscribed.add(channel)
    await hub.publish(channel, "after")
    await eventually(lambda: sub.offsets[-1:] == [12], what="sub.offsets[-1:] == [12]")
    assert sub.lost_positions, "subscriber must be told about the hole"
    assert sub.offsets[0] == 1
    assert sub.offsets[-1] == 12
    assert sub.offsets == sorted(set(sub.offsets))


async def test_reconnect_refills_tail_without_new_publications(hub: Hub) -> None:
    channel = "alerts:tail"
    sub = Recorder()
    await hub.subscribe(sub, channel)
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    broker._subscribed.discard(channel)
    await hub.publish(channel, 1)
    await hub.publish(channel, 2)
    broker._subscribed.add(channel)
    hub.on_reconnected()
    await eventually(lambda: len(sub.offsets) == 2, what="len(sub.offsets) == 2")
    assert sub.offsets == [1, 2]


async def test_unsubscribe_stops_delivery_and_releases_upstream(hub: Hub) -> None:
    sub = Recorder()
    await hub.subscribe(sub, "alerts:u")
    assert hub.unsubscribe(sub, "alerts:u") is True
    assert hub.unsubscribe(sub, "alerts:u") is False
    await hub.publish("alerts:u", 1)
    assert sub.offsets == []
    await eventually(lambda: "alerts:u" not in hub.channels(), what="upstream released")


async def test_idempotent_publish_returns_first_offset(hub: Hub) -> None:
    sub = Recorder()
    await hub.subscribe(sub, "alerts:i")
    first = await hub.publish("alerts:i", 1, idempotency_key="k")
    again = await hub.publish("alerts:i", 1, idempotency_key="k")
    assert (again.offset, again.duplicate) == (first.offset, True)
    assert sub.offsets == [1]


async def test_control_messages_reach_handlers(hub: Hub) -> None:
    seen: list[bytes] = []
    hub.add_control_handler(seen.append)
    await hub.publish_control(b"hello")
    assert seen == [b"hello"]


async def test_new_epoch_on_the_live_stream_is_reported_and_delivered_from_its_start(
    hub: Hub,
) -> None:
    channel = "alerts:epoch"
    sub = Recorder()
    await hub.subscribe(sub, channel)
    first = await hub.publish(channel, 1)
    await hub.publish(channel, 2)
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    del broker._streams[channel]  # history lost (e.g. Redis restarted empty)
    fresh = await hub.publish(channel, "new")
    assert fresh.epoch != first.epoch
    assert fresh.offset == 1
    await hub.publish(channel, "newer")
    await eventually(lambda: len(sub.offsets) == 4, what="len(sub.offsets) == 4")
    assert sub.lost_positions == [StreamPosition(0, fresh.epoch)]
    assert sub.offsets == [1, 2, 1, 2]  # old epoch 1, 2; then the new epoch from its start
