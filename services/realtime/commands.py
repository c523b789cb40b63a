"""Typed commands a client sends and the typed results the session answers with.

Codecs decode their wire format into these values and encode the results back; the session
only ever sees these types (no protocol dictionaries, no magic keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pubsub.broker import Publication, StreamPosition
from pubsub.presence import PresenceEntry
from services.realtime.errors import CommandError

# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Must be the first command: who the client is (an access or service token)."""

    name: ClassVar[str] = "authenticate"
    token: str


@dataclass(frozen=True, slots=True)
class Refresh:
    """Replace the connection's token with a newer one of the same user."""

    name: ClassVar[str] = "refresh"
    token: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Receive a channel's publications; with ``since``, recover what came after it."""

    name: ClassVar[str] = "subscribe"
    channel: str
    since: StreamPosition | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    name: ClassVar[str] = "unsubscribe"
    channel: str


@dataclass(frozen=True, slots=True)
class History:
    """The newest ``limit`` publications, or with ``since`` the ones after it (our protocol).

    Centrifugo's filter (``centrifuge`` codec) sets ``stream_order``: without ``since`` the
    *oldest* ``limit`` from the stream's start; ``reverse`` walks back from the newest (or from
    just before ``since``), newest first; a ``since`` of another epoch is an error
    (:class:`~services.realtime.errors.UnrecoverablePosition`) instead of the newest ``limit``.
    """

    name: ClassVar[str] = "history"
    channel: str
    since: StreamPosition | None = None
    limit: int = 100
    reverse: bool = False
    stream_order: bool = False


@dataclass(frozen=True, slots=True)
class Presence:
    """Who is subscribed to a channel right now (every node)."""

    name: ClassVar[str] = "presence"
    channel: str


@dataclass(frozen=True, slots=True)
class PresenceStats:
    name: ClassVar[str] = "presence_stats"
    channel: str


@dataclass(frozen=True, slots=True)
class Ping:
    name: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``data`` (JSON bytes) from the client, where a namespace's rules allow it."""

    name: ClassVar[str] = "publish"
    channel: str
    data: bytes


Command = (
    Authenticate
    | Refresh
    | Subscribe
    | Unsubscribe
    | History
    | Presence
    | PresenceStats
    | Ping
    | Publish
)

#: an id as the client sent it (None when it sent none)
RequestId = int | str | None


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded command and the id its reply must carry."""

    id: RequestId
    command: Command

    @property
    def command_type(self) -> type[Command]:
        return type(self.command)


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message that could not be decoded into a command; answered with ``error``.

    ``command_type`` is the command it tried to be, when the codec got that far.
    """

    id: RequestId
    command_type: type[Command] | None
    error: CommandError


Decoded = Request | Malformed

# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticateResult:
    client_id: str
    user_id: str
    role: str
    expires_at: int
    #: seconds between the server's keep-alive messages (protocols with their own pings)
    ping: int = 0


@dataclass(frozen=True, slots=True)
class RefreshResult:
    expires_at: int


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """``position`` is where live publications continue; with a ``since`` in the command,
    ``recovered`` says whether ``publications`` are exactly the missed ones (else None).

    After the reply the session sends ``tail`` (live publications that arrived during the
    subscribe) and then, when ``join_presence``, registers the client in presence, so a
    subscriber never sees its own join before its subscription.
    """

    channel: str
    position: StreamPosition
    recoverable: bool
    recovered: bool | None
    publications: list[Publication] = field(default_factory=list)
    tail: list[Publication] = field(default_factory=list)
    join_presence: bool = False


@dataclass(frozen=True, slots=True)
class UnsubscribeResult:
    channel: str


@dataclass(frozen=True, slots=True)
class HistoryResult:
    channel: str
    position: StreamPosition
    publications: list[Publication]


@dataclass(frozen=True, slots=True)
class PresenceResult:
    channel: str
    clients: list[PresenceEntry]


@dataclass(frozen=True, slots=True)
class PresenceStatsResult:
    channel: str
    num_clients: int
    num_users: int


@dataclass(frozen=True, slots=True)
class PingResult:
    pass


@dataclass(frozen=True, slots=True)
class PublishResult:
    channel: str
    position: StreamPosition


Result = (
    AuthenticateResult
    | RefreshResult
    | SubscribeResult
    | UnsubscribeResult
    | HistoryResult
    | PresenceResult
    | PresenceStatsResult
    | PingResult
    | PublishResult
)
