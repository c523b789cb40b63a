"""The pub/sub keepalive drops a connection only when a PING went unanswered for the timeout.

The rule (:class:`pubsub.redis_pubsub.Liveness`) is driven here with a fake clock, exactly as
the keepalive loop drives it (sleep ``next_check()``, a timer that fires late, then ask), so
timer jitter and reply latency are chosen, not hoped for. The end-to-end tests use real timers
and the real Redis: an idle node keeps its connection through many keepalive rounds, and a
connection whose peer stops answering (a proxy that black-holes it) is dropped and replaced.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from pubsub.namespaces import NamespaceOptions
from pubsub.redis_broker import RedisBroker
from pubsub.redis_pubsub import Liveness, ReconnectPolicy
from tests.pubsub.support import BlackHoleProxy, Recorder, eventually

OPTIONS = NamespaceOptions(history_size=10)


class FakeClock:
    """A monotonic clock that only moves when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Outcome:
    dead_at: int | None = None  # the round that declared the connection dead
    pings: int = 0


def drive(
    liveness: Liveness,
    clock: FakeClock,
    *,
    checks: int,
    late: Callable[[int], float] = lambda n: 0.0,
    latency: Callable[[int], float] | None = lambda n: 0.001,
) -> Outcome:
    """Run ``checks`` rounds of the keepalive loop against ``liveness``.

    Each round sleeps ``next_check()`` on a timer that fires ``late(n)`` seconds late, then
    asks ``dead()`` and ``ping_due()``; a PING's reply arrives ``latency(n)`` seconds after it
    was sent (never, when ``latency`` is None). Stops at the round that declares the connection
    dead.
    """
    outcome = Outcome()
    reply_at: float | None = None
    for n in range(checks):
        wake = clock.now + liveness.next_check() + late(n)
        if reply_at is not None and reply_at <= wake:
            clock.now = reply_at
            liveness.received()
            reply_at = None
        clock.now = wake
        if liveness.dead():
            outcome.dead_at = n
            return outcome
        if liveness.ping_due():
            liveness.ping_sent()
            outcome.pings += 1
            if latency is not None and reply_at is None:
                reply_at = clock.now + latency(n)
    return outcome


def test_idle_connection_checked_slightly_late_is_not_declared_dead() -> None:
    # The incident: 10 s keepalive, a PONG 3 ms after its PING and timers firing 2 ms late.
    # A check that comes just before the ping deadline skips the PING, and the next one sees
    # almost two intervals of silence; the old rule reconnected there.
    clock = FakeClock()
    liveness = Liveness(interval=10.0, timeout=10.0, clock=clock)
    outcome = drive(liveness, clock, checks=1000, late=lambda n: 0.002, latency=lambda n: 0.003)
    assert outcome.dead_at is None, f"declared dead at check {outcome.dead_at}"


