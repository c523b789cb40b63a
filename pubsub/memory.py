"""In-process broker for a single node: ring-buffer history per channel, no network.

Used when ``REDIS_URL`` is not set. Offsets and epochs behave exactly as in the Redis broker
(the same contract tests run against both); only the reach is one process.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from pubsub.broker import (
    Broker,
    BrokerError,
    BrokerEventHandler,
    HistoryResult,
    Publication,
    PublishResult,
    StreamPosition,
    hand_over,
)
from pubsub.namespaces import NamespaceOptions


def new_epoch() -> str:
    """A short random epoch; a new one marks a stream whose history was lost."""
    return secrets.token_urlsafe(6)


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    touched: float = field(default_factory=time.monotonic)
    #: (monotonic time stored, publication), oldest first
    entries: deque[tuple[float, Publication]] = field(default_factory=deque)


class MemoryBroker(Broker):
    """Single-process broker. A publication is delivered inside :meth:`publish`, except with
    ``collect_under_load`` (the server's broker) when the event loop is busy publishing.

    With ``collect_under_load``, when the previous pass of the event loop published more than
    one publication, the publications of a pass are collected and handed to the hub together at
    its end (:meth:`BrokerEventHandler.on_publications`), as the Redis broker hands over what
    one read brought: each channel's run then reaches its subscribers in one fan-out pass, one
    write each, and the publishers are answered before it. Those writes would have happened at
    the same moment anyway: under load the transport queues frames and writes them once per
    pass. A pass with a single publication goes back to delivering inside :meth:`publish`. A
    control message hands over what was collected before it. Without the option (tests of the
    hub's semantics) delivery is always synchronous.
    """

    name = "memory"
    instant_reads = True

    def __init__(self, *, collect_under_load: bool = False) -> None:
        self._collect = collect_under_load
        self._streams: dict[str, _Stream] = {}
        self._subscribed: set[str] = set()
        self._idempotency: dict[tuple[str, str], tuple[float, PublishResult]] = {}
        self._handler: BrokerEventHandler | None = None
        self._closed = False
        #: publications of this pass, delivered at its end (under load)
        self._collected: list[Publication] = []
        #: publications delivered or collected in this pass
        self._in_pass = 0
        #: the previous pass published several: collect this pass's
        self._together = False
        self._pass_end: asyncio.Handle | None = None

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        self._handler = None
        self._subscribed.clear()
        self._collected = []
        if self._pass_end is not None:
            self._pass_end.cancel()
            self._pass_end = None

    def _check(self) -> BrokerEventHandler:
        if self._closed or self._handler is None:
            raise BrokerError("memory broker is not running")
        return self._handler

    async def subscribe(self, channel: str) -> None:
        self._check()
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    def _stream(self, channel: str, options: NamespaceOptions) -> _Stream:
        now = time.monotonic()
        stream = self._streams.get(channel)
        if stream is not None:
            self._expire(stream, options, now)
            if stream.offset and not stream.entries and now - stream.touched > options.history_ttl:
                stream = None  # history and position both expired: a new epoch starts
        if stream is None:
            stream = _Stream(epoch=new_epoch())
            self._streams[channel] = stream
        return stream

    @staticmethod
    def _expire(stream: _Stream, options: NamespaceOptions, now: float) -> None:
        ttl = options.history_ttl
        entries = stream.entries
        while entries and now - entries[0][0] > ttl:
            entries.popleft()

    async def publish(
        self,
        channel: str,
        data: bytes,
        options: NamespaceOptions,
        *,
        idempotency_key: str | None = None,
        idempotency_ttl: int = 300,
    ) -> PublishResult:
        handler = self._check()
        now = time.monotonic()
        if idempotency_key is not None:
            self._sweep_idempotency(now)
            seen = self._idempotency.get((channel, idempotency_key))
            if seen is not None and seen[0] > now:
                first = seen[1]
                return PublishResult(first.offset, first.epoch, duplicate=True)
        stream = self._stream(channel, options)
        stream.offset += 1
        stream.touched = now
        pub = Publication(channel, stream.offset, stream.epoch, data, time.time())
        if options.history_size > 0:
            stream.entries.append((now, pub))
            while len(stream.entries) > options.history_size:
                stream.entries.popleft()
        result = PublishResult(stream.offset, stream.epoch)
        if idempotency_key is not None:
            self._idempotency[(channel, idempotency_key)] = (now + idempotency_ttl, result)
        if channel in self._subscribed:
            self._deliver(handler, pub)
        return result

    def _deliver(self, handler: BrokerEventHandler, pub: Publication) -> None:
        """Deliver ``pub`` now at light load, at the end of this pass under load."""
        if not self._collect:
            handler.on_publication(pub)
            return
        self._in_pass += 1
        if self._pass_end is None:
            self._pass_end = asyncio.get_running_loop().call_soon(self._end_pass)
        if self._together:
            self._collected.append(pub)
        else:
            handler.on_publication(pub)

    def _end_pass(self) -> None:
        self._pass_end = None
        self._together = self._in_pass > 1
        self._in_pass = 0
        self._hand_over()

    def _hand_over(self) -> None:
        """Give the hub the publications collected in this pass, in the order published."""
        collected, self._collected = self._collected, []
        if self._handler is not None:
            hand_over(self._handler, collected)

    def _sweep_idempotency(self, now: float) -> None:
        # Insertion order is expiry order when every key uses the same TTL, so stop early.
        expired = []
        for key, (until, _) in self._idempotency.items():
            if until > now:
                break
            expired.append(key)
        for key in expired:
            del self._idempotency[key]

    async def history(
        self,
        channel: str,
        options: NamespaceOptions,
        *,
        since: int | None = None,
        limit: int | None = None,
    ) -> HistoryResult:
        self._check()
        stream = self._stream(channel, options)
        entries = [pub for _, pub in stream.entries]
        if since is not None:
            entries = [pub for pub in entries if pub.offset > since]
            if limit is not None:
                entries = entries[:limit]
        elif limit is not None:
            entries = entries[-limit:] if limit > 0 else []
        return HistoryResult(entries, StreamPosition(stream.offset, stream.epoch))

    async def position(self, channel: str, options: NamespaceOptions) -> StreamPosition:
        self._check()
        stream = self._stream(channel, options)
        return StreamPosition(stream.offset, stream.epoch)

    async def publish_control(self, data: bytes) -> None:
        handler = self._check()
        self._hand_over()  # after the publications made before it
        handler.on_control(data)

    async def ping(self) -> None:
        self._check()
