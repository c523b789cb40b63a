"""A burst of recovering subscribers (a reconnect storm) reads history once per channel."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from pubsub.broker import HistoryResult, Publication, StreamPosition
from pubsub.hub import Hub, SubscribeResult
from pubsub.memory import MemoryBroker
from pubsub.namespaces import NamespaceOptions, default_namespaces
from pubsub.presence import PresenceEntry


class Recorder:
    """A subscriber keeping the offsets it is given, in order."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.lost_positions: list[StreamPosition] = []

    def deliver(self, frame: bytes) -> None:
        self.offsets.append(orjson.loads(frame)["offset"])

    def lost(self, channel: str, position: StreamPosition) -> None:
        self.lost_positions.append(position)

    def take(self, result: SubscribeResult) -> None:
        self.offsets.extend(p.offset for p in result.publications)
        self.offsets.extend(p.offset for p in result.tail)


class JsonEncoder:
    def publication(self, pub: Publication) -> bytes:
        return orjson.dumps({"offset": pub.offset})

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        return b"{}"


class CountingBroker(MemoryBroker):
    """The memory broker counting history reads; each read waits on the loop a little, as a
    network read does, so concurrent subscribes really overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.history_calls = 0

    async def history(self, *args: Any, **kwargs: Any) -> HistoryResult:
        self.history_calls += 1
        for _ in range(3):
            await asyncio.sleep(0)
        return await super().history(*args, **kwargs)


async def test_many_concurrent_recovering_subscribers_cause_one_history_read() -> None:
    broker = CountingBroker()
    namespaces = default_namespaces()
    namespaces["storm"] = NamespaceOptions(history_size=100, recovery=True)
    hub = Hub(broker, namespaces, JsonEncoder())
    await hub.start()
    try:
        first = [await hub.publish("storm:a", {"i": i}) for i in range(5)]
        since = StreamPosition(first[1].offset, first[1].epoch)
        broker.history_calls = 0
        subs = [Recorder() for _ in range(100)]
        results = await asyncio.gather(*(hub.subscribe(sub, "storm:a", since) for sub in subs))
        assert broker.history_calls == 1
        for sub, result in zip(subs, results, strict=True):
            assert result.recovered is True
            sub.take(result)
        # Each subscriber got its own list: nobody sees another's appended publications.
        assert all(sub.offsets == [3, 4, 5] for sub in subs)
        await hub.publish("storm:a", {"i": 5})
        assert all(sub.offsets == [3, 4, 5, 6] for sub in subs)
    finally:
        await hub.close()


class GatedBroker(CountingBroker):
    """History reads answer with what the broker held when they started, once ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def history(self, *args: Any, **kwargs: Any) -> HistoryResult:
        self.history_calls += 1
        hist = await MemoryBroker.history(self, *args, **kwargs)
        await self.gate.wait()
        return hist


async def storm_hub(broker: MemoryBroker) -> Hub:
    namespaces = default_namespaces()
    namespaces["storm"] = NamespaceOptions(history_size=100, recovery=True)
    hub = Hub(broker, namespaces, JsonEncoder())
    await hub.start()
    return hub


async def test_recovering_from_different_offsets_shares_one_history_read() -> None:
    # Clients that went away at different moments resume a few offsets apart; the read from
    # the oldest offset answers all of them, each with exactly what it missed.
    broker = CountingBroker()
    hub = await storm_hub(broker)
    try:
        published = [await hub.publish("storm:a", {"i": i}) for i in range(6)]
        epoch = published[0].epoch
        broker.history_calls = 0
        starts = [1, 3, 2, 6, 1, 4] * 10
        subs = [Recorder() for _ in starts]
        results = await asyncio.gather(
            *(
                hub.subscribe(sub, "storm:a", StreamPosition(start, epoch))
                for sub, start in zip(subs, starts, strict=True)
            )
        )
        assert broker.history_calls == 1
        for sub, start, result in zip(subs, starts, results, strict=True):
            assert result.recovered is True
            assert result.position == StreamPosition(6, epoch)
            sub.take(result)
            assert sub.offsets == list(range(start + 1, 7))
        await hub.publish("storm:a", {"i": 6})
        for sub, start in zip(subs, starts, strict=True):
            assert sub.offsets == list(range(start + 1, 8))
    finally:
        await hub.close()


async def test_a_newer_offset_than_the_read_in_flight_saw_reads_on_its_own() -> None:
    # A read in flight from an older offset ended before this client's offset (the client saw
    # a publication the read did not): sharing it would look like the client is ahead of the
    # stream (recovered: false); the hub reads again for it.
    broker = GatedBroker()
    hub = await storm_hub(broker)
    try:
        published = [await hub.publish("storm:a", {"i": i}) for i in range(5)]
        epoch = published[0].epoch
        broker.history_calls = 0
        early, late = Recorder(), Recorder()
        first = asyncio.ensure_future(hub.subscribe(early, "storm:a", StreamPosition(1, epoch)))
        while broker.history_calls == 0:
            await asyncio.sleep(0)
        sixth = await hub.publish("storm:a", {"i": 5})
        second = asyncio.ensure_future(hub.subscribe(late, "storm:a", StreamPosition(6, epoch)))
        for _ in range(10):
            await asyncio.sleep(0)
        broker.gate.set()
        early_result, late_result = await asyncio.gather(first, second)
        assert broker.history_calls == 2
        assert early_result.recovered is True
        early.take(early_result)
        assert early.offsets == [2, 3, 4, 5, 6]
        assert late_result.recovered is True
        assert late_result.publications == []
        assert late_result.position == StreamPosition(sixth.offset, epoch)
        await hub.publish("storm:a", {"i": 6})
        late.take(late_result)
        assert late.offsets == [7]
    finally:
        await hub.close()
