"""Where the Redis broker keeps things, and the wire format of its pub/sub messages.

Every key and pub/sub channel starts with the configured prefix. Per-channel keys carry the
channel name as a Redis Cluster hash tag (``{...}``), so one channel's keys live in one slot and
the Lua scripts may touch them together::

    <prefix>:{<channel>}:meta         hash  e = epoch, o = newest offset
    <prefix>:{<channel>}:stream       stream of publications, id ``<offset>-0``, fields d, t
    <prefix>:{<channel>}:idem:<key>   string "<offset> <epoch>" of an idempotent publish
    <prefix>:{<channel>}:pub          pub/sub channel of live publications
    <prefix>:control                  pub/sub channel of control messages (every node)

Wire format of a live publication (built by the publish script, parsed here)::

    <offset> SP <epoch> SP <publish time, Unix seconds> SP <data bytes>

Epochs are URL-safe base64 and offsets and times are numbers, so only the data may contain
spaces and a single ``split(b" ", 3)`` parses a message without looking at the data.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def control(self) -> bytes:
        """The pub/sub channel of control messages, subscribed by every node."""
        return f"{self.prefix}:control".encode()


def parse_wire(channel: str, message: bytes) -> Publication:
    """Decode a live publication of ``channel``; raises :class:`BadWireMessage`."""
    try:
        offset, epoch, sent, data = message.split(b" ", 3)
        return Publication(channel, int(offset), epoch.decode(), data, float(sent))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadWireMessage(f"bad publication message on {channel!r}") from exc
