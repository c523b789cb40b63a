"""Publications that arrive together are delivered together: the Redis pub/sub reader hands the
hub everything one socket read brought, the hub fans out each channel's run in one pass, and
nothing is reordered, repeated or held back.

* the pub/sub reader calls ``on_drained`` exactly when its next read would wait for the network;
* the Redis broker hands over a read's publications after the publishers of this process that
  were answered meanwhile have resumed (at most two loop passes), at once when nobody waits,
  and before a control message or a reconnect that followed them;
* the memory broker of the server (``collect_under_load``) delivers inside ``publish`` at light
  load and hands a busy loop pass's publications over together at its end;
* the hub keeps the order of arrival across channels, drops duplicates and refills holes in the
  middle of a batch, and gives an encoder's ``fanout_many`` one call per run.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import pytest
from redis.exceptions import ResponseError

from pubsub.broker import Publication, StreamPosition
from pubsub.hub import Hub
from pubsub.memory import MemoryBroker
from pubsub.namespaces import NamespaceOptions, default_namespaces
from pubsub.presence import PresenceEntry
from pubsub.redis_broker import RedisBroker
from pubsub.redis_pubsub import PubSubConnection, _Resumed
from tests.pubsub.support import Recorder, eventually

# -- the reader's hook ---------------------------------------------------------------------


class FakeConnection:
    """A pub/sub connection whose replies are buffered or arrive later (``arrive``)."""

    def __init__(self) -> None:
        self.buffered: deque[Any] = deque()
        self.more = asyncio.Event()

    async def read_response(self, timeout: float | None = None) -> Any:
        while not self.buffered:  # nothing buffered: wait for the network
            self.more.clear()
            await self.more.wait()
        reply = self.buffered.popleft()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def arrive(self, *replies: Any) -> None:
        self.buffered.extend(replies)
        self.more.set()


async def test_the_reader_hands_over_exactly_when_it_would_wait_for_the_network() -> None:
    events: list[Any] = []
    conn = FakeConnection()
    pubsub = PubSubConnection(
        lambda: cast(Any, conn),
        lambda name, data: events.append(data),
        lambda: None,
        on_drained=lambda: events.append("drained"),
    )
    conn.arrive(*([b"message", b"ch", b"%d" % n] for n in (1, 2, 3)))
    reader = asyncio.create_task(pubsub._read(cast(Any, conn)))
    await eventually(lambda: events == [b"1", b"2", b"3", "drained"], what="first read")
    conn.arrive([b"message", b"ch", b"4"], ResponseError("ERR x"), [b"message", b"ch", b"5"])
    await eventually(lambda: len(events) == 7, what="second read")
    assert events[4:] == [b"4", b"5", "drained"]  # an error reply does not end the read
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert events[-1] == "drained"  # and when the reader stops


async def test_a_resumed_read_gets_what_the_task_sends_and_throws() -> None:
    async def read() -> str:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return "message"

    pending = read()
    assert await _Resumed(pending, pending.send(None)) == "message"

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("lost")

    pending_failure = failing()
    with pytest.raises(ConnectionError):
        await _Resumed(pending_failure, pending_failure.send(None))

    cleaned = asyncio.Event()
    started = asyncio.Event()

    async def forever() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    async def reader() -> None:
        pending_forever = forever()
        await _Resumed(pending_forever, pending_forever.send(None))

    task = asyncio.create_task(reader())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set(), "the read saw the cancellation and cleaned up"


# -- the Redis broker's hand-over ----------------------------------------------------------

CHANNEL = "alerts:batch"


def _wire(offset: int, epoch: str = "e1") -> bytes:
    return b"%d %s %r %s" % (offset, epoch.encode(), time.time(), b'{"n":%d}' % offset)


class Timeline(Recorder):
    """Records publications (one entry per hand-over) and other callbacks in one timeline."""

    def __init__(self) -> None:
        super().__init__()
        self.timeline: list[Any] = []

    def on_publication(self, publication: Publication) -> None:
        super().on_publication(publication)
        self.timeline.append([publication.offset])

    def on_publications(self, publications: list[Publication]) -> None:
        super().on_publications(publications)
        self.timeline.append([p.offset for p in publications])

    def on_control(self, data: bytes) -> None:
        super().on_control(data)
        self.timeline.append(("control", data))

    def on_reconnected(self) -> None:
        super().on_reconnected()
        self.timeline.append("reconnected")


@pytest.fixture
def fed() -> tuple[RedisBroker, Timeline, bytes]:
    """A Redis broker (not connected) fed pub/sub messages by hand, as its reader would."""
    broker = RedisBroker("redis://127.0.0.1:1/0")
    timeline = Timeline()
    broker._handler = timeline
    name = broker.keys.live(CHANNEL)
    broker._channels[name] = CHANNEL
    return broker, timeline, name


def read(broker: RedisBroker, *offsets: int) -> None:
    """One socket read bringing the publications ``offsets``, as the reader hands it over."""
    name = broker.keys.live(CHANNEL)
    for offset in offsets:
        broker._on_message(name, _wire(offset))
    broker._deliver_read()


async def _passes(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_read_is_handed_over_at_once_when_nobody_here_waits(
    fed: tuple[RedisBroker, Timeline, bytes],
) -> None:
    broker, timeline, name = fed
    for offset in (1, 2, 3):
        broker._on_message(name, _wire(offset))
    assert timeline.timeline == []  # the read is not over yet
    broker._deliver_read()
    assert timeline.timeline == [[1, 2, 3]]
    read(broker, 4)
    assert timeline.timeline == [[1, 2, 3], [4]]


@pytest.mark.parametrize(
    ("waiting", "answered", "passes"),
    [
        (1, 0, 1),  # a publish of this process waits for its reply: it resumes first
        (3, 3, 2),  # a batch's reply read with the echo: its callers resume in the next pass
        (5, 5, 2),  # callers that never resume (a busy loop) hold it two passes at most
    ],
)
async def test_publishers_waiting_here_are_answered_before_the_echo_is_handed_over(
    fed: tuple[RedisBroker, Timeline, bytes], waiting: int, answered: int, passes: int
) -> None:
    broker, timeline, _ = fed
    broker.waiting, broker.answered = waiting, answered
    read(broker, 1, 2)
    for _ in range(passes):
        assert timeline.timeline == []
        await _passes(1)
    assert timeline.timeline == [[1, 2]]


async def test_a_control_message_or_a_reconnect_comes_after_the_publications_read_before(
    fed: tuple[RedisBroker, Timeline, bytes],
) -> None:
    broker, timeline, name = fed
    broker.waiting = 1
    broker._on_message(name, _wire(1))
    broker._on_message(name, _wire(2))
    broker._on_message(broker.keys.control, b'{"op":"x"}')
    broker._on_message(name, _wire(3))
    broker._on_reconnected()
    broker._on_message(name, _wire(4))
    broker._deliver_read()
    await _passes(2)
    assert timeline.timeline == [[1, 2], ("control", b'{"op":"x"}'), [3], "reconnected", [4]]


async def test_a_closed_broker_drops_what_it_had_not_handed_over(
    fed: tuple[RedisBroker, Timeline, bytes],
) -> None:
    broker, timeline, _ = fed
    broker.waiting = 1
    read(broker, 1)
    broker._handler = None  # close() forgets the handler
    await _passes(2)
    assert timeline.timeline == []


# -- through Redis -------------------------------------------------------------------------


@pytest.fixture
async def redis_broker(
    redis_url: str, redis_prefix: str
) -> AsyncIterator[tuple[RedisBroker, Timeline]]:
    """A running Redis broker subscribed to :data:`CHANNEL`."""
    broker = RedisBroker(redis_url, prefix=redis_prefix)
    timeline = Timeline()
    await broker.start(timeline)
    await broker.subscribe(CHANNEL)
    yield broker, timeline
    await broker.close()


OPTIONS = NamespaceOptions(history_size=100)


async def test_many_publications_from_one_read_arrive_in_order_each_once(
    redis_broker: tuple[RedisBroker, Timeline],
) -> None:
    broker, timeline = redis_broker
    # One script call publishes all of them: Redis writes their messages together.
    await broker.publish_many(CHANNEL, [(b"%d" % i, None) for i in range(60)], OPTIONS)
    # and concurrent publishes, batched per loop pass, with their callers waiting here
    await asyncio.gather(*(broker.publish(CHANNEL, b"%d" % i, OPTIONS) for i in range(40)))
    await eventually(lambda: len(timeline.publications) == 100, what="100 publications")
    assert timeline.offsets(CHANNEL) == list(range(1, 101))
    assert [p.data for p in timeline.publications[:60]] == [b"%d" % i for i in range(60)]
    handed = [entry for entry in timeline.timeline if isinstance(entry, list)]
    assert len(handed) < 100, "publications read together are handed over together"


async def test_control_messages_keep_their_place_among_publications(
    redis_broker: tuple[RedisBroker, Timeline],
) -> None:
    broker, timeline = redis_broker
    await broker.publish_many(CHANNEL, [(b"1", None), (b"2", None)], OPTIONS)
    await broker.publish_control(b'{"op":"between"}')
    await broker.publish_many(CHANNEL, [(b"3", None), (b"4", None)], OPTIONS)
    await eventually(lambda: len(timeline.publications) == 4, what="4 publications")
    flat: list[Any] = []
    for entry in timeline.timeline:
        flat.extend(entry if isinstance(entry, list) else [entry])
    assert flat == [1, 2, ("control", b'{"op":"between"}'), 3, 4]


# -- the memory broker ---------------------------------------------------------------------


async def test_the_memory_broker_collects_the_publications_of_a_busy_pass() -> None:
    broker = MemoryBroker(collect_under_load=True)
    timeline = Timeline()
    await broker.start(timeline)
    await broker.subscribe(CHANNEL)
    options = NamespaceOptions(history_size=10)

    async def publish(n: int) -> None:
        await broker.publish(CHANNEL, b"%d" % n, options)

    await publish(1)
    assert timeline.timeline == [[1]]  # light load: delivered inside publish
    await publish(2)
    assert timeline.timeline == [[1], [2]]
    await _passes(1)  # that pass published two: the next one is collected
    for n in (3, 4, 5):
        await publish(n)
    assert timeline.timeline == [[1], [2]]
    await broker.publish_control(b'{"op":"x"}')  # after the publications made before it
    await publish(6)
    assert timeline.timeline == [[1], [2], [3, 4, 5], ("control", b'{"op":"x"}')]
    await _passes(1)  # handed over at the end of the pass
    assert timeline.timeline[-1] == [6]
    await publish(7)  # the pass before published several: still collected
    assert timeline.timeline[-1] == [6]
    await _passes(1)
    assert timeline.timeline[-1] == [7]
    await publish(8)  # a pass with one publication: back to light load
    assert timeline.timeline[-1] == [8]
    assert timeline.offsets(CHANNEL) == list(range(1, 9))
    await _passes(1)
    await publish(9)
    await broker.close()
    await _passes(2)
    assert timeline.offsets(CHANNEL) == list(range(1, 10))


async def test_the_memory_broker_drops_what_it_collected_when_closed() -> None:
    broker = MemoryBroker(collect_under_load=True)
    timeline = Timeline()
    await broker.start(timeline)
    await broker.subscribe(CHANNEL)
    options = NamespaceOptions()
    for n in range(3):
        await broker.publish(CHANNEL, b"%d" % n, options)
    await _passes(1)
    await broker.publish(CHANNEL, b"late", options)  # collected
    await broker.close()
    await _passes(2)
    assert timeline.offsets(CHANNEL) == [1, 2, 3]


async def test_the_default_memory_broker_always_delivers_inside_publish() -> None:
    broker = MemoryBroker()
    timeline = Timeline()
    await broker.start(timeline)
    await broker.subscribe(CHANNEL)
    for _ in range(3):
        for n in range(3):
            await broker.publish(CHANNEL, b"%d" % n, NamespaceOptions())
            assert timeline.timeline[-1] == [len(timeline.timeline)]
        await _passes(1)
    await broker.close()


# -- the hub -------------------------------------------------------------------------------


@dataclass(eq=False)
class Frames:
    """A subscriber keeping every delivery (each call one entry) and losses."""

    deliveries: list[bytes] = field(default_factory=list)
    lost_positions: list[StreamPosition] = field(default_factory=list)

    def deliver(self, frame: bytes) -> None:
        self.deliveries.append(frame)

    def lost(self, channel: str, position: StreamPosition) -> None:
        self.lost_positions.append(position)

    def offsets(self, channel: str | None = None) -> list[int]:
        found = []
        for delivery in self.deliveries:
            for line in delivery.splitlines():
                message = orjson.loads(line)
                if channel is None or message["channel"] == channel:
                    found.append(message["offset"])
        return found

    def channels(self) -> list[str]:
        return [
            orjson.loads(line)["channel"]
            for delivery in self.deliveries
            for line in delivery.splitlines()
        ]


class LineEncoder:
    """One JSON line per publication; ``fanout_many`` joins a run's lines into one delivery
    per subscriber and counts its calls."""

    def __init__(self, batching: bool = True) -> None:
        self.runs: list[int] = []
        if not batching:
            self.fanout_many = None

    def publication(self, pub: Publication) -> bytes:
        line = {"channel": pub.channel, "offset": pub.offset, "epoch": pub.epoch}
        return orjson.dumps(line) + b"\n"

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        raise AssertionError("no presence here")

    def fanout_many(self, subscribers: Collection[Any], frames: list[bytes]) -> None:
        self.runs.append(len(frames))
        joined = b"".join(frames)
        for sub in subscribers:
            sub.deliver(joined)


@pytest.fixture
async def memory_hub() -> AsyncIterator[tuple[Hub, LineEncoder]]:
    encoder = LineEncoder()
    hub = Hub(MemoryBroker(), default_namespaces(), encoder, release_delay=0.01)
    await hub.start()
    yield hub, encoder
    await hub.close()


def _pub(channel: str, offset: int, epoch: str) -> Publication:
    return Publication(channel, offset, epoch, b"{}", time.time())


async def test_each_channels_run_goes_out_in_one_pass_in_order_of_arrival(
    memory_hub: tuple[Hub, LineEncoder],
) -> None:
    hub, encoder = memory_hub
    both, only_a = Frames(), Frames()
    for channel in ("alerts:a", "alerts:b"):
        await hub.subscribe(both, channel)
    result = await hub.subscribe(only_a, "alerts:a")
    epoch_a = result.position.epoch
    epoch_b = (await hub.position("alerts:b")).epoch
    a = [_pub("alerts:a", n, epoch_a) for n in range(1, 6)]
    b = [_pub("alerts:b", n, epoch_b) for n in range(1, 3)]
    hub.on_publications([a[0], a[1], a[2], b[0], b[1], a[3], a[4]])
    # a1-a3 in one pass, b1-b2 in one, a4-a5 in one: the order of arrival is kept
    assert encoder.runs == [3, 2, 2]
    assert both.channels() == ["alerts:a"] * 3 + ["alerts:b"] * 2 + ["alerts:a"] * 2
    assert both.offsets("alerts:a") == [1, 2, 3, 4, 5]
    assert len(only_a.deliveries) == 2  # one per pass of its channel
    assert only_a.offsets() == [1, 2, 3, 4, 5]


async def _live(hub: Hub, channel: str) -> Frames:
    """A new subscriber of ``channel``, live."""
    sub = Frames()
    await hub.subscribe(sub, channel)
    return sub


async def test_duplicates_in_a_batch_are_dropped_and_a_hole_is_refilled_first(
    memory_hub: tuple[Hub, LineEncoder],
) -> None:
    hub, _ = memory_hub
    channel = CHANNEL
    sub = await _live(hub, channel)
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    broker._subscribed.discard(channel)  # the live feed misses these, history has them
    published = [await hub.publish(channel, n) for n in range(1, 8)]
    broker._subscribed.add(channel)
    epoch = published[0].epoch
    pubs = {p.offset: p for p in (await hub.history(channel)).publications}
    # 1, 2, a repeat of 2, then 5 (3 and 4 missing), 6, 7
    hub.on_publications([pubs[1], pubs[2], pubs[2], pubs[5], pubs[6], pubs[7]])
    await eventually(lambda: sub.offsets()[-1:] == [7], what="offset 7")
    assert sub.offsets() == [1, 2, 3, 4, 5, 6, 7]
    assert sub.lost_positions == []
    assert all(p.epoch == epoch for p in pubs.values())


async def test_an_encoder_without_fanout_many_gets_one_frame_per_publication() -> None:
    encoder = LineEncoder(batching=False)
    hub = Hub(MemoryBroker(), default_namespaces(), encoder)
    await hub.start()
    try:
        sub = Frames()
        result = await hub.subscribe(sub, "alerts:plain")
        epoch = result.position.epoch
        hub.on_publications([_pub("alerts:plain", n, epoch) for n in (1, 2, 3)])
        assert [len(d.splitlines()) for d in sub.deliveries] == [1, 1, 1]
        assert sub.offsets() == [1, 2, 3]
    finally:
        await hub.close()


async def test_a_subscriber_catching_up_gets_each_publication_of_a_batch_once(
    memory_hub: tuple[Hub, LineEncoder],
) -> None:
    hub, _ = memory_hub
    live = await _live(hub, CHANNEL)
    stream = hub._channels[CHANNEL]
    epoch = stream.epoch
    behind = Frames()
    # A subscriber whose cursor is at offset 2 while the stream is at 0 (as after a recovery
    # that read history ahead of the live feed): it goes live once the stream passes 2.
    stream.skip[behind] = (2, hub._encoder)
    hub.on_publications([_pub(CHANNEL, n, epoch) for n in (1, 2, 3, 4)])
    assert live.offsets() == [1, 2, 3, 4]
    assert behind.offsets() == [3, 4]
    assert not stream.skip
