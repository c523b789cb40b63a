"""A private ``redis-server`` that the tests stop, restart and freeze: commands fail with
``BrokerUnavailable`` during an outage, and the node comes back by itself afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from handlers import keys
from pubsub.broker import BrokerError, BrokerUnavailable
from pubsub.hub import Hub
from pubsub.namespaces import NamespaceOptions
from pubsub.redis_broker import RedisBroker
from pubsub.redis_pubsub import ReconnectPolicy
from server.app import create_app
from server.settings import Settings
from tests.conftest import redis_server_binary
from tests.helpers import DEADLINE, service_token
from tests.pubsub.support import ENCODER, Sink, assert_no_silent_hole, encode, eventually

NAMESPACES = {"alerts": NamespaceOptions()}
ALERTS = NAMESPACES["alerts"]


class RedisProcess:
    """A throw-away redis-server on a fixed port, without persistence."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = tempfile.mkdtemp(prefix="arena-redis-outage-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", self.folder]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + DEADLINE
        while True:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)
                try:
                    client.ping()
                    return
                finally:
                    client.close()
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    binary = redis_server_binary()
    if binary is None:
        pytest.fail("these tests need a redis-server binary", pytrace=False)
    process = RedisProcess(binary)
    process.start()
    try:
        yield process
    finally:
        if process.process is not None:
            process.thaw()
        process.stop()
        shutil.rmtree(process.folder, ignore_errors=True)


@pytest.fixture
async def hub(server: RedisProcess) -> AsyncIterator[Hub]:
    # The production timeouts: a stopped server refuses connections at once, so only the
    # frozen one needs the keepalive, kept short here so that the test does not wait long.
    broker = RedisBroker(
        server.url,
        prefix="outage",
        keepalive=0.2,
        keepalive_timeout=2.0,
        reconnect=ReconnectPolicy(minimum=0.05, maximum=0.2),
    )
    hub = Hub(broker, NAMESPACES, ENCODER, release_delay=0.05)
    await hub.start()
    yield hub
    await hub.close()


def broker_of(hub: Hub) -> RedisBroker:
    assert isinstance(hub.broker, RedisBroker)
    return hub.broker


async def subscribe(hub: Hub, channel: str) -> Sink:
    sink = Sink()
    result = await hub.subscribe(sink, channel)
    for pub in result.tail:
        sink.deliver(encode(pub))
    return sink


async def test_outage_fails_commands_and_restart_recovers(hub: Hub, server: RedisProcess) -> None:
    broker = broker_of(hub)
    sink = await subscribe(hub, "alerts:o")
    before = await hub.publish("alerts:o", {"n": 1})
    await eventually(lambda: sink.offsets() == [1], what="offset 1")

    server.stop()
    await eventually(lambda: not broker.pubsub.connected, what="pub/sub connection lost")
    with pytest.raises(BrokerUnavailable):
        await hub.publish("alerts:o", {"n": 2})
    with pytest.raises(BrokerUnavailable):
        await broker.history("alerts:o", ALERTS, since=0)
    with pytest.raises(BrokerUnavailable):
        await broker.position("alerts:o", ALERTS)
    with pytest.raises(BrokerUnavailable):
        await broker.ping()
    other = Sink()
    with pytest.raises(BrokerError):
        await hub.subscribe(other, "alerts:other")
    assert hub.subscriber_count("alerts:other") == 0

    server.start()  # empty: the data set was lost with the old process
    await eventually(lambda: broker.pubsub.connected, what="reconnect")
    await broker.ping()
    await eventually(lambda: bool(sink.losses()), what="lost() for the vanished history")
    (lost_offset, lost_epoch), *_ = sink.losses()
    assert lost_epoch != before.epoch
    assert lost_offset == 0, "the new epoch starts from scratch"
    after = await hub.publish("alerts:o", {"n": 3})
    assert after.epoch == lost_epoch
    await eventually(lambda: sink.offsets()[-1] == after.offset, what="live after restart")
    assert_no_silent_hole(sink)

    other_sink = await subscribe(hub, "alerts:other")
    await hub.publish("alerts:other", {"n": 1})
    await eventually(lambda: other_sink.offsets() == [1], what="new subscription works")


