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
from pubsub.presence import PresenceEntry
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


class JsonEncoder:
    """A :class:`pubsub.hub.Encoder` emitting plain JSON; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def publication(self, pub: Publication) -> bytes:
        self.calls += 1
        return encode(pub)

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        self.calls += 1
        return orjson.dumps({"type": kind, "user": entry.user_id})


class YieldingBroker(MemoryBroker):
    """The memory broker, but every read yields to the loop a random number of times, so
    publishers really interleave with subscribes (as they do over a network)."""

    instant_reads = False  # its reads wait on the loop: the hub coalesces them

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
    hub = Hub(YieldingBroker(), namespaces, JsonEncoder(), release_delay=0.01)
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
    encoder = JsonEncoder()
    hub = Hub(MemoryBroker(), default_namespaces(), encoder)
    await hub.start()
    subs = [Recorder() for _ in range(100)]
    for sub in subs:
        await hub.subscribe(sub, "alerts:x")
    await hub.publish("alerts:x", {"x": 1})
    await hub.close()
    assert encoder.calls == 1
    assert all(sub.offsets == [1] for sub in subs)


class TaggedEncoder(JsonEncoder):
    """Another wire protocol: the same fields plus the protocol's tag."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def publication(self, pub: Publication) -> bytes:
        self.calls += 1
        return orjson.dumps({"offset": pub.offset, "wire": self.tag})

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        self.calls += 1
        return orjson.dumps({"type": kind, "user": entry.user_id, "wire": self.tag})


class Frames:
    """A subscriber that keeps every decoded frame."""

    def __init__(self) -> None:
        self.frames: list[dict[str, object]] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(orjson.loads(frame))

    def lost(self, channel: str, position: StreamPosition) -> None:
        raise AssertionError("nothing is lost here")


