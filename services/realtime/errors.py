"""What a command can fail with, and why a connection is closed, independent of the wire.

Codecs turn :class:`CommandError` into their error replies (the ``code`` is our protocol's
string code, other protocols map it) and :class:`Disconnect` into their close codes.
"""

from __future__ import annotations

import enum


class CommandError(Exception):
    """The current command failed; the client gets an error reply with ``code``.

    ``disconnect``, when set, closes the connection right after that reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.disconnect: Disconnect | None = None


class BadRequest(CommandError):
    """Malformed input: not JSON, missing or wrongly typed field."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_request", message)


class UnknownCommand(CommandError):
    def __init__(self, message: str = "unknown command type") -> None:
        super().__init__("unknown_command", message)


class Unauthenticated(CommandError):
    def __init__(self, message: str) -> None:
        super().__init__("unauthenticated", message)


class TokenExpired(Unauthenticated):
    """The token was valid but has expired: a client may fetch a new one and try again (same
    code as :class:`Unauthenticated` in our protocol; Centrifugo's SDKs refresh on it)."""


class AlreadyAuthenticated(CommandError):
    def __init__(self) -> None:
        super().__init__("already_authenticated", "connection is already authenticated")


class InvalidChannel(CommandError):
    def __init__(self, message: str) -> None:
        super().__init__("invalid_channel", message)


class PermissionDenied(CommandError):
    def __init__(self, message: str) -> None:
        super().__init__("permission_denied", message)


class AlreadySubscribed(CommandError):
    def __init__(self) -> None:
        super().__init__("already_subscribed", "already subscribed to this channel")


class NotSubscribed(CommandError):
    def __init__(self) -> None:
        super().__init__("not_subscribed", "not subscribed to this channel")


class LimitExceeded(CommandError):
    def __init__(self, message: str) -> None:
        super().__init__("limit_exceeded", message)


class BrokerUnavailable(CommandError):
    """The broker (Redis) or the presence store cannot be reached; retry later."""

    def __init__(self, message: str = "message broker unavailable") -> None:
        super().__init__("broker_unavailable", message)


class TemporarilyUnavailable(CommandError):
    """The database cannot be reached (a permission rule could not be evaluated); retry later."""

    def __init__(self, message: str = "temporarily unavailable, retry later") -> None:
        super().__init__("temporarily_unavailable", message)


class NotAvailable(CommandError):
    def __init__(self, message: str) -> None:
        super().__init__("not_available", message)


class UnrecoverablePosition(CommandError):
    """A history ``since`` position of another epoch: its offsets mean nothing any more."""

    def __init__(self, message: str = "unrecoverable position") -> None:
        super().__init__("unrecoverable_position", message)


class Disconnect(enum.Enum):
    """Why the server closes a connection; each codec maps it to its own close code."""

    #: the server is shutting down (or a test drops connections): reconnect elsewhere
    SHUTDOWN = "shutdown"
    #: writing to the socket failed
    WRITE_FAILED = "write_failed"
    #: a frame of a kind the protocol does not use (binary frames in a text protocol)
    UNSUPPORTED_DATA = "unsupported_data"
    #: the connection ended without a proper close (e.g. the handler stopped on an error)
    PROTOCOL_ERROR = "protocol_error"
    #: no, late or bad authentication; expired token (get a fresh token and reconnect)
    UNAUTHENTICATED = "unauthenticated"
    #: the token expired without a ``refresh``: the client may reconnect with a new token
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - a reason, not a secret
    #: logged out (the token family was revoked) or forcibly disconnected: do not reconnect
    FORBIDDEN = "forbidden"
    #: the outgoing queue overflowed
    SLOW_CONSUMER = "slow_consumer"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    RATE_LIMITED = "rate_limited"
    #: the client said goodbye and we answer
    NORMAL = "normal"


#: ``unsubscribe`` push code: the client lost access to the channel (strategy unshared, request
#: deleted, role changed...); subscribing again is refused until access is granted again
UNSUBSCRIBE_REVOKED = 4403
UNSUBSCRIBE_REVOKED_REASON = "access to this channel was revoked"
#: ``unsubscribe`` push code: a backend ended the subscription (server API ``unsubscribe``,
#: Centrifugo's "server unsubscribe" code)
UNSUBSCRIBE_SERVER = 2000
UNSUBSCRIBE_SERVER_REASON = "server unsubscribe"
