"""Where the Redis brokers keep things, and the wire format of their pub/sub messages.

Every key and pub/sub channel starts with the configured prefix. All keys of one channel share a
Redis Cluster hash tag (``{...}``), so they live in one slot and the Lua scripts may touch them
together. The single-Redis broker (:class:`KeySpace`) uses the channel name itself as the tag::

    <prefix>:{<channel>}:meta         hash  e = epoch, o = newest offset
    <prefix>:{<channel>}:stream       stream of publications, id ``<offset>-0``, fields d, t
    <prefix>:{<channel>}:idem:<key>   string "<offset> <epoch>" of an idempotent publish
    <prefix>:{<channel>}:pub          pub/sub channel of live publications
    <prefix>:{<channel>}:presence     presence hash (and ``:presence:exp``, ``:presence:users``)
    <prefix>:control                  pub/sub channel of control messages (every node)

The Redis Cluster broker (:class:`PartitionedKeySpace`) groups channels into a fixed number of
partitions and uses the partition's tag instead, ``<prefix>:{<tag>}:<channel>:meta`` and so on
(see :class:`Partitioning` and ``docs/redis.md``).

Wire format of a live publication (built by the publish script, parsed here)::

    <offset> SP <epoch> SP <publish time, Unix seconds> SP <data bytes>

Epochs are URL-safe base64 and offsets and times are numbers, so only the data may contain
spaces and a single ``split(b" ", 3)`` parses a message without looking at the data.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from pubsub.broker import Publication


class BadWireMessage(ValueError):
    """A pub/sub message that is not in the wire format."""


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Key and pub/sub channel names under one prefix."""

    prefix: str

    def meta(self, channel: str) -> str:
        """The hash holding the channel's epoch and newest offset."""
        return f"{self.prefix}:{{{channel}}}:meta"

    def stream(self, channel: str) -> str:
        """The stream holding the channel's history."""
        return f"{self.prefix}:{{{channel}}}:stream"

    def idempotency(self, channel: str, key: str) -> str:
        """The record of a publish with idempotency key ``key``."""
        return f"{self.prefix}:{{{channel}}}:idem:{key}"

    def live(self, channel: str) -> bytes:
        """The pub/sub channel carrying the channel's live publications."""
        return f"{self.prefix}:{{{channel}}}:pub".encode()

    def presence(self, channel: str) -> str:
        """The base name of the channel's presence keys."""
        return f"{self.prefix}:{{{channel}}}:presence"

    @property
    def control(self) -> bytes:
        """The pub/sub channel of control messages, subscribed by every node."""
        return f"{self.prefix}:control".encode()


@dataclass(frozen=True)
class Partitioning:
    """A fixed number of channel partitions, each pinned to one Redis Cluster hash slot.

    A channel belongs to partition ``crc32(channel) % count``; every key and the shard channel
    of all channels of a partition carry the partition's hash tag, so they live in one slot
    and move together. Tag ``i`` is the first of ``p<i>``, ``p<i>-1``, ``p<i>-2``... whose slot
    lies in the ``i``-th of ``count`` equal slot ranges: the partitions spread evenly over the
    slot space, so masters holding equal slot ranges (what ``redis-cli --cluster create`` and
    ``rebalance`` produce) hold equal numbers of partitions. Every node computes the same tags;
    changing ``count`` changes the key names (a new epoch for every channel).
    """

    count: int = 64
    tags: tuple[str, ...] = field(init=False)
    slots: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.count <= REDIS_CLUSTER_HASH_SLOTS:
            raise ValueError(f"partition count must be 1..{REDIS_CLUSTER_HASH_SLOTS}")
        tags, slots = [], []
        for index in range(self.count):
            low = index * REDIS_CLUSTER_HASH_SLOTS // self.count
            high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // self.count
            attempt = 0
            while True:
                tag = f"p{index}" if attempt == 0 else f"p{index}-{attempt}"
                slot = key_slot(tag.encode())
                if low <= slot < high:
                    break
                attempt += 1
            tags.append(tag)
            slots.append(slot)
        object.__setattr__(self, "tags", tuple(tags))
        object.__setattr__(self, "slots", tuple(slots))

    def index(self, channel: str) -> int:
        """The partition of ``channel`` (the same on every node and every run)."""
        return zlib.crc32(channel.encode()) % self.count


@dataclass(frozen=True)
class PartitionedKeySpace:
    """Key and shard channel names of the Redis Cluster broker: like :class:`KeySpace`, with
    the channel's partition tag as the hash tag (``<prefix>:{<tag>}:<channel>:...``)."""

    prefix: str
    partitions: Partitioning = field(default_factory=Partitioning)

    def _base(self, channel: str) -> str:
        tag = self.partitions.tags[self.partitions.index(channel)]
        return f"{self.prefix}:{{{tag}}}:{channel}"

    def meta(self, channel: str) -> str:
        """The hash holding the channel's epoch, newest offset and last writer."""
        return f"{self._base(channel)}:meta"

    def stream(self, channel: str) -> str:
        """The stream holding the channel's history."""
        return f"{self._base(channel)}:stream"

    def idempotency(self, channel: str, key: str) -> str:
        """The record of a publish with idempotency key ``key``."""
        return f"{self._base(channel)}:idem:{key}"

    def live(self, channel: str) -> bytes:
        """The shard channel (SPUBLISH/SSUBSCRIBE) carrying the live publications."""
        return f"{self._base(channel)}:pub".encode()

    def presence(self, channel: str) -> str:
        """The base name of the channel's presence keys."""
        return f"{self._base(channel)}:presence"

    @property
    def control(self) -> bytes:
        """The classic pub/sub channel of control messages (a cluster-wide broadcast)."""
        return f"{self.prefix}:control".encode()


def parse_wire(channel: str, message: bytes) -> Publication:
    """Decode a live publication of ``channel``; raises :class:`BadWireMessage`."""
    try:
        offset, epoch, sent, data = message.split(b" ", 3)
        return Publication(channel, int(offset), epoch.decode(), data, float(sent))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadWireMessage(f"bad publication message on {channel!r}") from exc
