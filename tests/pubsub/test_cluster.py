"""The service on a real Redis Cluster (3 masters, 3 replicas; ``redis_cluster`` fixture).

Two app instances on one cluster behave as one service (fan-out, recovery, presence, rate
limits); every key of a channel shares its shard channel's slot; and when a master is killed
or a busy partition's slot is moved while publishers keep publishing, every acknowledged
publication reaches the subscribers or they are told it was lost: zero silent holes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.crc import key_slot

from handlers import keys
from pubsub.broker import BrokerError, Publication, PublishResult, StreamPosition
from pubsub.hub import Hub
from pubsub.namespaces import NamespaceOptions
from pubsub.presence import PresenceEntry
from pubsub.redis_cluster import RedisClusterBroker
from server.app import create_app
from server.settings import Settings
from services.auth.ratelimit import RedisRateLimiter, SyncedRateLimiter
from services.auth.service_signature import RedisReplayCache
from tests.helpers import connect, make_user, request, service_token
from tests.presence.test_presence import _next_of, _request_id
from tests.pubsub.support import Recorder, eventually
from tests.pubsub.test_multinode import collect_until, next_push
from tests.redis_cluster import LocalCluster

NAMESPACES = {"alerts": NamespaceOptions()}
ALERTS = NAMESPACES["alerts"]

Nodes = tuple[TestClient, TestClient]


# -- two app instances ---------------------------------------------------------------------


@pytest.fixture
def cluster_settings(
    make_settings: Callable[..., Settings], cluster_url: str, cluster_prefix: str
) -> Settings:
    return make_settings(REDIS_URL=cluster_url, REDIS_PREFIX=cluster_prefix)


@pytest.fixture
async def nodes(aiohttp_client: Any, cluster_settings: Settings) -> Nodes:
    """Node A and node B: same database, same cluster and prefix."""
    node_a = await aiohttp_client(create_app(cluster_settings))
    node_b = await aiohttp_client(create_app(cluster_settings))
    return node_a, node_b


async def test_app_nodes_fan_out_to_each_other_through_the_cluster(nodes: Nodes) -> None:
    node_a, node_b = nodes
    assert isinstance(node_a.server.app[keys.hub].broker, RedisClusterBroker)
    ready = await node_a.get("/ready")
    assert ready.status == 200, await ready.text()
    assert (await ready.json())["broker"]["backend"] == "redis-cluster"
    _, token = await make_user(node_a, "admin")
    ws_a = await connect(node_a, token)
    ws_b = await connect(node_b, token)
    channels = [f"alerts:fan{n}" for n in range(6)]  # several partitions, several masters
    for channel in channels:
        assert "result" in await request(ws_a, "subscribe", channel=channel)
        assert "result" in await request(ws_b, "subscribe", channel=channel)

    for source, headers in (
        (node_b, {"Authorization": f"Bearer {service_token(node_b)}"}),
        (node_a, {"Authorization": f"Bearer {service_token(node_a)}"}),
    ):
        for channel in channels:
            response = await source.post(
                f"/api/v1/channels/{channel}/publish", json={"data": {"from": "x"}}, headers=headers
            )
            assert response.status == 200, await response.text()
    for ws in (ws_a, ws_b):
        got: dict[str, list[int]] = {channel: [] for channel in channels}
        while any(len(offsets) < 2 for offsets in got.values()):
            push = await next_push(ws)
            assert push is not None
            assert push["type"] == "pub", push
            got[push["channel"]].append(push["offset"])
        assert got == {channel: [1, 2] for channel in channels}, "in order, once, on both nodes"

    body = {"data": {"order": 1}, "idempotency_key": "order-1"}
    first = await node_a.post(
        "/api/v1/channels/alerts:fan0/publish",
        json=body,
        headers={"Authorization": f"Bearer {service_token(node_a)}"},
    )
    again = await node_b.post(
        "/api/v1/channels/alerts:fan0/publish",
        json=body,
        headers={"Authorization": f"Bearer {service_token(node_b)}"},
    )
    first_body, again_body = await first.json(), await again.json()
    assert (first_body["duplicate"], again_body["duplicate"]) == (False, True)
    assert again_body["offset"] == first_body["offset"] == 3, "idempotency spans nodes"
    await ws_a.close()
    await ws_b.close()


async def test_client_recovers_on_another_node(nodes: Nodes) -> None:
    node_a, node_b = nodes
    _, token = await make_user(node_a, "admin")
    ws_a = await connect(node_a, token)
    reply = await request(ws_a, "subscribe", channel="alerts:resume")
    epoch = reply["result"]["epoch"]
    hub_a = node_a.server.app[keys.hub]
    for n in range(5):
        await hub_a.publish("alerts:resume", {"n": n})
    assert await collect_until(ws_a, "alerts:resume", 5) == [1, 2, 3, 4, 5]
    await ws_a.close()
    for n in range(5, 12):  # published through node A while the client is away
        await hub_a.publish("alerts:resume", {"n": n})

    ws_b = await connect(node_b, token)
    since = {"offset": 5, "epoch": epoch}
    reply = await request(ws_b, "subscribe", channel="alerts:resume", since=since)
    assert reply["result"]["recovered"] is True
    recovered = reply["result"]["publications"]
    assert [p["offset"] for p in recovered] == list(range(6, 13))
    assert [p["data"] for p in recovered] == [{"n": n} for n in range(5, 12)]
    await node_a.server.app[keys.hub].publish("alerts:resume", {"n": 12})
    assert await collect_until(ws_b, "alerts:resume", 13) == [13]
    await ws_b.close()


async def test_presence_and_join_leave_cross_nodes(nodes: Nodes) -> None:
    node_a, node_b = nodes
    owner_id, owner = await make_user(node_a, "buyer")
    _, admin = await make_user(node_a, "admin")
    channel = f"proposals:{await _request_id(node_a, owner_id)}"
    watcher = await connect(node_a, admin)
    await request(watcher, "subscribe", channel=channel)
    await _next_of(watcher, {"join"})  # its own
    remote = await connect(node_b, owner)
    await request(remote, "subscribe", channel=channel)
    joined = await _next_of(watcher, {"join", "leave"})  # a control message, node B -> A
    assert (joined["type"], joined["user"]) == ("join", owner_id)
    stats = await request(watcher, "presence_stats", channel=channel)
    assert stats["result"] == {"channel": channel, "num_clients": 2, "num_users": 2}
    await remote.close()
    left = await _next_of(watcher, {"join", "leave"})
    assert (left["type"], left["user"]) == ("leave", owner_id)


async def test_rate_limits_and_replay_cache_are_shared_through_the_cluster(
    nodes: Nodes, cluster_prefix: str
) -> None:
    node_a, node_b = nodes
    limiter_a = RedisRateLimiter(node_a.server.app[keys.redis], cluster_prefix)
    limiter_b = RedisRateLimiter(node_b.server.app[keys.redis], cluster_prefix)
    assert (await limiter_a.hit("login:x", 2, 60)).allowed
    assert (await limiter_b.hit("login:x", 2, 60)).allowed
    refused = await limiter_a.hit("login:x", 2, 60)
    assert not refused.allowed, "the third within the window, counted across both nodes"
    assert refused.retry_after > 0
    replay_a = RedisReplayCache(node_a.server.app[keys.redis], cluster_prefix)
    replay_b = RedisReplayCache(node_b.server.app[keys.redis], cluster_prefix)
    assert await replay_a.claim("sig-1", 60)
    assert not await replay_b.claim("sig-1", 60), "a signature used on node A is spent on B"


async def test_the_per_user_command_limit_syncs_through_the_cluster(
    nodes: Nodes, cluster_prefix: str
) -> None:
    """Each node's per-user command limiter is the local-first one; on a cluster its script
    runs too, and what one node allowed is counted for the other."""
    node_a, node_b = nodes
    limiter_a = node_a.server.app[keys.local_first_limiter]
    limiter_b = node_b.server.app[keys.local_first_limiter]
    assert isinstance(limiter_a, SyncedRateLimiter)
    assert isinstance(limiter_b, SyncedRateLimiter)
    # 1/s, burst 10; share ceil(1 x 0.1) = 1: the second hit on a node asks Redis
    start = time.monotonic()
    allowed = [(await limiter_a.hit("ws:user:c", 10, 10.0)).allowed for _ in range(6)]
    allowed += [(await limiter_b.hit("ws:user:c", 10, 10.0)).allowed for _ in range(6)]
    refill = int(time.monotonic() - start) + 1
    # at most the burst, the refill meanwhile, and 2 x share per node (docs/security.md)
    assert 10 <= sum(allowed) <= 10 + refill + 2 * 2


# -- brokers and hubs ----------------------------------------------------------------------


def encode(pub: Publication) -> bytes:
    """How these tests encode a publication: ``<offset> <epoch> <data>``."""
    return b"%d %s %s" % (pub.offset, pub.epoch.encode(), pub.data)


class DataEncoder:
    """The hub :class:`~pubsub.hub.Encoder` of these tests: publications, as :func:`encode`."""

    def publication(self, pub: Publication) -> bytes:
        return encode(pub)

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        raise AssertionError("no presence in these tests")


@dataclass(eq=False)
class Sink:
    """A hub subscriber recording publications (with their data) and losses in one timeline."""

    events: list[tuple[str, int, str, bytes]] = field(default_factory=list)

    def deliver(self, frame: bytes) -> None:
        offset, epoch, data = frame.split(b" ", 2)
        self.events.append(("pub", int(offset), epoch.decode(), data))

    def lost(self, channel: str, position: StreamPosition) -> None:
        self.events.append(("lost", position.offset, position.epoch, b""))

    def delivered(self) -> list[tuple[int, str, bytes]]:
        return [(offset, epoch, data) for kind, offset, epoch, data in self.events if kind == "pub"]

    def losses(self) -> list[tuple[int, str]]:
        return [(offset, epoch) for kind, offset, epoch, _ in self.events if kind == "lost"]


MakeHub = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def make_hub(cluster_url: str, cluster_prefix: str) -> AsyncIterator[MakeHub]:
    """Hubs over cluster brokers sharing this test's prefix (like app nodes)."""
    hubs: list[Hub] = []

    async def make(**broker_options: Any) -> Hub:
        broker = RedisClusterBroker(cluster_url, prefix=cluster_prefix, **broker_options)
        hub = Hub(broker, NAMESPACES, DataEncoder(), release_delay=0.05)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.close()


