"""One contract, every backend: the memory, the Redis and the Redis Cluster broker must behave
identically.

The hub relies on exactly these properties: offsets 1, 2, 3... in one stable epoch, history by
``since``/``limit``, trimming to ``history_size``, idempotent publishes, ordered delivery to the
handler, subscribe/unsubscribe, control messages reaching every node, and unique gap-free
offsets under concurrent publishers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.commands.core import AsyncScript

from pubsub.broker import Broker, BrokerError
from pubsub.memory import MemoryBroker
from pubsub.namespaces import NamespaceOptions
from pubsub.redis_broker import RedisBroker, ScriptedBroker
from pubsub.redis_cluster import RedisClusterBroker
from tests.pubsub.support import Recorder, eventually

OPTIONS = NamespaceOptions(history_size=100)
CHANNEL = "alerts:contract"


@pytest.fixture(params=["memory", "redis", "cluster"])
async def started(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, Recorder]]:
    """A running broker of each kind and the handler recording its callbacks."""
    broker: Broker
    if request.param == "memory":
        broker = MemoryBroker()
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
        broker = RedisBroker(url, prefix=request.getfixturevalue("redis_prefix"))
    else:
        url = request.getfixturevalue("cluster_url")
        broker = RedisClusterBroker(url, prefix=request.getfixturevalue("cluster_prefix"))
    recorder = Recorder()
    await broker.start(recorder)
    yield broker, recorder
    await broker.close()


async def publish_marker(broker: Broker, recorder: Recorder, channel: str) -> int:
    """Publish a marker and wait until it is delivered: everything published before it on
    ``channel`` has been delivered by then (per-channel order)."""
    result = await broker.publish(channel, b'"marker"', OPTIONS)
    await eventually(lambda: result.offset in recorder.offsets(channel), what="marker")
    return result.offset


async def test_offsets_count_from_one_in_a_stable_epoch(started: tuple[Broker, Recorder]) -> None:
    broker, _ = started
    start = await broker.position(CHANNEL, OPTIONS)
    assert start.offset == 0
    assert start.epoch
    results = [await broker.publish(CHANNEL, b"%d" % n, OPTIONS) for n in range(3)]
    assert [r.offset for r in results] == [1, 2, 3]
    assert {r.epoch for r in results} == {start.epoch}
    assert not any(r.duplicate for r in results)
    position = await broker.position(CHANNEL, OPTIONS)
    assert (position.offset, position.epoch) == (3, start.epoch)
    other = await broker.publish("alerts:other", b"1", OPTIONS)
    assert other.offset == 1, "offsets are per channel"


async def test_history_since_limit_and_newest(started: tuple[Broker, Recorder]) -> None:
    broker, _ = started
    for n in range(1, 6):
        await broker.publish(CHANNEL, b'{"n": %d}' % n, OPTIONS)

    everything = await broker.history(CHANNEL, OPTIONS)
    assert [p.offset for p in everything.publications] == [1, 2, 3, 4, 5]
    assert everything.publications[2].data == b'{"n": 3}'
    assert everything.publications[0].channel == CHANNEL
    assert {p.epoch for p in everything.publications} == {everything.position.epoch}
    assert everything.position.offset == 5

    async def offsets(since: int | None = None, limit: int | None = None) -> list[int]:
        result = await broker.history(CHANNEL, OPTIONS, since=since, limit=limit)
        assert result.position == everything.position
        return [p.offset for p in result.publications]

    assert await offsets(since=2) == [3, 4, 5]
    assert await offsets(since=2, limit=2) == [3, 4]
    assert await offsets(since=0, limit=1) == [1]
    assert await offsets(since=5) == []
    assert await offsets(since=9) == []
    assert await offsets(limit=2) == [4, 5], "without since, the newest N"
    assert await offsets(limit=0) == []
    assert await offsets(since=1, limit=0) == []


async def test_history_of_unknown_channel_is_empty_at_offset_zero(
    started: tuple[Broker, Recorder],
) -> None:
    broker, _ = started
    result = await broker.history("alerts:never", OPTIONS, since=0)
    assert result.publications == []
    assert result.position.offset == 0
    first = await broker.publish("alerts:never", b"1", OPTIONS)
    assert first.epoch == result.position.epoch, "the epoch a reader saw stays valid"


async def test_history_is_trimmed_to_history_size(started: tuple[Broker, Recorder]) -> None:
    broker, _ = started
    small = NamespaceOptions(history_size=3)
    for n in range(1, 8):
        await broker.publish(CHANNEL, b"%d" % n, small)
    result = await broker.history(CHANNEL, small, since=0)
    assert [p.offset for p in result.publications] == [5, 6, 7]
    assert [p.data for p in result.publications] == [b"5", b"6", b"7"]
    assert result.position.offset == 7

    none = NamespaceOptions(history_size=0)
    assert (await broker.publish("alerts:nohistory", b"1", none)).offset == 1
    assert (await broker.publish("alerts:nohistory", b"2", none)).offset == 2
    result = await broker.history("alerts:nohistory", none)
    assert result.publications == []
    assert result.position.offset == 2


async def test_idempotent_publish_is_published_once(started: tuple[Broker, Recorder]) -> None:
    broker, recorder = started
    await broker.subscribe(CHANNEL)
    first = await broker.publish(CHANNEL, b'"a"', OPTIONS, idempotency_key="order-1")
    again = await broker.publish(CHANNEL, b'"a"', OPTIONS, idempotency_key="order-1")
    assert not first.duplicate
    assert again.duplicate
    assert (again.offset, again.epoch) == (first.offset, first.epoch)
    other = await broker.publish(CHANNEL, b'"b"', OPTIONS, idempotency_key="order-2")
    assert other.offset == first.offset + 1
    elsewhere = await broker.publish("alerts:elsewhere", b'"a"', OPTIONS, idempotency_key="order-1")
    assert not elsewhere.duplicate, "idempotency keys are scoped to a channel"

    marker = await publish_marker(broker, recorder, CHANNEL)
    assert recorder.offsets(CHANNEL) == [1, 2, marker]
    history = await broker.history(CHANNEL, OPTIONS)
    assert [p.offset for p in history.publications] == [1, 2, marker]


async def test_idempotency_key_expires(started: tuple[Broker, Recorder]) -> None:
    broker, _ = started
    first = await broker.publish(CHANNEL, b"1", OPTIONS, idempotency_key="k", idempotency_ttl=1)
    await asyncio.sleep(1.1)
    later = await broker.publish(CHANNEL, b"1", OPTIONS, idempotency_key="k", idempotency_ttl=1)
    assert not later.duplicate
    assert later.offset == first.offset + 1


async def test_delivery_is_ordered_and_complete(started: tuple[Broker, Recorder]) -> None:
    broker, recorder = started
    await broker.subscribe(CHANNEL)
    sent = [await broker.publish(CHANNEL, b'{"n":%d}' % n, OPTIONS) for n in range(50)]
    await eventually(lambda: len(recorder.publications) == 50, what="50 publications")
    got = recorder.publications
    assert [p.offset for p in got] == [r.offset for r in sent] == list(range(1, 51))
    assert [p.data for p in got] == [b'{"n":%d}' % n for n in range(50)]
    assert {p.epoch for p in got} == {sent[0].epoch}
    assert all(p.channel == CHANNEL and p.time > 0 for p in got)


async def test_subscribe_and_unsubscribe(started: tuple[Broker, Recorder]) -> None:
    broker, recorder = started
    await broker.publish("alerts:a", b"before", OPTIONS)
    await broker.subscribe("alerts:a")
    await broker.subscribe("alerts:b")
    await broker.publish("alerts:a", b"1", OPTIONS)
    await broker.publish("alerts:unsubscribed", b"x", OPTIONS)
    await publish_marker(broker, recorder, "alerts:b")
    await eventually(lambda: recorder.offsets("alerts:a") == [2], what="alerts:a offset 2")

    await broker.unsubscribe("alerts:a")
    await broker.unsubscribe("alerts:a")  # harmless twice
    await broker.publish("alerts:a", b"2", OPTIONS)
    await publish_marker(broker, recorder, "alerts:b")
    assert recorder.offsets("alerts:a") == [2], "nothing after unsubscribe"
    assert recorder.offsets("alerts:unsubscribed") == []

    await broker.subscribe("alerts:a")
    await broker.publish("alerts:a", b"3", OPTIONS)
    await eventually(lambda: recorder.offsets("alerts:a") == [2, 4], what="resubscribed")


async def test_control_messages_reach_every_handler(started: tuple[Broker, Recorder]) -> None:
    broker, recorder = started
    await broker.publish_control(b'{"kick":"u1"}')
    await broker.publish_control(b'{"kick":"u2"}')
    await eventually(lambda: len(recorder.controls) == 2, what="control messages")
    assert recorder.controls == [b'{"kick":"u1"}', b'{"kick":"u2"}']


async def test_concurrent_publishers_get_unique_gap_free_offsets(
    started: tuple[Broker, Recorder],
) -> None:
    broker, recorder = started
    await broker.subscribe(CHANNEL)
    results = await asyncio.gather(
        *(broker.publish(CHANNEL, b"%d" % n, OPTIONS) for n in range(200))
    )
    assert sorted(r.offset for r in results) == list(range(1, 201))
    await eventually(lambda: len(recorder.publications) == 200, what="200 publications")
    assert recorder.offsets(CHANNEL) == list(range(1, 201)), "delivered in offset order"
    by_offset = {r.offset: n for n, r in enumerate(results)}
    assert all(p.data == b"%d" % by_offset[p.offset] for p in recorder.publications)


async def test_ping_and_close(started: tuple[Broker, Recorder]) -> None:
    broker, _ = started
    await broker.ping()
    await broker.close()
    await broker.close()  # idempotent
    with pytest.raises(BrokerError):
        await broker.publish(CHANNEL, b"1", OPTIONS)
    with pytest.raises(BrokerError):
        await broker.ping()


async def test_publish_many_publishes_in_order_as_one_by_one(
    started: tuple[Broker, Recorder],
) -> None:
    broker, recorder = started
    await broker.subscribe(CHANNEL)
    assert await broker.publish_many(CHANNEL, [], OPTIONS) == []
    sent = await broker.publish_many(CHANNEL, [(b'{"n":%d}' % n, None) for n in range(20)], OPTIONS)
    assert [r.offset for r in sent] == list(range(1, 21))
    assert not any(r.duplicate for r in sent)
    assert len({r.epoch for r in sent}) == 1
    after = await broker.publish(CHANNEL, b'"after"', OPTIONS)
    assert (after.offset, after.epoch) == (21, sent[0].epoch)
    await eventually(lambda: len(recorder.publications) == 21, what="21 publications")
    got = recorder.publications
    assert [p.offset for p in got] == list(range(1, 22))
    assert [p.data for p in got[:20]] == [b'{"n":%d}' % n for n in range(20)]
    history = await broker.history(CHANNEL, OPTIONS)
    assert [p.data for p in history.publications] == [p.data for p in got]


async def test_publish_many_honours_idempotency_keys(started: tuple[Broker, Recorder]) -> None:
    broker, recorder = started
    await broker.subscribe(CHANNEL)
    first = await broker.publish(CHANNEL, b'"a"', OPTIONS, idempotency_key="k-a")
    results = await broker.publish_many(
        CHANNEL,
        [(b'"a"', "k-a"), (b'"b"', "k-b"), (b'"x"', None), (b'"b"', "k-b"), (b'"c"', "k-c")],
        OPTIONS,
    )
    assert [(r.offset, r.duplicate) for r in results] == [
        (1, True),
        (2, False),
        (3, False),
        (2, True),
        (4, False),
    ]
    assert {r.epoch for r in results} == {first.epoch}
    again = await broker.publish_many(CHANNEL, [(b'"c"', "k-c"), (b'"d"', "k-d")], OPTIONS)
    assert [(r.offset, r.duplicate) for r in again] == [(4, True), (5, False)]
    marker = await publish_marker(broker, recorder, CHANNEL)
    assert recorder.offsets(CHANNEL) == [1, 2, 3, 4, 5, marker]
    history = await broker.history(CHANNEL, OPTIONS)
    data = [b'"a"', b'"b"', b'"x"', b'"c"', b'"d"', b'"marker"']
    assert [p.data for p in history.publications] == data


async def test_publish_many_trims_history_and_delivers_without_history(
    started: tuple[Broker, Recorder],
) -> None:
    broker, recorder = started
    small = NamespaceOptions(history_size=3)
    await broker.subscribe("alerts:small")
    await broker.publish_many("alerts:small", [(b"%d" % n, None) for n in range(10)], small)
    history = await broker.history("alerts:small", small)
    assert [p.offset for p in history.publications] == [8, 9, 10]
    none = NamespaceOptions(history_size=0)
    await broker.subscribe("alerts:nohistory")
    results = await broker.publish_many("alerts:nohistory", [(b"1", None), (b"2", None)], none)
    assert [r.offset for r in results] == [1, 2]
    await eventually(lambda: recorder.offsets("alerts:nohistory") == [1, 2], what="delivered")
    assert (await broker.history("alerts:nohistory", none)).publications == []


async def test_concurrent_publishes_keep_call_order_and_idempotency(
    started: tuple[Broker, Recorder],
) -> None:
    """Concurrent publishes to one channel (batched into shared script calls by the Redis
    brokers) each get their own result: offsets in call order, a repeated idempotency key
    (also inside one batch) answered with the first publication's offset."""
    broker, recorder = started
    await broker.subscribe(CHANNEL)
    calls = [(b'{"n":%d}' % n, f"k{n // 2}" if n % 3 == 0 else None) for n in range(60)]
    results = await asyncio.gather(
        *(broker.publish(CHANNEL, data, OPTIONS, idempotency_key=key) for data, key in calls)
    )
    first_of: dict[str, int] = {}
    expected: list[tuple[int, bool]] = []
    published: list[bytes] = []
    for data, key in calls:
        if key is not None and key in first_of:
            expected.append((first_of[key], True))
            continue
        published.append(data)
        expected.append((len(published), False))
        if key is not None:
            first_of[key] = len(published)
    assert [(r.offset, r.duplicate) for r in results] == expected
    assert len({r.epoch for r in results}) == 1
    marker = await publish_marker(broker, recorder, CHANNEL)
    assert recorder.offsets(CHANNEL) == [*range(1, len(published) + 1), marker]
    history = await broker.history(CHANNEL, OPTIONS)
    assert [p.data for p in history.publications] == [*published, b'"marker"']


