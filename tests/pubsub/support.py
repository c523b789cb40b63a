"""Test doubles for the broker's callers (a recording handler, a hub subscriber) and helpers
that break Redis connections on purpose."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio

from pubsub.broker import Publication, StreamPosition
from pubsub.presence import PresenceEntry
from pubsub.redis_broker import RedisBroker
from tests.helpers import DEADLINE, eventually

__all__ = [
    "BlackHoleProxy",
    "Recorder",
    "Sink",
    "assert_no_silent_hole",
    "encode",
    "eventually",
    "kill_pubsub",
    "wait_for_offsets",
]


class Recorder:
    """A :class:`~pubsub.broker.BrokerEventHandler` that remembers every callback."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []
        self.controls: list[bytes] = []
        self.reconnects = 0
        self.resubscribed: list[str] = []

    def on_publication(self, publication: Publication) -> None:
        self.publications.append(publication)

    def on_publications(self, publications: list[Publication]) -> None:
        self.publications.extend(publications)

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


async def kill_pubsub(redis_url: str, broker: RedisBroker) -> None:
    """Close the broker's pub/sub connection from the server side (``CLIENT KILL ID``)."""
    client_id = broker.pubsub.client_id
    assert client_id is not None, "pub/sub connection is down already"
    admin = redis.asyncio.Redis.from_url(redis_url)
    try:
        await admin.execute_command("CLIENT", "KILL", "ID", client_id)
    finally:
        await admin.aclose()


async def wait_for_offsets(sink: Sink, count: int, timeout: float = DEADLINE) -> None:
    """Wait until ``sink`` has received at least ``count`` publications."""
    await eventually(lambda: len(sink.offsets()) >= count, timeout, f"{count} publications")


class BlackHoleProxy:
    """A TCP proxy in front of Redis. ``black_hole()`` makes every connection open at that
    moment swallow bytes in both directions while its sockets stay open (no FIN, no RST), like
    a peer behind a dead network path; connections made later are forwarded normally."""

    def __init__(self, target_url: str) -> None:
        self._target = urlsplit(target_url)
        self._server: asyncio.Server | None = None
        self._pairs: list[dict[str, bool]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        parts = self._target
        self.url = urlunsplit((parts.scheme, f"127.0.0.1:{port}", parts.path, "", ""))

    def black_hole(self) -> None:
        for pair in self._pairs:
            pair["black_holed"] = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self._target.hostname or "127.0.0.1", self._target.port or 6379
        up_reader, up_writer = await asyncio.open_connection(host, port)
        self._writers += [writer, up_writer]
        pair = {"black_holed": False}
        self._pairs.append(pair)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, pair: dict[str, bool]
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if not pair["black_holed"]:
                    sink.write(data)
                    await sink.drain()
