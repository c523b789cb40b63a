"""The outbox relay: the leader publishes in order and marks events; a standby waits quietly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from handlers import keys
from services.outbox.relay import OutboxRelay
from storage import outbox
from storage.db import create_pool
from tests.helpers import DEADLINE, eventually


class Plain:
    """The hub's wire encoding without the transport's ``fanout`` (which needs real
    connections): the hub then calls each fake subscriber's ``deliver``."""

    def __init__(self, hub: Any) -> None:
        self.publication = hub._encoder.publication
        self.presence = hub._encoder.presence


class CountingPool:
    """The app's real pool, counting how often a relay asks it for a connection."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.acquired = 0

    def acquire(self) -> Any:
        self.acquired += 1
        return self.pool.acquire()


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_standby_relay_does_not_spin_when_kicked(client: Any) -> None:
    app = client.server.app
    pool, hub = app[keys.pool], app[keys.hub]
    counting = CountingPool(pool)

    async def app_relay_leads() -> bool:
        async with pool.acquire() as conn:
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1",
                outbox.RELAY_LOCK_ID & 0xFFFFFFFF,
            )
        return bool(held)

    await eventually(app_relay_leads, what="the app's relay holding the leader lock")
    # So this one can only be a standby.
    standby = OutboxRelay(counting, hub, poll_interval=0.2)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(standby.run())
    try:
        for _ in range(50):
            standby.kick()
            await asyncio.sleep(0.01)
        # About one attempt per poll interval, not one per kick (or thousands). The bound
        # follows the time the kicks really took: a busy machine stretches that half second.
        polls = (loop.time() - started) / 0.2
        assert counting.acquired <= polls + 2, (counting.acquired, polls)
    finally:
        await _stop(task)


async def test_leader_publishes_events_in_order_and_marks_them(client: Any) -> None:
    app = client.server.app
    pool, hub = app[keys.pool], app[keys.hub]
    seen: list[int] = []

    class Sub:
        def deliver(self, frame: bytes) -> None:
            seen.append(frame.count(b"event_id"))

        def lost(self, channel: str, position: Any) -> None:
            raise AssertionError("nothing may be lost")

    await hub.subscribe(Sub(), "alerts:relay", encoder=Plain(hub))
    async with pool.acquire() as conn, conn.transaction():
        for i in range(5):
            await outbox.add_event(conn, ["alerts:relay"], {"type": "t", "i": i})
    app[keys.relay].kick()
    await eventually(lambda: len(seen) == 5, what="5 events delivered")

    async def all_marked() -> bool:
        async with pool.acquire() as conn:
            return bool(await outbox.pending_count(conn) == 0)

    await eventually(all_marked, what="every event marked published")
    assert len(seen) == 5
    position = await hub.broker.position("alerts:relay", hub.options("alerts:relay"))
    history = await hub.broker.history("alerts:relay", hub.options("alerts:relay"))
    ids = [int(p.data.split(b'"event_id":')[1].split(b"}")[0]) for p in history.publications]
    assert ids == sorted(ids)
    assert position.offset == 5


class FlakyHub:
    """The app's hub, but publishing event ``i`` fails ``failures[i]`` times first (a bug)."""

    def __init__(self, hub: Any, failures: dict[int, int]) -> None:
        self.hub = hub
        self.failures = failures

    async def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None) -> Any:
        left = self.failures.get(data["i"], 0)
        if left:
            self.failures[data["i"]] = left - 1
            raise RuntimeError("not a broker outage")
        return await self.hub.publish(channel, data, idempotency_key=idempotency_key)

    async def publish_many(self, channel: str, items: list[tuple[Any, str | None]]) -> Any:
        """Fails as a whole while one of ``items`` would fail (the relay then goes one by
        one)."""
        if any(self.failures.get(data["i"], 0) for data, _ in items):
            raise RuntimeError("not a broker outage")
        return await self.hub.publish_many(channel, items)


async def _own_relay(app: Any, failures: dict[int, int], channel: str) -> tuple[OutboxRelay, list]:
    """Stop the app's relay and make one over a flaky hub; subscribe to ``channel``."""
    for task in asyncio.all_tasks():
        if task.get_name() == "outbox-relay":
            await _stop(task)
    seen: list[int] = []

    class Sub:
        def deliver(self, frame: bytes) -> None:
            seen.append(int(frame.split(b'"i":')[1].split(b",")[0].split(b"}")[0]))

        def lost(self, channel: str, position: Any) -> None:
            raise AssertionError("nothing may be lost")

    await app[keys.hub].subscribe(Sub(), channel, encoder=Plain(app[keys.hub]))
    relay = OutboxRelay(app[keys.pool], FlakyHub(app[keys.hub], failures), max_attempts=3)  # type: ignore[arg-type]
    return relay, seen


