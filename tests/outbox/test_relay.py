"""The outbox relay: the leader publishes in order and marks events; a standby waits quietly."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from handlers import keys
from handlers.outbox_relay import OutboxRelay
from storage import outbox


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
    for _ in range(100):  # wait until the app's own relay leads
        async with pool.acquire() as conn:
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1",
                outbox.RELAY_LOCK_ID & 0xFFFFFFFF,
            )
        if held:
            break
        await asyncio.sleep(0.02)
    assert held, "the app's relay should hold the leader lock"
    # So this one can only be a standby.
    standby = OutboxRelay(counting, hub, poll_interval=0.2)  # type: ignore[arg-type]
    task = asyncio.create_task(standby.run())
    try:
        for _ in range(50):
            standby.kick()
            await asyncio.sleep(0.01)
        assert counting.acquired <= 5  # about one attempt per poll interval, not thousands
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

    await hub.subscribe(Sub(), "alerts:relay")
    async with pool.acquire() as conn, conn.transaction():
        for i in range(5):
            await outbox.add_event(conn, ["alerts:relay"], {"type": "t", "i": i})
    app[keys.relay].kick()
    for _ in range(100):
        if len(seen) == 5:
            break
        await asyncio.sleep(0.02)
    assert len(seen) == 5
    for _ in range(100):
        async with pool.acquire() as conn:
            if await outbox.pending_count(conn) == 0:
                break
        await asyncio.sleep(0.02)
    async with pool.acquire() as conn:
        assert await outbox.pending_count(conn) == 0
    position = await hub.broker.position("alerts:relay", hub.options("alerts:relay"))
    history = await hub.broker.history("alerts:relay", hub.options("alerts:relay"))
    ids = [int(p.data.split(b'"event_id":')[1].split(b"}")[0]) for p in history.publications]
    assert ids == sorted(ids)
    assert position.offset == 5