@pytest.fixture
async def publisher(cluster_url: str, cluster_prefix: str) -> AsyncIterator[RedisClusterBroker]:
    """Another node's broker, used only to publish."""
    broker = RedisClusterBroker(cluster_url, prefix=cluster_prefix)
    await broker.start(Recorder())
    yield broker
    await broker.close()


def cluster_broker(hub: Hub) -> RedisClusterBroker:
    assert isinstance(hub.broker, RedisClusterBroker)
    return hub.broker


async def subscribe(hub: Hub, channel: str, since: StreamPosition | None = None) -> Sink:
    """Subscribe a new sink the way the WebSocket handler does (reply, then the tail)."""
    sink = Sink()
    result = await hub.subscribe(sink, channel, since)
    for pub in [*result.publications, *result.tail]:
        sink.deliver(encode(pub))
    return sink


async def test_a_channels_keys_share_its_shard_channels_slot_and_partitions_spread(
    make_hub: MakeHub, publisher: RedisClusterBroker, redis_cluster: LocalCluster
) -> None:
    keyspace = publisher.keys
    channel = "alerts:slot"
    names = [
        keyspace.meta(channel).encode(),
        keyspace.stream(channel).encode(),
        keyspace.idempotency(channel, "k").encode(),
        keyspace.presence(channel).encode(),
        keyspace.live(channel),
    ]
    assert len({key_slot(name) for name in names}) == 1
    await publisher.publish(channel, b"1", ALERTS, idempotency_key="k")
    owner = redis_cluster.owner(key_slot(names[0]))
    with redis_cluster.client(owner) as node:
        assert node.exists(*names[:3]) == 3, "the keys live on the master of that one slot"

    per_master = Counter(redis_cluster.owner(slot) for slot in keyspace.partitions.slots)
    assert len(per_master) == 3
    assert max(per_master.values()) - min(per_master.values()) <= 1, per_master

    hub = await make_hub()
    for n in range(60):
        await hub.subscribe(Sink(), f"alerts:spread{n}")
    subscriber = cluster_broker(hub).subscriber
    assert sorted(subscriber.nodes) == sorted(f"127.0.0.1:{p}" for p in redis_cluster.masters())
    assert subscriber.settled, "one sharded pub/sub connection per master carries all 60"


