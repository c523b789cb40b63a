"""A burst of subscribes to one channel shares its position reads, and no subscriber gets a
position read before it asked (so none misses a publication made in between)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pubsub.broker import StreamPosition
from pubsub.coalesce import Coalescer
from pubsub.hub import Hub
from pubsub.memory import MemoryBroker
from pubsub.namespaces import default_namespaces
from tests.pubsub.test_hub_single_flight import JsonEncoder, Recorder


class SlowPositionBroker(MemoryBroker):
    """The memory broker counting position reads; each read is answered only when the test
    releases it, as a network read answers later."""

    instant_reads = False

    def __init__(self) -> None:
        super().__init__()
        self.position_calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def position(self, *args: Any, **kwargs: Any) -> StreamPosition:
        self.position_calls += 1
        position = await super().position(*args, **kwargs)  # read when sent ...
        await self.gate.wait()  # ... answered later
        return position


async def test_a_burst_of_subscribes_reads_the_position_about_once() -> None:
    broker = SlowPositionBroker()
    hub = Hub(broker, default_namespaces(), JsonEncoder())
    await hub.start()
    try:
        await hub.publish("alerts:a", {"i": 0})
        broker.position_calls = 0
        subs = [Recorder() for _ in range(200)]
        results = await asyncio.gather(*(hub.subscribe(sub, "alerts:a") for sub in subs))
        assert broker.position_calls <= 2
        assert {r.position.offset for r in results} == {1}
        await hub.publish("alerts:a", {"i": 1})
        assert all(sub.offsets == [2] for sub in subs)
    finally:
        await hub.close()


async def test_a_subscriber_arriving_after_a_read_was_sent_does_not_share_it() -> None:
    """The first read is sent, then a publication, then a second subscriber: the second must
    not share the first read (it would start before offset 2 and never get it). Publication 2
    reached the channel's live stream, so the second starts there without a read of its own
    (``Coalescer`` itself sends a new read for a caller arriving after one was sent: the
    cancellation test below)."""
    broker = SlowPositionBroker()
    hub = Hub(broker, default_namespaces(), JsonEncoder())
    await hub.start()
    try:
        await hub.publish("alerts:a", {"i": 0})
        first_sub, second_sub = Recorder(), Recorder()
        broker.gate.clear()
        first = asyncio.create_task(hub.subscribe(first_sub, "alerts:a"))
        while broker.position_calls < 1:
            await asyncio.sleep(0)
        await hub.publish("alerts:a", {"i": 1})  # offset 2, after the first read was made
        second = asyncio.create_task(hub.subscribe(second_sub, "alerts:a"))
        await asyncio.sleep(0)
        broker.gate.set()
        first_result, second_result = await asyncio.gather(first, second)
        first_sub.take(first_result)
        second_sub.take(second_result)
        assert broker.position_calls == 1
        # Both end up with offset 2 exactly once: the first from its buffered tail, the
        # second from the live stream's position, after offset 2.
        assert first_sub.offsets == [2]
        assert second_result.position.offset == 2
        assert second_sub.offsets == []
        await hub.publish("alerts:a", {"i": 2})
        assert first_sub.offsets == [2, 3]
        assert second_sub.offsets == [3]
    finally:
        await hub.close()


async def test_subscribes_racing_publications_see_every_offset_once() -> None:
    broker = MemoryBroker()
    hub = Hub(broker, default_namespaces(), JsonEncoder())
    await hub.start()
    try:
        subs = [Recorder() for _ in range(100)]

        async def publisher() -> None:
            for i in range(50):
                await hub.publish("alerts:race", {"i": i})
                await asyncio.sleep(0)

        async def subscriber(sub: Recorder) -> int:
            await asyncio.sleep(0)
            result = await hub.subscribe(sub, "alerts:race")
            sub.take(result)
            return result.position.offset  # the tail follows it

        publishing = asyncio.create_task(publisher())
        starts = await asyncio.gather(*(subscriber(sub) for sub in subs))
        await publishing
        for sub, start in zip(subs, starts, strict=True):
            assert sub.offsets == list(range(start + 1, 51))
    finally:
        await hub.close()


async def test_a_cancelled_caller_does_not_cancel_the_shared_read_and_errors_reach_all() -> None:
    coalescer: Coalescer[str, int] = Coalescer()
    gate = asyncio.Event()
    calls = 0

    async def read() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise RuntimeError("broker down")

    first = asyncio.create_task(coalescer("k", read))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the read is on its way
    second = asyncio.create_task(coalescer("k", read))
    third = asyncio.create_task(coalescer("k", read))
    await asyncio.sleep(0)
    third.cancel()
    gate.set()
    for task in (first, second):
        with pytest.raises(RuntimeError, match="broker down"):
            await task
    with pytest.raises(asyncio.CancelledError):
        await third
    assert calls == 2  # the first read, then one shared by the second and third callers
    assert len(coalescer) == 0


async def test_an_in_process_broker_is_read_directly_without_a_task_per_subscribe() -> None:
    """The memory broker answers a position read when it is called: nothing to share, so a
    subscribe reads it directly (a coalesced read would cost a task per subscribe)."""
    broker = MemoryBroker()
    assert broker.instant_reads
    hub = Hub(broker, default_namespaces(), JsonEncoder())
    await hub.start()
    loop = asyncio.get_running_loop()
    default_factory = loop.get_task_factory()
    created = 0

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        first = Recorder()
        first.take(await hub.subscribe(first, "alerts:a"))  # the channel's stream exists
        await hub.publish("alerts:a", {"i": 0})
        loop.set_task_factory(counting_factory)
        try:
            subs = [Recorder() for _ in range(50)]
            for sub in subs:
                sub.take(await hub.subscribe(sub, "alerts:a"))
        finally:
            loop.set_task_factory(default_factory)
        assert created == 0
        await hub.publish("alerts:a", {"i": 1})
        assert first.offsets == [1, 2]
        assert all(sub.offsets == [2] for sub in subs)
    finally:
        await hub.close()


async def test_a_burst_over_a_network_broker_costs_a_task_per_read_not_per_subscriber() -> None:
    broker = SlowPositionBroker()
    hub = Hub(broker, default_namespaces(), JsonEncoder())
    await hub.start()
    loop = asyncio.get_running_loop()
    default_factory = loop.get_task_factory()
    reads = 0

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        nonlocal reads
        if getattr(coro, "__qualname__", "") == "Coalescer._send":
            reads += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        await hub.publish("alerts:a", {"i": 0})
        # No subscriber yet: the burst creates the channel's stream and reads where it starts
        # (once live, later subscribes read nothing: test_subscribes_to_a_live_channel_...)
        broker.position_calls = 0
        broker.gate.clear()  # reads are answered only when the test says so
        loop.set_task_factory(counting_factory)
        try:
            subs = [Recorder() for _ in range(200)]
            burst = [asyncio.ensure_future(hub.subscribe(sub, "alerts:a")) for sub in subs]
            while broker.position_calls < 1:
                await asyncio.sleep(0)
            broker.gate.set()
            results = await asyncio.gather(*burst)
        finally:
            loop.set_task_factory(default_factory)
        assert reads == broker.position_calls <= 2
        for sub, result in zip(subs, results, strict=True):
            sub.take(result)
        await hub.publish("alerts:a", {"i": 1})
        assert all(sub.offsets == [2] for sub in subs)
    finally:
        await hub.close()


async def test_subscribes_to_a_live_channel_read_nothing() -> None:
    """The channel's stream is live on this node: a subscriber starts at its offset (as if it
    had been live all along) without a broker read, and gets every later publication once."""
    broker = SlowPositionBroker()
    hub = Hub(broker, default_namespaces(), JsonEncoder())
    await hub.start()
    try:
        await hub.publish("alerts:a", {"i": 0})
        first = Recorder()
        first.take(await hub.subscribe(first, "alerts:a"))
        assert broker.position_calls == 1
        await hub.publish("alerts:a", {"i": 1})
        subs = [Recorder() for _ in range(100)]
        results = await asyncio.gather(*(hub.subscribe(sub, "alerts:a") for sub in subs))
        assert broker.position_calls == 1
        assert {(r.position.offset, r.position.epoch) for r in results} == {
            (2, results[0].position.epoch)
        }
        for sub, result in zip(subs, results, strict=True):
            sub.take(result)
        await hub.publish("alerts:a", {"i": 2})
        assert first.offsets == [2, 3]
        assert all(sub.offsets == [3] for sub in subs)
    finally:
        await hub.close()


async def test_a_subscriber_joining_a_live_channel_gets_the_publication_in_flight() -> None:
    """A publication is in the broker's stream but not yet delivered here (pub/sub lags): a
    subscriber starting at the live stream's offset gets it when it arrives, exactly once."""
    from tests.pubsub.test_hub import Frames, HoldingBroker

    broker = HoldingBroker()
    hub = Hub(broker, default_namespaces(), JsonEncoder())
    await hub.start()
    try:
        live = Frames()
        await hub.subscribe(live, "alerts:f")
        await hub.publish("alerts:f", 1)
        broker.holding = True
        await hub.publish("alerts:f", 2)  # in the stream, not delivered yet
        joining = Frames()
        started = await hub.subscribe(joining, "alerts:f")
        assert started.position.offset == 1
        assert started.tail == []
        broker.release()
        await hub.publish("alerts:f", 3)
        assert [f["offset"] for f in live.frames] == [1, 2, 3]
        assert [f["offset"] for f in joining.frames] == [2, 3]
    finally:
        await hub.close()
