"""Wire protocols: one :class:`Codec` per protocol a client may speak.

A codec turns an incoming message (the text of one WebSocket frame, for example) into typed
:mod:`~services.realtime.commands` and turns results, errors and server pushes into message
bytes. It knows nothing about transports: a :class:`~services.realtime.wire.Wire` adds the
framing (WebSocket frame header, SSE ``data:`` lines...). Codecs are stateless and shared by
every connection.
"""

from __future__ import annotations

from typing import Protocol

from pubsub.broker import Publication, StreamPosition
from pubsub.presence import PresenceEntry
from services.realtime.commands import Decoded, Malformed, Request, Result
from services.realtime.errors import CommandError, Disconnect


class Codec(Protocol):
    """One wire protocol. ``name`` labels it in logs and metrics."""

    name: str
    #: the protocol's own keep-alive message the server sends every ``WS_HEARTBEAT`` seconds
    #: (and the client answers), or None when WebSocket ping frames do the job
    server_ping: bytes | None

    def decode(self, message: str) -> list[Decoded]:
        """The commands in one incoming message (protocols that batch give several)."""
        ...

    def result(self, request: Request, result: Result) -> bytes | None:
        """The reply to a successful command (None: the protocol sends none)."""
        ...

    def error(self, request: Request | Malformed, error: CommandError) -> bytes:
        """The reply to a failed or undecodable command."""
        ...

    def publication(self, pub: Publication) -> bytes:
        """A live publication push (called once per publication for all its subscribers)."""
        ...

    def resync(self, channel: str, position: StreamPosition) -> bytes:
        """Publications of ``channel`` up to ``position`` were lost for good."""
        ...

    def presence(self, kind: str, channel: str, entry: PresenceEntry) -> bytes:
        """A ``join`` or ``leave`` push."""
        ...

    def unsubscribed(self, channel: str, code: int, reason: str) -> bytes:
        """The server ended the subscription to ``channel`` (``code``: one of the
        ``UNSUBSCRIBE_*`` codes of :mod:`services.realtime.errors`)."""
        ...

    def close_code(self, disconnect: Disconnect) -> int:
        """The close code that tells the client ``disconnect``."""
        ...


class StreamCodec(Codec, Protocol):
    """A protocol spoken over a one-way HTTP stream (Server-Sent Events, HTTP streaming): the
    server has no close code to send, so it says why it ends the stream in a last message."""

    def ping(self) -> bytes:
        """The keep-alive message sent when the stream was idle (proxies close idle streams)."""
        ...

    def disconnect(self, code: int, reason: str) -> bytes:
        """The last message of a stream the server ends: ``code`` is :meth:`close_code`'s (or
        an application's own), ``reason`` says why."""
        ...
