"""Centrifugo's unidirectional client protocol (JSON): what ``/connection/uni_sse`` and
``/connection/uni_http_stream`` send.

The client sends one ``ConnectRequest`` when it connects (``token``, ``subs`` with
``recover``/``offset``/``epoch`` per channel) and then only reads pushes: the same ``Push``
objects as :mod:`~services.realtime.codecs.centrifuge` sends over a WebSocket, but bare
(``{"channel": ..., "pub": {...}}``, not wrapped in ``{"push": ...}``):

* first a ``connect`` push: ``client``, ``version``, ``subs`` (each subscribed channel's
  ``recoverable``/``positioned``/``offset``/``epoch`` and, when it recovered, the missed
  ``publications``), ``ping`` (seconds between pings), ``session``, and ``expires``/``ttl``;
* then ``pub``, ``join``, ``leave``, ``unsubscribe`` pushes, ``{}`` pings, and a last
  ``disconnect`` push when the server ends the stream.
"""

from __future__ import annotations

from typing import Any

import orjson

from pubsub.broker import Publication, StreamPosition
from pubsub.presence import PresenceEntry
from services.realtime import commands as c
from services.realtime.codecs import centrifuge
from services.realtime.errors import CommandError, Disconnect


class CentrifugeUniCodec:
    """Pushes of Centrifugo's unidirectional protocol (see the module docstring)."""

    name = "centrifuge_uni"
    server_ping: bytes | None = None  # streams ping with ping() (handlers/realtime/stream.py)

    def decode(self, message: str) -> list[c.Decoded]:
        return []  # the connect request is read by the transport; nothing comes after it

    def result(self, request: c.Request, result: c.Result) -> bytes | None:
        return None

    def error(self, request: c.Request | c.Malformed, error: CommandError) -> bytes:
        code, _ = centrifuge.ERROR_CODES.get(error.code, (centrifuge.ERROR_INTERNAL, False))
        return orjson.dumps({"error": {"code": code, "message": error.message}})

    def connect(
        self,
        auth: c.AuthenticateResult,
        subs: dict[str, c.SubscribeResult],
        *,
        ping: int,
    ) -> bytes:
        """The first push: the connection and the channels it is subscribed to."""
        body: dict[str, Any] = {
            "client": auth.client_id,
            "version": centrifuge.SERVER_VERSION,
            **centrifuge._expiry(auth.expires_at),
            "subs": {channel: centrifuge._result_body(result) for channel, result in subs.items()},
            "ping": ping,
            "session": auth.client_id,
        }
        return orjson.dumps({"connect": body})

    def publication(self, pub: Publication) -> bytes:
        return b"".join(
            (
                b'{"channel":',
                orjson.dumps(pub.channel),
                b',"pub":{"data":',
                pub.data,
                b',"offset":',
                str(pub.offset).encode(),
                b"}}",
            )
        )

    def resync(self, channel: str, position: StreamPosition) -> bytes:
        # The subscriber fell behind: end the stream; the client reconnects with ``recover``.
        return self.disconnect(centrifuge.DISCONNECT_INSUFFICIENT_STATE, "insufficient state")

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        info = centrifuge._client_info(entry)
        return orjson.dumps({"channel": channel, kind: {"info": info}})

    def unsubscribed(self, channel: str, code: int, reason: str) -> bytes:
        # As over WebSocket: every server unsubscribe is final, Centrifugo's code 2000.
        body = {"code": centrifuge.UNSUBSCRIBE_SERVER, "reason": reason}
        return orjson.dumps({"channel": channel, "unsubscribe": body})

    def ping(self) -> bytes:
        return b"{}"

    def disconnect(self, code: int, reason: str) -> bytes:
        return orjson.dumps({"disconnect": {"code": code, "reason": reason}})

    def close_code(self, disconnect: Disconnect) -> int:
        return centrifuge.CLOSE_CODES[disconnect]


#: the one instance every stream shares
CODEC = CentrifugeUniCodec()