class HoldingBroker(MemoryBroker):
    """The memory broker, but live publications can be held back (as pub/sub lags behind the
    stream in Redis), so a subscriber's position can be ahead of what the hub delivered."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self.held: list[Publication] = []
        self.hub: Hub | None = None

    async def start(self, handler) -> None:  # type: ignore[no-untyped-def]
        self.hub = handler
        await super().start(self)

    def on_publication(self, publication: Publication) -> None:
        assert self.hub is not None
        if self.holding:
            self.held.append(publication)
        else:
            self.hub.on_publication(publication)

    def on_control(self, data: bytes) -> None:
        assert self.hub is not None
        self.hub.on_control(data)

    def on_reconnected(self) -> None:
        assert self.hub is not None
        self.hub.on_reconnected()

    def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for publication in held:
            self.on_publication(publication)


async def test_two_protocols_on_one_channel_are_each_encoded_once() -> None:
    ours, theirs = TaggedEncoder("ours"), TaggedEncoder("theirs")
    hub = Hub(MemoryBroker(), default_namespaces(), ours)
    await hub.start()
    subs = {ours: [Frames() for _ in range(30)], theirs: [Frames() for _ in range(30)]}
    for encoder, group in subs.items():
        for sub in group:
            await hub.subscribe(sub, "proposals:x", encoder=encoder)
    await hub.publish("proposals:x", {"x": 1})
    await hub.publish("proposals:x", {"x": 2})
    assert (ours.calls, theirs.calls) == (2, 2)
    entry = PresenceEntry("client-1", "user-1")
    assert hub.deliver_presence("proposals:x", "join", entry) == 60
    assert (ours.calls, theirs.calls) == (3, 3)
    await hub.close()
    for encoder, group in subs.items():
        for sub in group:
            assert sub.frames == [
                {"offset": 1, "wire": encoder.tag},
                {"offset": 2, "wire": encoder.tag},
                {"type": "join", "user": "user-1", "wire": encoder.tag},
            ]


async def test_subscribers_catching_up_reuse_the_live_encoding() -> None:
    """Subscribers whose position is ahead of the live stream wait for it (``skip``); when it
    passes them they get the frame already made for their protocol, or one made once."""
    ours, theirs = TaggedEncoder("ours"), TaggedEncoder("theirs")
    broker = HoldingBroker()
    hub = Hub(broker, default_namespaces(), ours)
    await hub.start()
    live = Frames()
    await hub.subscribe(live, "alerts:s")
    first = await hub.publish("alerts:s", 1)
    broker.holding = True
    await hub.publish("alerts:s", 2)  # in the stream, not delivered yet
    # Clients that saw offset 1 elsewhere recover from it: history gives them offset 2, which
    # puts them ahead of the live stream here. (A plain subscribe starts where the live stream
    # is, without a read.)
    seen = StreamPosition(1, first.epoch)
    ahead_theirs, ahead_ours = Frames(), Frames()
    started = await hub.subscribe(ahead_theirs, "alerts:s", seen, encoder=theirs)
    assert started.position.offset == 2
    assert [p.offset for p in started.publications] == [2]
    await hub.subscribe(ahead_ours, "alerts:s", seen)
    broker.release()  # offset 2 reaches the live subscriber only
    assert (ours.calls, theirs.calls) == (2, 0)
    await hub.publish("alerts:s", 3)  # passes both waiting subscribers
    assert (ours.calls, theirs.calls) == (3, 1)
    await hub.publish("alerts:s", 4)
    assert (ours.calls, theirs.calls) == (4, 2)
    await hub.close()
    assert [f["offset"] for f in live.frames] == [1, 2, 3, 4]
    assert ahead_ours.frames == [{"offset": 3, "wire": "ours"}, {"offset": 4, "wire": "ours"}]
    assert ahead_theirs.frames == [{"offset": 3, "wire": "theirs"}, {"offset": 4, "wire": "theirs"}]


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
        # The reply's position is where the tail starts: nothing at or below it follows.
        if result.tail:
            assert result.tail[0].offset == result.position.offset + 1
        subs.append((sub, result.position.offset))
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


async def test_resubscribed_refills_only_the_channels_named(hub: Hub) -> None:
    moved, stayed = Recorder(), Recorder()
    await hub.subscribe(moved, "alerts:moved")
    await hub.subscribe(stayed, "alerts:stayed")
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    for channel in ("alerts:moved", "alerts:stayed"):
        broker._subscribed.discard(channel)
        await hub.publish(channel, 1)
        broker._subscribed.add(channel)
    hub.on_resubscribed(["alerts:moved", "alerts:unknown"])  # e.g. a Redis Cluster slot moved
    for _ in range(50):
        if moved.offsets == [1]:
            break
        await asyncio.sleep(0.01)
    assert moved.offsets == [1]
    await asyncio.sleep(0.05)
    assert stayed.offsets == [], "not refilled: its subscription was never lost"


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


async def test_control_messages_are_routed_by_op(hub: Hub) -> None:
    kicks: list[dict[str, object]] = []
    others: list[dict[str, object]] = []
    hub.add_control_handler("kick", kicks.append)
    hub.add_control_handler("other", others.append)
    await hub.publish_control("kick", {"user": "u1"})
    assert kicks == [{"user": "u1", "op": "kick"}]
    assert others == []


async def test_malformed_control_messages_are_ignored_and_later_ones_still_routed(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    kicks: list[dict[str, object]] = []
    hub.add_control_handler("kick", kicks.append)
    for raw in (b"not json", b"[1, 2]", b'{"op": 7}', b'{"no": "op"}'):
        await hub.broker.publish_control(raw)
    await hub.publish_control("kick", {"user": "u2"})
    assert kicks == [{"user": "u2", "op": "kick"}]
    assert caplog.text.count("malformed control message ignored") == 4


async def test_a_failing_control_handler_does_not_stop_the_others(hub: Hub) -> None:
    def broken(message: dict[str, object]) -> None:
        raise RuntimeError("boom")

    kicks: list[dict[str, object]] = []
    hub.add_control_handler("kick", broken)
    hub.add_control_handler("kick", kicks.append)
    await hub.publish_control("kick", {"user": "u3"})
    assert kicks == [{"user": "u3", "op": "kick"}]


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


class GatedUnsubscribe(MemoryBroker):
    """The memory broker whose upstream unsubscribe waits for ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.unsubscribing = False
        self.subscribe_calls = 0

    async def subscribe(self, channel: str) -> None:
        self.subscribe_calls += 1
        await super().subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.unsubscribing = True
        await self.gate.wait()
        await super().unsubscribe(channel)


async def test_a_subscribe_during_the_release_of_a_channel_waits_and_subscribes_again() -> None:
    """Subscribes to a live channel skip its lock; one that arrives while the channel's
    upstream subscription is being released (the release holds the lock across the broker
    call) waits for it and subscribes upstream again, and gets the publications after."""
    broker = GatedUnsubscribe()
    hub = Hub(broker, default_namespaces(), JsonEncoder(), release_delay=0.01)
    await hub.start()
    try:
        first, second, third = Recorder(), Recorder(), Recorder()
        await hub.subscribe(first, "alerts:churn")
        await hub.subscribe(second, "alerts:churn")  # live channel: no lock
        hub.unsubscribe(first, "alerts:churn")
        hub.unsubscribe(second, "alerts:churn")
        await eventually(lambda: broker.unsubscribing, what="the release to reach the broker")
        joining = asyncio.create_task(hub.subscribe(third, "alerts:churn"))
        await asyncio.sleep(0.02)
        assert not joining.done()  # behind the release
        broker.gate.set()
        third.take(await joining)
        assert broker.subscribe_calls == 2
        await hub.publish("alerts:churn", {"x": 1})
        assert third.offsets == [1]
        assert first.offsets == second.offsets == []
    finally:
        broker.gate.set()
        await hub.close()
