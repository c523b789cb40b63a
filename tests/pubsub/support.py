"""Test doubles for the broker's callers (a recording handler, a hub subscriber) and helpers
that break Redis connections on purpose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis.asyncio

from pubsub.broker import Publication, StreamPosition
from pubsub.presence import PresenceEntry
from pubsub.redis_broker import RedisBroker


class Recorder:
    """A :class:`~pubsub.broker.BrokerEventHandler` that remembers every callback."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []
        self.controls: list[bytes] = []
        self.reconnects = 0
        self.resubscribed: list[str] = []

    def on_publication(self, publication: Publication) -> None:
        self.publications.append(publication)

    def on_control(self, data: bytes) -> None:
        self.controls.append(data)

    def on_reconnected(self) -> None:
        self.reconnects += 1

    def on_resubscribed(self, channels: list[str]) -> None:
        self.resubscribed.extend(channels)

    def offsets(self, channel: str) -> list[int]:
        return [p.offset for p in self.publications if p.channel == channel]


def encode(pub: Publication) -> bytes:
    """How the test encoder encodes a publication: ``<offset> <epoch>``."""
    return f"{pub.offset} {pub.epoch}".encode()


class PlainEncoder:
    """The :class:`pubsub.hub.Encoder` of these tests (publications only, as :func:`encode`)."""

    def publication(self, pub: Publication) -> bytes:
        return encode(pub)

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        raise AssertionError("no presence in these tests")


ENCODER = PlainEncoder()


class Sink:
    """A hub :class:`~pubsub.hub.Subscriber` recording deliveries and losses in one timeline."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, str]] = []

    def deliver(self, frame: bytes) -> None:
        offset, epoch = frame.decode().split(" ")
        self.events.append(("pub", int(offset), epoch))

    def lost(self, channel: str, position: StreamPosition) -> None:
        self.events.append(("lost", position.offset, position.epoch))

    def offsets(self) -> list[int]:
        return [offset for kind, offset, _ in self.events if kind == "pub"]

    def losses(self) -> list[tuple[int, str]]:
        return [(offset, epoch) for kind, offset, epoch in self.events if kind == "lost"]


def assert_no_silent_hole(sink: Sink, start: int = 0) -> None:
    """Every delivered offset is the previous one plus one, unless a ``lost`` came between."""
    cursor = start
    for kind, offset, _ in sink.events:
        if kind == "lost":
            cursor = offset
            continue
        assert offset == cursor + 1, f"offset {offset} after {cursor}: {sink.events}"
        cursor = offset


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``check()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.01)


async def kill_pubsub(redis_url: str, broker: RedisBroker) -> None:
    """Close the broker's pub/sub connection from the server side (``CLIENT KILL ID``)."""
    client_id = broker.pubsub.client_id
    assert client_id is not None, "pub/sub connection is down already"
    admin = redis.asyncio.Redis.from_url(redis_url)
    try:
        await admin.execute_command("CLIENT", "KILL", "ID", client_id)
    finally:
        await admin.aclose()


async def wait_for_offsets(sink: Sink, count: int, timeout: float = 10.0) -> None:
    """Wait until ``sink`` has received at least ``count`` publications."""
    await eventually(lambda: len(sink.offsets()) >= count, timeout, f"{count} publications")