@pytest.mark.parametrize("seed", range(5))
def test_idle_connection_with_random_jitter_and_latency_is_never_declared_dead(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    liveness = Liveness(interval=10.0, timeout=10.0, clock=clock)
    outcome = drive(
        liveness,
        clock,
        checks=5000,
        late=lambda n: rng.uniform(0.0, 0.05),
        latency=lambda n: rng.uniform(0.0005, 0.05),
    )
    assert outcome.dead_at is None, f"declared dead at check {outcome.dead_at}"


def test_an_idle_connection_is_pinged_about_once_per_interval_even_with_a_long_timeout() -> None:
    clock = FakeClock()
    start = clock.now
    liveness = Liveness(interval=1.0, timeout=5.0, clock=clock)
    outcome = drive(liveness, clock, checks=1000, late=lambda n: 0.001, latency=lambda n: 0.01)
    assert outcome.dead_at is None
    elapsed = clock.now - start
    assert outcome.pings >= elapsed / 1.1, f"{outcome.pings} PINGs in {elapsed:.0f} s"
    assert outcome.pings <= elapsed / 1.0


def test_a_stalled_check_after_the_reply_came_is_not_a_timeout() -> None:
    # The event loop was blocked for a long time, but the PONG had been read before the check
    # ran: the verdict depends on what was received, not on how late the check comes.
    clock = FakeClock()
    liveness = Liveness(interval=1.0, timeout=2.0, clock=clock)
    clock.now += liveness.next_check()
    assert liveness.ping_due()
    liveness.ping_sent()
    clock.now += 0.01
    liveness.received()
    clock.now += 30.0
    assert not liveness.dead()


def test_unanswered_ping_is_dead_exactly_at_the_timeout() -> None:
    clock = FakeClock()
    start = clock.now
    liveness = Liveness(interval=10.0, timeout=4.0, clock=clock)
    outcome = drive(liveness, clock, checks=10, latency=None)
    assert outcome.dead_at is not None, "a peer that never answers must be declared dead"
    assert outcome.pings == 1
    # The PING goes out after one interval of silence, the verdict one timeout later.
    assert clock.now - start == pytest.approx(14.0)


def test_unanswered_ping_is_not_dead_before_the_timeout() -> None:
    clock = FakeClock()
    liveness = Liveness(interval=10.0, timeout=4.0, clock=clock)
    clock.now += 10.0
    assert liveness.ping_due()
    liveness.ping_sent()
    assert not liveness.ping_due(), "one PING at a time"
    clock.now += 3.999
    assert not liveness.dead()
    assert liveness.next_check() == pytest.approx(0.001)
    clock.now += 0.001
    assert liveness.dead()


def test_any_message_answers_a_ping() -> None:
    clock = FakeClock()
    liveness = Liveness(interval=10.0, timeout=4.0, clock=clock)
    clock.now += 10.0
    liveness.ping_sent()
    clock.now += 1.0
    liveness.received()  # a publication, not the PONG: the connection is alive all the same
    clock.now += 5.0
    assert not liveness.dead()
    assert not liveness.ping_due(), "the next PING is due one interval after the last message"
    clock.now += 5.0
    assert liveness.ping_due()


def test_a_new_connection_starts_with_a_clean_slate() -> None:
    clock = FakeClock()
    liveness = Liveness(interval=10.0, timeout=4.0, clock=clock)
    clock.now += 10.0
    liveness.ping_sent()
    clock.now += 100.0
    assert liveness.dead()
    liveness.reset()
    assert not liveness.dead()
    assert not liveness.ping_due()
    assert liveness.next_check() == pytest.approx(10.0)


# -- real timers, real Redis ---------------------------------------------------------------


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[BlackHoleProxy]:
    proxy = BlackHoleProxy(redis_url)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def publisher(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBroker]:
    """Another node, connected to Redis directly, used only to publish."""
    broker = RedisBroker(redis_url, prefix=redis_prefix)
    await broker.start(Recorder())
    yield broker
    await broker.close()


async def test_idle_node_keeps_its_connection_through_many_keepalive_rounds(
    redis_url: str, redis_prefix: str, publisher: RedisBroker
) -> None:
    broker = RedisBroker(redis_url, prefix=redis_prefix, keepalive=0.2, keepalive_timeout=2.0)
    recorder = Recorder()
    await broker.start(recorder)
    try:
        await broker.subscribe("alerts:idle")
        client_id = broker.pubsub.client_id
        rounds = 25  # five seconds of idling at 0.2 s per round on an idle machine
        await eventually(
            lambda: broker.pubsub.keepalive_replies >= rounds,
            timeout=60,
            what=f"{rounds} answered keepalive PINGs",
        )
        assert broker.pubsub.reconnects == 0, "a healthy idle connection was dropped"
        assert recorder.reconnects == 0, "channels were resubscribed and refilled for nothing"
        assert broker.pubsub.client_id == client_id
        result = await publisher.publish("alerts:idle", b'"still here"', OPTIONS)
        await eventually(
            lambda: recorder.offsets("alerts:idle") == [result.offset], what="live delivery"
        )
    finally:
        await broker.close()


async def test_black_holed_connection_is_dropped_and_replaced(
    proxy: BlackHoleProxy,
    redis_prefix: str,
    publisher: RedisBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = RedisBroker(
        proxy.url,
        prefix=redis_prefix,
        keepalive=0.2,
        keepalive_timeout=1.0,
        reconnect=ReconnectPolicy(minimum=0.05, maximum=0.2),
    )
    recorder = Recorder()
    await broker.start(recorder)
    try:
        await broker.subscribe("alerts:hole")
        first = await publisher.publish("alerts:hole", b"1", OPTIONS)
        await eventually(lambda: recorder.offsets("alerts:hole") == [1], what="offset 1")
        old_client = broker.pubsub.client_id

        with caplog.at_level(logging.WARNING, logger="pubsub.redis_pubsub"):
            proxy.black_hole()  # nothing comes back, and nothing tells the client so
            await eventually(
                lambda: broker.pubsub.reconnects >= 1 and broker.pubsub.connected,
                timeout=30,
                what="the silent connection replaced",
            )
        assert "connection silent" in caplog.text, "the keepalive noticed, nothing else"
        assert broker.pubsub.client_id != old_client
        await eventually(lambda: recorder.reconnects >= 1, what="on_reconnected after resubscribe")

        second = await publisher.publish("alerts:hole", b"2", OPTIONS)
        await eventually(
            lambda: recorder.offsets("alerts:hole") == [first.offset, second.offset],
            what="live delivery over the new connection",
        )
    finally:
        await broker.close()