@pytest.mark.parametrize(
    ("failures", "published", "set_aside"),
    [
        # Event 1 fails twice, then goes out: nothing after it went out before it did.
        (2, [0, 1, 2], 0),
        # Event 1 always fails: set aside after max_attempts (3), so event 2 is not held back.
        (1_000, [0, 2], 1),
    ],
    ids=["retried-in-order", "set-aside"],
)
async def test_an_event_failing_with_a_bug_is_retried_then_set_aside(
    client: Any, failures: int, published: list[int], set_aside: int
) -> None:
    app = client.server.app
    channel = f"alerts:flaky-{failures}"
    relay, seen = await _own_relay(app, {1: failures}, channel)
    async with app[keys.pool].acquire() as conn:
        for i in range(3):
            await outbox.add_event(conn, [channel], {"type": "t", "i": i})
        results = [await relay.relay_once(conn) for _ in range(3)]
        assert await outbox.pending_count(conn) == 0
    assert results == [(1, False), (0, False), (2, True)]
    assert seen == published
    assert relay.set_aside == set_aside


class RoundTripHub:
    """The app's hub, but each publication first waits a millisecond, like a broker round trip
    over a network; records how many publications were in flight at once."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.in_flight = 0
        self.most_in_flight = 0
        self.round_trips = 0

    async def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None) -> Any:
        return (await self.publish_many(channel, [(data, idempotency_key)]))[0]

    async def publish_many(self, channel: str, items: list[tuple[Any, str | None]]) -> Any:
        self.in_flight += 1
        self.round_trips += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            return await self.hub.publish_many(channel, items)
        finally:
            self.in_flight -= 1


async def test_a_batch_of_500_events_goes_out_once_in_order_per_channel_in_one_round(
    client: Any,
) -> None:
    app = client.server.app
    pool, hub = app[keys.pool], app[keys.hub]
    for task in asyncio.all_tasks():
        if task.get_name() == "outbox-relay":
            await _stop(task)
    channels = [f"alerts:batch-{n}" for n in range(5)]
    seen: dict[str, list[int]] = {channel: [] for channel in channels}

    class Sub:
        def __init__(self, channel: str) -> None:
            self.channel = channel

        def deliver(self, frame: bytes) -> None:
            seen[self.channel].append(int(frame.split(b'"i":')[1].split(b",")[0].split(b"}")[0]))

        def lost(self, channel: str, position: Any) -> None:
            raise AssertionError("nothing may be lost")

    for channel in channels:
        await hub.subscribe(Sub(channel), channel, encoder=Plain(hub))
    async with pool.acquire() as conn, conn.transaction():
        for i in range(500):
            await outbox.add_event(conn, [channels[i % 5]], {"type": "t", "i": i})
    slow = RoundTripHub(hub)
    relay = OutboxRelay(pool, slow, batch_size=500)  # type: ignore[arg-type]
    statements: list[str] = []
    async with pool.acquire() as conn:

        def logger(record: Any) -> None:
            statements.append(record.query)

        conn.add_query_logger(logger)
        assert await relay.relay_once(conn) == (500, True)
        assert await relay.relay_once(conn) == (0, True)
        conn.remove_query_logger(logger)
        assert await outbox.pending_count(conn) == 0
    # One statement fetches the batch and one marks it and fetches the next (empty: the second
    # round fetches once more);
    # asyncpg's own type introspection on a fresh connection is not counted.
    relay_statements = [query for query in statements if "outbox" in query]
    assert len(relay_statements) == 3, statements
    # One broker round trip per channel (its 100 events together), the channels' overlapping.
    assert slow.round_trips == len(channels)
    assert slow.most_in_flight == len(channels)
    for n, channel in enumerate(channels):
        expected = list(range(n, 500, 5))
        for _ in range(500):  # local delivery runs on the event loop; wait for the last one
            if len(seen[channel]) >= len(expected):
                break
            await asyncio.sleep(0.02)
        assert seen[channel] == expected  # each once, in id order
        position = await hub.broker.position(channel, hub.options(channel))
        assert position.offset == len(expected)


async def test_a_busy_relay_makes_one_database_round_trip_per_batch(client: Any) -> None:
    app = client.server.app
    pool, hub = app[keys.pool], app[keys.hub]
    for task in asyncio.all_tasks():
        if task.get_name() == "outbox-relay":
            await _stop(task)
    channel = "alerts:busy-relay"
    async with pool.acquire() as conn, conn.transaction():
        for i in range(6):
            await outbox.add_event(conn, [channel], {"type": "t", "i": i})
    relay = OutboxRelay(pool, hub, batch_size=2)
    statements: list[str] = []
    async with pool.acquire() as conn:

        def logger(record: Any) -> None:
            statements.append(record.query)

        conn.add_query_logger(logger)
        rounds = [await relay.relay_once(conn) for _ in range(4)]
        conn.remove_query_logger(logger)
        assert await outbox.pending_count(conn) == 0
        published = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE $1 = ANY(channels) AND published_at IS NOT NULL",
            channel,
        )
    assert rounds == [(2, True), (2, True), (2, True), (0, True)]
    assert published == 6
    # fetch, then mark + fetch next three times (the last finds nothing), then the fourth
    # round's fetch: 5 statements for 3 batches, not 7 (fetch + mark each, then a fetch).
    assert len([query for query in statements if "outbox" in query]) == 5, statements
    position = await hub.broker.position(channel, hub.options(channel))
    assert position.offset == 6


class LoggingPool:
    """The app's real pool; records the statements of the connections it hands out."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.statements: list[str] = []

    @contextlib.asynccontextmanager
    async def acquire(self) -> Any:
        def logger(record: Any) -> None:
            self.statements.append(record.query)

        async with self.pool.acquire() as conn:
            conn.add_query_logger(logger)
            try:
                yield conn
            finally:
                conn.remove_query_logger(logger)


