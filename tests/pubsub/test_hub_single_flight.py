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
