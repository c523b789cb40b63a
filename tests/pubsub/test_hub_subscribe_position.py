"""The subscribe reply's position is where the tail starts.

A client keeps the reply's ``offset`` and drops publications at or below it as duplicates (the
bundled JS client does, as ``docs/protocol.md`` tells it to: "the next publication you receive
has offset ``offset + 1``"). Publications that land during the subscribe are sent right after
the reply (the tail), so the reply must not count them, or that client drops them.
"""

from __future__ import annotations

from typing import Any

from pubsub.broker import HistoryResult, StreamPosition
from pubsub.hub import Hub
from pubsub.memory import MemoryBroker
from pubsub.namespaces import NamespaceOptions, default_namespaces
from tests.pubsub.test_hub_single_flight import JsonEncoder, Recorder

CHANNEL = "storm:a"


class LandingBroker(MemoryBroker):
    """Publishes ``land`` publications right after each read, before answering with what it
    read: as if publishers raced the subscribe (they do, over a network)."""

    def __init__(self) -> None:
        super().__init__()
        self.land = 0
        self.options = NamespaceOptions(history_size=100, recovery=True)

    async def _publish_landing(self, channel: str) -> None:
        land, self.land = self.land, 0
        for i in range(land):
            await self.publish(channel, b'{"landed": %d}' % i, self.options)

    async def position(self, channel: str, options: NamespaceOptions) -> StreamPosition:
        position = await super().position(channel, options)
        await self._publish_landing(channel)
        return position

    async def history(self, *args: Any, **kwargs: Any) -> HistoryResult:
        hist = await super().history(*args, **kwargs)
        await self._publish_landing(args[0])
        return hist


def kept(start: int, offsets: list[int]) -> list[int]:
    """What the JS client keeps of ``offsets`` when it stands at ``start``: only newer ones
    (the reply's offset after a plain or unrecovered subscribe, ``since`` when recovering)."""
    out: list[int] = []
    for offset in offsets:
        if offset > start:
            out.append(offset)
            start = offset
    return out


async def make_hub(live: bool = True) -> tuple[Hub, LandingBroker]:
    broker = LandingBroker()
    namespaces = default_namespaces()
    namespaces["storm"] = broker.options
    hub = Hub(broker, namespaces, JsonEncoder())
    await hub.start()
    if live:
        # Someone is subscribed already, so the channel's live stream runs during the
        # subscribes.
        await hub.subscribe(Recorder(), CHANNEL)
    return hub, broker


async def test_plain_subscribe_reports_the_position_before_the_tail() -> None:
    # The channel's first subscriber: its position is read (a subscriber of a live channel
    # starts at the live stream's offset without a read, so nothing lands meanwhile).
    hub, broker = await make_hub(live=False)
    try:
        for _ in range(3):
            await hub.publish(CHANNEL, {"before": True})
        broker.land = 2
        result = await hub.subscribe(Recorder(), CHANNEL)
        assert result.recovered is None
        assert result.position.offset == 3
        assert [p.offset for p in result.tail] == [4, 5]
        assert kept(result.position.offset, [p.offset for p in result.tail]) == [4, 5]
    finally:
        await hub.close()


async def test_recovering_subscribe_reports_the_position_before_the_tail() -> None:
    hub, broker = await make_hub()
    try:
        first = await hub.publish(CHANNEL, {"before": True})
        for _ in range(2):
            await hub.publish(CHANNEL, {"before": True})
        broker.land = 2
        since = StreamPosition(first.offset, first.epoch)
        result = await hub.subscribe(Recorder(), CHANNEL, since)
        assert result.recovered is True
        assert [p.offset for p in result.publications] == [2, 3]
        assert result.position == StreamPosition(3, first.epoch)
        assert [p.offset for p in result.tail] == [4, 5]
        received = [p.offset for p in [*result.publications, *result.tail]]
        assert kept(since.offset, received) == [2, 3, 4, 5]
        # and the next live publication follows the tail
        assert result.position.offset + len(result.tail) == 5
    finally:
        await hub.close()


async def test_not_recovered_subscribe_reports_the_position_before_the_tail() -> None:
    hub, broker = await make_hub()
    try:
        for _ in range(3):
            await hub.publish(CHANNEL, {"before": True})
        position = await hub.position(CHANNEL)
        broker.land = 1
        result = await hub.subscribe(Recorder(), CHANNEL, StreamPosition(1, "another epoch"))
        assert result.recovered is False
        assert result.publications == []
        assert result.position == position
        assert [p.offset for p in result.tail] == [4]
        assert kept(result.position.offset, [4]) == [4]
    finally:
        await hub.close()