async def test_a_round_after_hand_offs_marks_and_fetches_in_one_round_trip(client: Any) -> None:
    app = client.server.app
    pool, hub = app[keys.pool], app[keys.hub]
    for task in asyncio.all_tasks():
        if task.get_name() == "outbox-relay":
            await _stop(task)
    logging_pool = LoggingPool(pool)
    relay = OutboxRelay(logging_pool, hub, poll_interval=3600)  # type: ignore[arg-type]
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: relay.leading, what="the relay leading")
        channel = "alerts:hand-off-round"
        async with pool.acquire() as conn:
            # Without the insert trigger's NOTIFY, so that no round takes them first.
            await conn.execute("SET session_replication_role = replica")
            try:
                ids = [
                    await outbox.add_event(conn, [channel], {"type": "t", "i": i}) for i in range(3)
                ]
            finally:
                await conn.execute("RESET session_replication_role")
        events = [outbox.OutboxEvent(i, [channel], {"type": "t"}) for i in ids]
        before = len(logging_pool.statements)
        assert relay.hand_off(events, [])
        async with pool.acquire() as conn:
            await eventually(lambda: _pending(conn), what="the handed-off events marked published")
        position = await hub.broker.position(channel, hub.options(channel))
        assert position.offset == 3
        # The round after the hand-off marks and fetches in one statement (not a fetch, then
        # a mark).
        after = [q for q in logging_pool.statements[before:] if "outbox" in q]
        assert len(after) == 1, after
        assert after[0].startswith("WITH marked AS (UPDATE outbox"), after
    finally:
        await _stop(task)


async def _pending(conn: Any) -> bool:
    return await outbox.pending_count(conn) == 0


class ReleaseFails:
    """A real pool whose connections go back to it, after which giving one back raises (as
    asyncpg's ``Pool.release`` raises when the pool's warning about a connection is an
    error)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        try:
            async with self.pool.acquire() as conn:
                yield conn
        finally:
            raise RuntimeError("giving the connection back failed")


async def test_a_relay_stops_when_cancelled_even_if_giving_its_connection_back_fails(
    database_url: str,
) -> None:
    """Shutdown cancels the relay: if giving its connection back then fails, the error
    replaces the cancellation, and a relay that took it for an ordinary failure would retry
    forever (and shutdown would wait for it forever)."""
    pool = await create_pool(database_url, min_size=1, max_size=2)
    relay = OutboxRelay(ReleaseFails(pool), None, poll_interval=3600)  # type: ignore[arg-type]
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: relay.leading, what="the relay leading")
        task.cancel()
        await asyncio.wait([task], timeout=DEADLINE)
        assert task.cancelled()
    finally:
        await _stop(task)
        await pool.close()