@pytest.fixture(params=["redis", "cluster"])
async def scripted(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ScriptedBroker, list[int], asyncio.Event]]:
    """A Redis or Redis Cluster broker whose publish script calls are counted (the number of
    publications each carried) and whose script calls are held until the event is set."""
    broker: ScriptedBroker
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        broker = RedisBroker(url, prefix=request.getfixturevalue("redis_prefix"))
    else:
        url = request.getfixturevalue("cluster_url")
        broker = RedisClusterBroker(url, prefix=request.getfixturevalue("cluster_prefix"))
    calls: list[int] = []
    gate = asyncio.Event()
    run = broker._run

    async def counted(script: AsyncScript, keys: list[str], args: tuple[Any, ...]) -> Any:
        if script is not broker._read:
            calls.append(1 if script is broker._publish else (len(args) - 7) // 2)
        await gate.wait()
        return await run(script, keys, args)

    monkeypatch.setattr(broker, "_run", counted)
    await broker.start(Recorder())
    yield broker, calls, gate
    await broker.close()


async def test_redis_publishes_of_one_loop_iteration_share_one_script_call(
    scripted: tuple[ScriptedBroker, list[int], asyncio.Event],
) -> None:
    broker, calls, gate = scripted
    gate.set()
    # made in one iteration: 30 of one channel, one of another
    tasks = [asyncio.create_task(broker.publish(CHANNEL, b"%d" % n, OPTIONS)) for n in range(30)]
    other = asyncio.create_task(broker.publish("alerts:other", b"x", OPTIONS))
    results = await asyncio.gather(*tasks)
    assert [r.offset for r in results] == list(range(1, 31)), "offsets in call order"
    assert (await other).offset == 1
    assert sorted(calls) == [1, 30], "one script call per channel"
    # alone in its iteration: a single publish
    assert (await broker.publish(CHANNEL, b"30", OPTIONS)).offset == 31
    assert sorted(calls) == [1, 1, 30]
    history = await broker.history(CHANNEL, OPTIONS)
    assert [p.data for p in history.publications] == [b"%d" % n for n in range(31)]


async def test_redis_publish_cancelled_while_queued_is_not_published(
    scripted: tuple[ScriptedBroker, list[int], asyncio.Event],
) -> None:
    broker, calls, gate = scripted
    first = asyncio.create_task(broker.publish(CHANNEL, b'"1"', OPTIONS))
    second = asyncio.create_task(broker.publish(CHANNEL, b'"2"', OPTIONS))
    third = asyncio.create_task(broker.publish(CHANNEL, b'"3"', OPTIONS))
    await asyncio.sleep(0)  # the three joined one batch, not sent yet
    assert calls == []
    second.cancel()
    gate.set()
    assert (await first).offset == 1
    assert (await third).offset == 2
    assert second.cancelled()
    assert calls == [2], "one script call, without the cancelled publish"
    history = await broker.history(CHANNEL, OPTIONS)
    assert [p.data for p in history.publications] == [b'"1"', b'"3"']
    # nothing left queued: the next publish goes out on its own
    assert (await broker.publish(CHANNEL, b'"4"', OPTIONS)).offset == 3
    assert calls == [2, 1]
