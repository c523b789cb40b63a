"""Plain Server-Sent Events for one channel (``GET /sse/{channel}``), readable by a browser's
``EventSource`` alone.

Every message is one complete event (the transport only adds HTTP chunking):

* a publication is an unnamed event (``onmessage``) whose ``id:`` is ``offset:epoch`` and
  whose data is the same JSON as a ``pub`` message of ``docs/protocol.md``; the browser sends
  the last ``id`` back as ``Last-Event-ID`` when it reconnects, and the stream resumes after it;
* ``subscribed`` (first event; its ``id`` is the position the stream starts from),
  ``unrecovered`` (publications were lost for good; its ``id`` is the current position),
  ``join``/``leave``, ``unsubscribe`` and ``disconnect`` are named events with JSON data;
* ``: ping`` comments keep proxies from closing an idle stream.
"""

from __future__ import annotations

from typing import Any

import orjson

from pubsub.broker import Publication, StreamPosition
from pubsub.presence import PresenceEntry
from services.realtime import commands as c
from services.realtime.codecs import arena
from services.realtime.errors import CommandError, Disconnect
from services.realtime.framing import sse_data

#: ``retry:`` at the start of a stream: milliseconds before the browser reconnects
RECONNECT_DELAY_MS = 2000
#: ``retry:`` before a stream ends for good (refused, revoked, logged out): a browser that does
#: not close its EventSource on the ``disconnect`` event waits a day before its next try (which
#: is then refused with 401/403, and EventSource stops)
NO_RECONNECT_DELAY_MS = 86_400_000

#: the end of a stream that must not be reconnected (its subscription was ended): only a
#: ``retry:`` field (no event is dispatched)
END_FOR_GOOD = b"retry: %d\n\n" % NO_RECONNECT_DELAY_MS

#: close codes after which reconnecting with the same token cannot succeed (see
#: ``docs/clients.md``): ours (4000, 4001, 4003, 4005, 4006, 1003) and an application's
#: "do not reconnect" ranges (3500-3999, 4500-4999, as Centrifugo)
_TERMINAL = frozenset(
    (
        arena.CLOSE_UNSUPPORTED,
        arena.CLOSE_PROTOCOL,
        arena.CLOSE_UNAUTHENTICATED,
        arena.CLOSE_FORBIDDEN,
        arena.CLOSE_TOO_MANY_SUBSCRIPTIONS,
        arena.CLOSE_TOO_MANY_CONNECTIONS,
    )
)


def reconnects(code: int) -> bool:
    """Whether a client should reconnect after the stream ended with ``code``."""
    return code not in _TERMINAL and not 3500 <= code < 4000 and not 4500 <= code < 5000


def position_id(position: StreamPosition) -> bytes:
    """An event ``id``: ``offset:epoch`` (what ``Last-Event-ID`` and ``?since=`` take)."""
    return b"%d:%b" % (position.offset, position.epoch.encode())


def parse_position(value: str) -> StreamPosition:
    """``offset:epoch`` back into a position; raises ValueError when malformed."""
    offset, sep, epoch = value.partition(":")
    if not sep or not offset.isascii() or not offset.isdigit() or len(epoch) > 64:
        raise ValueError("expected 'offset:epoch', e.g. '17:kT3s_Q'")
    return StreamPosition(int(offset), epoch)


def event(data: bytes, *, name: bytes | None = None, event_id: bytes | None = None) -> bytes:
    """One SSE event."""
    head = b""
    if name is not None:
        head += b"event: " + name + b"\n"
    if event_id is not None:
        head += b"id: " + event_id + b"\n"
    return head + sse_data(data)


class SseCodec:
    """Events of one channel for ``EventSource`` (see the module docstring)."""

    name = "sse"
    server_ping: bytes | None = None  # streams ping with ping() (handlers/realtime/stream.py)

    def decode(self, message: str) -> list[c.Decoded]:
        return []  # one-way: the client sends nothing after its request

    def result(self, request: c.Request, result: c.Result) -> bytes | None:
        return None

    def error(self, request: c.Request | c.Malformed, error: CommandError) -> bytes:
        body = {"type": "error", "code": error.code, "message": error.message}
        return event(orjson.dumps(body), name=b"error")

    def subscribed(self, result: c.SubscribeResult) -> bytes:
        """The first event of a stream: where it starts. After a resume that could not be
        recovered it is ``unrecovered`` instead (reload the state, e.g. from REST)."""
        body: dict[str, Any] = {
            "type": "subscribed",
            "channel": result.channel,
            "offset": result.position.offset,
            "epoch": result.position.epoch,
            "recoverable": result.recoverable,
        }
        if result.recovered is False:
            return self.resync(result.channel, result.position)
        if result.recovered:
            body["recovered"] = True
        return event(orjson.dumps(body), name=b"subscribed", event_id=position_id(result.position))

    def publication(self, pub: Publication) -> bytes:
        return b"id: %d:%b\n%b" % (
            pub.offset,
            pub.epoch.encode(),
            sse_data(arena.publication_json(pub)),
        )

    def resync(self, channel: str, position: StreamPosition) -> bytes:
        body = {
            "type": "unrecovered",
            "channel": channel,
            "recovered": False,
            "offset": position.offset,
            "epoch": position.epoch,
        }
        return event(orjson.dumps(body), name=b"unrecovered", event_id=position_id(position))

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        return event(arena.CODEC.presence(kind, channel, entry), name=kind.encode())

    def unsubscribed(self, channel: str, code: int, reason: str) -> bytes:
        return event(arena.CODEC.unsubscribed(channel, code, reason), name=b"unsubscribe")

    def ping(self) -> bytes:
        return b": ping\n\n"

    def disconnect(self, code: int, reason: str) -> bytes:
        again = reconnects(code)
        body = {"type": "disconnect", "code": code, "reason": reason, "reconnect": again}
        retry = b"" if again else b"retry: %d\n" % NO_RECONNECT_DELAY_MS
        return retry + event(orjson.dumps(body), name=b"disconnect")

    def close_code(self, disconnect: Disconnect) -> int:
        return arena.CLOSE_CODES[disconnect]


#: the one instance every stream shares
CODEC = SseCodec()
