"""The broker contract shared by every backend (memory, Redis, Redis Cluster).

A broker assigns offsets, keeps history and carries publications between processes. The hub
(:mod:`pubsub.hub`) is its only user: it subscribes upstream once per channel per process and
fans out locally. Every backend passes the same contract tests
(``tests/pubsub/test_broker_contract.py``).

Exceptions::

    BrokerError             the backend could not do what was asked (connection lost, timeout)
    └── BrokerUnavailable   the backend is down right now; the caller may retry later
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pubsub.namespaces import NamespaceOptions


class BrokerError(Exception):
    """The broker failed to carry out a call."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached right now."""


@dataclass(frozen=True, slots=True)
class Publication:
    """One message in one channel.

    ``data`` is the publication's payload as JSON bytes, serialised once by the publisher and
    never parsed again on the way to subscribers. ``time`` is the publisher's wall clock in
    seconds, used for latency metrics.
    """

    channel: str
    offset: int
    epoch: str
    data: bytes
    time: float


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """The newest offset of a channel and the epoch it belongs to.

    The epoch changes whenever the channel's history is lost (a new stream), so an offset is only
    meaningful together with its epoch.
    """

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a publication landed. ``duplicate`` is true when an idempotency key matched an earlier
    publication: ``offset`` is then that publication's offset and nothing was published."""

    offset: int
    epoch: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """Publications with offsets after ``since`` (ascending) and the channel's current position."""

    publications: list[Publication]
    position: StreamPosition


class BrokerEventHandler(Protocol):
    """What a broker calls back into; implemented by the hub.

    Calls arrive on the event loop, in the order the broker received them, and must not block.
    """

    def on_publication(self, publication: Publication) -> None:
        """A publication arrived on a channel this process subscribed to. Per channel, calls
        arrive in offset order unless the broker lost messages (the hub checks offsets)."""

    def on_publications(self, publications: list[Publication]) -> None:
        """Several publications, possibly of several channels, that arrived together (one
        socket read), in the order received: the same as one :meth:`on_publication` call each,
        in that order, except that consecutive publications of a channel may be fanned out in
        one pass (one write per subscriber)."""

    def on_control(self, data: bytes) -> None:
        """A control message published by some node with :meth:`Broker.publish_control`."""

    def on_reconnected(self) -> None:
        """The upstream connection was lost and is back; publications may have been missed and
        the hub should refill every channel from history."""

    def on_resubscribed(self, channels: list[str]) -> None:
        """The upstream subscriptions of ``channels`` (only these) were lost and are back, on
        the same or another Redis node; refill them from history."""


def hand_over(handler: BrokerEventHandler, publications: list[Publication]) -> None:
    """Give ``handler`` publications that arrived together: one, or several at once."""
    if len(publications) == 1:
        handler.on_publication(publications[0])
    elif publications:
        handler.on_publications(publications)


class Broker(abc.ABC):
    """Offsets, history and cross-process delivery for channels."""

    #: ``memory``, ``redis`` or ``redis-cluster``, reported in logs and ``/ready``.
    name: str
    #: :meth:`position` is answered in this process without awaiting anything (the value is
    #: read when it is called), so there is nothing to share between concurrent callers: the
    #: hub calls it directly instead of coalescing network reads (``pubsub/coalesce.py``).
    instant_reads: bool = False

    @abc.abstractmethod
    async def start(self, handler: BrokerEventHandler) -> None:
        """Connect and begin delivering publications of subscribed channels to ``handler``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and release connections. Idempotent."""

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving publications of ``channel``. When this returns, every publication
        published afterwards is delivered. Raises :class:`BrokerError` on failure."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving publications of ``channel``."""

    @abc.abstractmethod
    async def publish(
        self,
        channel: str,
        data: bytes,
        options: NamespaceOptions,
        *,
        idempotency_key: str | None = None,
        idempotency_ttl: int = 300,
    ) -> PublishResult:
        """Assign the next offset, append to history and deliver to subscribers, atomically.

        With ``idempotency_key``, a repeat within ``idempotency_ttl`` seconds returns the first
        result with ``duplicate=True`` and publishes nothing.
        Raises :class:`BrokerUnavailable` when the backend is down.
        """

    async def publish_many(
        self,
        channel: str,
        items: Sequence[tuple[bytes, str | None]],
        options: NamespaceOptions,
        *,
        idempotency_ttl: int = 300,
    ) -> list[PublishResult]:
        """:meth:`publish` each ``(data, idempotency_key)`` of ``items`` to ``channel``, in
        order (consecutive offsets, except that a repeated idempotency key publishes nothing,
        as for :meth:`publish`); returns one result per item. The Redis brokers do it in one
        round trip.

        Raises :class:`BrokerError` (:class:`BrokerUnavailable` when the backend is down);
        then a prefix of ``items`` may have been published, so a caller that retries must use
        idempotency keys. This implementation publishes one by one.
        """
        return [
            await self.publish(
                channel, data, options, idempotency_key=key, idempotency_ttl=idempotency_ttl
            )
            for data, key in items
        ]

    @abc.abstractmethod
    async def history(
        self,
        channel: str,
        options: NamespaceOptions,
        *,
        since: int | None = None,
        limit: int | None = None,
    ) -> HistoryResult:
        """Publications still in history, ascending by offset.

        With ``since``, those with offset greater than ``since`` (the first ``limit`` of them);
        without it, the newest ``limit`` (all when ``limit`` is None).
        """

    @abc.abstractmethod
    async def position(self, channel: str, options: NamespaceOptions) -> StreamPosition:
        """The channel's newest offset and epoch (offset 0 and a fresh epoch for a new channel)."""

    @abc.abstractmethod
    async def publish_control(self, data: bytes) -> None:
        """Send ``data`` to :meth:`BrokerEventHandler.on_control` of every node, this one too."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`BrokerError` unless the backend answers (used by ``/ready``)."""