async def test_a_dropped_shard_connection_comes_back_and_refills_the_gap(
    make_hub: MakeHub, publisher: RedisClusterBroker, redis_cluster: LocalCluster
) -> None:
    hub = await make_hub()
    broker = cluster_broker(hub)
    sink = await subscribe(hub, "alerts:drop")
    owner = redis_cluster.owner(key_slot(broker.keys.live("alerts:drop")))
    total = 300

    async def publish_continuously() -> None:
        for n in range(total):
            await publisher.publish("alerts:drop", b"%d" % n, ALERTS)
            await asyncio.sleep(0.001)

    task = asyncio.create_task(publish_continuously())
    await eventually(lambda: len(sink.delivered()) >= 50, what="50 publications")
    with redis_cluster.client(owner) as node:
        killed = node.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 1
    await task
    await eventually(lambda: len(sink.delivered()) >= total, what="every publication")
    assert [offset for offset, _, _ in sink.delivered()] == list(range(1, total + 1))
    assert sink.losses() == []
    assert broker.subscriber.moves == 0, "same node: reconnected, not moved"


@dataclass
class Ledger:
    """What publishers got acknowledged, per channel: (offset, epoch) -> data."""

    acked: dict[str, dict[tuple[int, str], bytes]] = field(default_factory=dict)
    failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)


