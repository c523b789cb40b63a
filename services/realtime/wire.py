"""A :class:`Wire` is one codec's messages framed for one transport.

It is what a connection sends through and what the hub groups subscribers by
(:class:`pubsub.hub.Encoder`): each publication is encoded and framed once per Wire in use on a
channel. Wires are made once per process (:func:`wire`) so that identity comparisons work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import Any

from pubsub.broker import Publication, StreamPosition
from pubsub.presence import PresenceEntry
from services.realtime.codecs import Codec
from services.realtime.commands import Malformed, Request, Result
from services.realtime.errors import CommandError

Framing = Callable[[bytes], bytes]
#: hands one frame to each subscriber of a collection, in order (see :attr:`Wire.fanout`)
Fanout = Callable[[Collection[Any], bytes], None]
#: hands several frames to each subscriber of a collection, in order (:attr:`Wire.fanout_many`)
FanoutMany = Callable[[Collection[Any], list[bytes]], None]


def deliver_each(subscribers: Collection[Any], frame: bytes) -> None:
    """The plain fan-out: ``deliver(frame)`` on each subscriber."""
    for sub in subscribers:
        sub.deliver(frame)


class Wire:
    """``codec`` messages wrapped by ``frame`` (e.g. into WebSocket text frames).

    ``fanout(subscribers, frame)`` is how the hub hands one publication's frame to a channel's
    subscribers of this wire; it must behave exactly like ``deliver(frame)`` on each in order.
    The transport that owns the subscribers may supply a faster loop than :func:`deliver_each`,
    and ``fanout_many(subscribers, frames)`` for publications that arrived together: the same
    bytes as ``fanout`` of each frame in turn, which a transport whose frames can be
    concatenated (WebSocket frames) writes with one call per subscriber. Without it (None) the
    hub calls ``fanout`` once per frame.
    """

    __slots__ = ("codec", "fanout", "fanout_many", "frame")

    def __init__(
        self,
        codec: Codec,
        frame: Framing,
        fanout: Fanout = deliver_each,
        fanout_many: FanoutMany | None = None,
    ) -> None:
        self.codec = codec
        self.frame = frame
        self.fanout = fanout
        self.fanout_many = fanout_many

    def __repr__(self) -> str:
        return f"Wire({self.codec.name}, {getattr(self.frame, '__name__', self.frame)})"

    def publication(self, pub: Publication) -> bytes:
        return self.frame(self.codec.publication(pub))

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        return self.frame(self.codec.presence(kind, channel, entry))

    def resync(self, channel: str, position: StreamPosition) -> bytes:
        return self.frame(self.codec.resync(channel, position))

    def unsubscribed(self, channel: str, code: int, reason: str) -> bytes:
        return self.frame(self.codec.unsubscribed(channel, code, reason))

    def result(self, request: Request, result: Result) -> bytes | None:
        message = self.codec.result(request, result)
        return None if message is None else self.frame(message)

    def error(self, request: Request | Malformed, error: CommandError) -> bytes:
        return self.frame(self.codec.error(request, error))


@functools.cache
def wire(
    codec: Codec,
    frame: Framing,
    fanout: Fanout = deliver_each,
    fanout_many: FanoutMany | None = None,
) -> Wire:
    """The process-wide Wire of ``codec`` over ``frame`` (delivered with ``fanout`` and
    ``fanout_many``)."""
    return Wire(codec, frame, fanout, fanout_many)