async def test_publishes_batched_together_fail_together_and_recover(
    hub: Hub, server: RedisProcess
) -> None:
    """Publishes of one channel made in one loop pass (they go out together in one script
    call) all fail with ``BrokerUnavailable`` when Redis dies under them, none hangs, and the
    channel publishes again once Redis is back."""
    broker = broker_of(hub)
    sink = await subscribe(hub, "alerts:q")
    await hub.publish("alerts:q", {"n": 0})
    await eventually(lambda: sink.offsets() == [1], what="offset 1")

    server.freeze()  # the batch is sent and gets no answer
    tasks = [asyncio.create_task(hub.publish("alerts:q", {"n": n})) for n in range(1, 11)]
    await asyncio.sleep(0.2)
    assert not any(task.done() for task in tasks)
    server.stop()  # killed while frozen: the batch's connection breaks
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), DEADLINE)
    assert all(isinstance(r, BrokerUnavailable) for r in results), results

    server.start()  # empty: a new epoch
    await eventually(lambda: broker.pubsub.connected, what="reconnect")
    again = await asyncio.gather(*(hub.publish("alerts:q", {"n": n}) for n in range(10)))
    assert [r.offset for r in again] == list(range(1, 11))
    assert len({r.epoch for r in again}) == 1
    await eventually(lambda: sink.offsets()[-1:] == [10], what="live after restart")
    assert_no_silent_hole(sink)


async def test_frozen_server_is_detected_and_reconnected(hub: Hub, server: RedisProcess) -> None:
    broker = broker_of(hub)
    sink = await subscribe(hub, "alerts:f")
    await hub.publish("alerts:f", {"n": 1})
    await eventually(lambda: sink.offsets() == [1], what="offset 1")

    server.freeze()  # no RST, no answers: only the keepalive can notice
    try:
        await eventually(lambda: not broker.pubsub.connected, what="silent connection dropped")
    finally:
        server.thaw()
    await eventually(lambda: broker.pubsub.reconnects >= 1, what="reconnect")
    await eventually(lambda: broker.pubsub.connected, what="connected")
    await hub.publish("alerts:f", {"n": 2})
    await eventually(lambda: sink.offsets() == [1, 2], what="offset 2")
    assert sink.losses() == []


async def test_http_reports_503_while_redis_is_down_and_recovers(
    aiohttp_client: Any, make_settings: Callable[..., Settings], server: RedisProcess
) -> None:
    client = await aiohttp_client(create_app(make_settings(REDIS_URL=server.url)))
    headers = {"Authorization": f"Bearer {service_token(client)}"}
    url = "/api/v1/channels/alerts:http/publish"
    response = await client.post(url, json={"data": 1}, headers=headers)
    assert response.status == 200

    server.stop()
    response = await client.post(url, json={"data": 2}, headers=headers)
    assert response.status == 503
    assert (await response.json())["message"] == "message broker unavailable"
    assert (await client.get("/ready")).status == 503

    server.start()
    broker = client.server.app[keys.hub].broker
    await eventually(lambda: broker.pubsub.connected, what="reconnect")
    assert (await client.get("/ready")).status == 200
    response = await client.post(url, json={"data": 3}, headers=headers)
    assert response.status == 200
    assert (await response.json())["offset"] == 1, "Redis lost its data: a new epoch"


async def test_abandoned_subscribe_leaves_no_subscription_behind(
    hub: Hub, server: RedisProcess
) -> None:
    broker = broker_of(hub)
    server.stop()
    await eventually(lambda: not broker.pubsub.connected, what="pub/sub connection lost")
    pending = asyncio.create_task(hub.subscribe(Sink(), "alerts:gone"))
    await asyncio.sleep(0.05)
    pending.cancel()  # the client went away while the subscribe waited for Redis
    with pytest.raises(asyncio.CancelledError):
        await pending
    server.start()
    await eventually(lambda: broker.pubsub.connected, what="reconnect")
    admin = redis.asyncio.Redis.from_url(server.url)
    try:
        live = broker.keys.live("alerts:gone")
        control = broker.keys.control
        counts = dict(await admin.pubsub_numsub(live, control))
    finally:
        await admin.aclose()
    assert counts == {live: 0, control: 1}, "resubscribed the control channel only"
    assert hub.subscriber_count("alerts:gone") == 0
