"""Domain errors: what went wrong, in the application's words, with no HTTP status.

::

    DomainError
    ├── Invalid            the input breaks a rule of the domain (``errors`` by field)
    ├── Unsupported        the content's type or encoding is not one the service accepts
    ├── Unauthenticated    credentials (a signature, a token) could not be verified
    ├── Forbidden          the caller is known but may not do this
    ├── InvalidState       the resource's state does not allow the change right now
    ├── RateLimited        too many attempts; ``retry_after`` seconds until the next may pass
    └── Unavailable        a dependency (database, broker, limiter) is down; retry later

``storage.errors`` (``NotFound``, ``Conflict``, ``StaleVersion``) pass through services
unchanged. ``handlers.middlewares.error_envelope`` maps every one of them to the JSON error
envelope (400, 415, 401, 403, 409, 429, 503; 404, 409, 412), and the WebSocket session maps
them to error replies, so a service never decides how a failure looks on the wire.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base class of the application's errors. ``message`` is safe to show to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(DomainError):
    """The input is well-formed but breaks a domain rule; ``errors`` maps dotted field paths
    to messages."""

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


class Unsupported(DomainError):
    """The content's type or encoding is not one the service accepts."""


class Unauthenticated(DomainError):
    """The caller's credentials (a request signature, a token) could not be verified."""


class Forbidden(DomainError):
    """The caller may not do this (their role or relation to the resource forbids it)."""


class InvalidState(DomainError):
    """The resource's current state refuses the change (a closed request, a final status)."""


class RateLimited(DomainError):
    """Too many attempts; the next may pass in ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A dependency is down right now; the caller may retry."""