async def publish_until_acknowledged(
    broker: RedisClusterBroker, channel: str, data: bytes, key: str, ledger: Ledger
) -> PublishResult:
    """Publish like the outbox relay does: retry with the same idempotency key until a node
    acknowledges (the cluster is failing over or moving a slot meanwhile)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await broker.publish(channel, data, ALERTS, idempotency_key=key)
        except BrokerError as exc:
            ledger.failures += 1
            ledger.errors[str(exc)[:80]] += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def keep_publishing(
    broker: RedisClusterBroker,
    channels: list[str],
    ledger: Ledger,
    stop: asyncio.Event,
    name: str = "m",
) -> None:
    n = 0
    while not stop.is_set():
        for channel in channels:
            data = b"%s%d" % (name.encode(), n)
            key = f"{name}{n}"
            result = await publish_until_acknowledged(broker, channel, data, key, ledger)
            # a duplicate: an earlier attempt went through but its reply was lost
            ledger.acked.setdefault(channel, {})[(result.offset, result.epoch)] = data
        n += 1
        await asyncio.sleep(0.002)


def unexplained(sink: Sink, acked: dict[tuple[int, str], bytes]) -> list[tuple[int, str]]:
    """Acknowledged publications the sink neither received nor was told it lost."""
    got = {(offset, epoch) for offset, epoch, _ in sink.delivered()}
    losses = sink.losses()
    missing = []
    for offset, epoch in acked:
        if (offset, epoch) in got:
            continue
        told = any(e != epoch or o >= offset for o, e in losses)
        if not told:
            missing.append((offset, epoch))
    return sorted(missing)


def assert_no_silent_hole(sink: Sink, acked: dict[tuple[int, str], bytes]) -> None:
    """Delivered offsets go up by one within an epoch unless a ``lost`` came between, and a
    delivered publication carries the data that was acknowledged for its offset."""
    cursor: tuple[int, str] | None = None
    for kind, offset, epoch, data in sink.events:
        if kind == "lost":
            cursor = (offset, epoch)
            continue
        if cursor is not None:
            assert (offset, epoch) == (cursor[0] + 1, cursor[1]), (
                f"{(offset, epoch)} after {cursor}"
            )
        cursor = (offset, epoch)
        if (offset, epoch) in acked:
            assert acked[(offset, epoch)] == data, f"other data at {(offset, epoch)}"


async def wait_all_accounted(sinks: dict[str, Sink], ledger: Ledger) -> None:
    await eventually(
        lambda: all(not unexplained(sinks[c], ledger.acked.get(c, {})) for c in sinks),
        timeout=60,
        what="every acknowledged publication delivered or reported lost",
    )


@pytest.mark.slow
async def test_killed_master_fails_over_without_silent_holes(
    make_hub: MakeHub, publisher: RedisClusterBroker, redis_cluster: LocalCluster
) -> None:
    hub = await make_hub()
    broker = cluster_broker(hub)
    channels = [f"alerts:fo{n}" for n in range(12)]
    sinks = {channel: await subscribe(hub, channel) for channel in channels}
    victim_slot = key_slot(broker.keys.live(channels[0]))
    victim = redis_cluster.owner(victim_slot)
    replica = redis_cluster.replica_of(victim)
    on_victim = [
        c for c in channels if redis_cluster.owner(key_slot(broker.keys.live(c))) == victim
    ]
    ledger, stop = Ledger(), asyncio.Event()
    task = asyncio.create_task(keep_publishing(publisher, channels, ledger, stop))
    try:
        await eventually(
            lambda: all(len(sinks[c].delivered()) >= 5 for c in channels), 30, "warm-up"
        )
        before = {c: len(ledger.acked.get(c, {})) for c in on_victim}
        redis_cluster.kill(victim)  # SIGKILL mid-stream
        await eventually(
            lambda: redis_cluster.owner(victim_slot) == replica, 60, "replica promoted"
        )
        # publishing goes on on the new master, and is delivered there
        await eventually(
            lambda: all(len(ledger.acked.get(c, {})) >= before[c] + 20 for c in on_victim),
            60,
            "publications acknowledged by the promoted replica",
        )
        await eventually(lambda: broker.subscriber.settled, 60, "subscriptions moved")
    finally:
        stop.set()
        with contextlib.suppress(BrokerError):
            await task
    await wait_all_accounted(sinks, ledger)
    for channel in channels:
        assert_no_silent_hole(sinks[channel], ledger.acked.get(channel, {}))
    acked = sum(len(v) for v in ledger.acked.values())
    delivered = sum(len(s.delivered()) for s in sinks.values())
    told = sum(len(s.losses()) for s in sinks.values())
    print(
        f"failover: acknowledged {acked}, delivered {delivered}, loss notices {told}, "
        f"publishes refused during the failover {ledger.failures}"
    )
    assert broker.subscriber.moves >= 1
    assert f"127.0.0.1:{victim}" not in broker.subscriber.nodes
    # the promoted replica started a new epoch: subscribers of its channels were told
    assert all(sinks[c].losses() for c in on_victim)
    # channels on the other masters were not disturbed
    for channel in set(channels) - set(on_victim):
        assert sinks[channel].losses() == []
        assert len(sinks[channel].delivered()) == len(ledger.acked[channel])

    redis_cluster.restart(victim)  # rejoins as a replica, for the tests that follow
    redis_cluster.wait_healthy()


@pytest.mark.slow
async def test_resharding_a_busy_partition_loses_nothing(
    make_hub: MakeHub, publisher: RedisClusterBroker, redis_cluster: LocalCluster
) -> None:
    hub = await make_hub()
    broker = cluster_broker(hub)
    partitions = broker.keys.partitions
    candidates = [f"alerts:rs{n}" for n in range(3000)]
    partition = partitions.index(candidates[0])
    busy = [c for c in candidates if partitions.index(c) == partition][:10]
    quiet = [c for c in candidates if partitions.index(c) != partition][:4]
    watched = busy + quiet
    sinks = {channel: await subscribe(hub, channel) for channel in watched}
    slot = partitions.slots[partition]
    source = redis_cluster.owner(slot)
    target = next(port for port in redis_cluster.masters() if port != source)
    ledger, stop = Ledger(), asyncio.Event()
    tasks = [
        asyncio.create_task(keep_publishing(publisher, watched, ledger, stop, name))
        for name in ("a", "b", "c")  # three publishers at once
    ]
    try:
        await eventually(lambda: all(len(sinks[c].delivered()) >= 5 for c in watched), 30, "warm")
        # 3 keys per MIGRATE, 20 ms apart: publishers run into a slot whose keys are split
        # between the two masters (ASK and TRYAGAIN redirections)
        await asyncio.to_thread(redis_cluster.move_slot, slot, target, 3, 0.02)
        assert redis_cluster.owner(slot) == target
        moved_at = {c: len(ledger.acked.get(c, {})) for c in busy}
        await eventually(
            lambda: all(len(ledger.acked.get(c, {})) >= moved_at[c] + 20 for c in busy),
            60,
            "publications acknowledged by the new owner",
        )
        await eventually(lambda: broker.subscriber.settled, 60, "subscriptions moved")
    finally:
        stop.set()
        with contextlib.suppress(BrokerError):
            await asyncio.gather(*tasks)
    await wait_all_accounted(sinks, ledger)
    for channel in watched:
        sink, acked = sinks[channel], ledger.acked[channel]
        assert_no_silent_hole(sink, acked)
        assert sink.losses() == [], "a reshard moves the history along: nothing is lost"
        assert {(o, e) for o, e, _ in sink.delivered()} == set(acked)
        assert len(sink.delivered()) == len(acked), "no duplicates"
    assert broker.subscriber.moves >= 1
    print(
        f"reshard: {len(busy)} busy channels, acknowledged "
        f"{sum(len(v) for v in ledger.acked.values())}, "
        f"delivered {sum(len(s.delivered()) for s in sinks.values())}, publish retries "
        f"refused while the slot moved {ledger.failures} {dict(ledger.errors)}"
    )
    # move it back so the slot layout is the one the other tests expect
    await asyncio.to_thread(redis_cluster.move_slot, slot, source)


async def test_start_fails_fast_when_no_seed_node_answers() -> None:
    broker = RedisClusterBroker("redis+cluster://127.0.0.1:7199", connect_timeout=1.0)
    with pytest.raises(BrokerError):
        await broker.start(Recorder())
    await broker.close()


def test_cluster_url_forms() -> None:
    from pubsub.redis_url import parse_cluster_url

    parsed = parse_cluster_url("rediss+cluster://app:s%40cret@h1:7000,[::1]:7001/")
    assert parsed.nodes == (("h1", 7000), ("::1", 7001))
    assert (parsed.username, parsed.password, parsed.tls) == ("app", "s@cret", True)
    for bad in ("redis+cluster://h1", "redis+cluster://h1:7000/3", "redis+cluster://:7000"):
        with pytest.raises(ValueError, match=r"cluster|database") as info:
            parse_cluster_url(bad)
        assert "cret" not in str(info.value)
