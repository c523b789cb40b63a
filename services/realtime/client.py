"""What the session and the registry need from a connection and from its principal.

Transports (``handlers/realtime/transport.py`` for WebSockets) implement :class:`Client`; the
token service's principal satisfies :class:`Identity`. Both are structural protocols, so this
package never imports the aiohttp side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pubsub.broker import StreamPosition
from services.realtime.errors import Disconnect


class Identity(Protocol):
    """An authenticated caller (``services.auth.principal.Principal`` in practice)."""

    @property
    def user_id(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def expires_at(self) -> float:
        """The token's expiry as a Unix time."""
        ...

    @property
    def is_service(self) -> bool:
        """A trusted backend (no per-user limits)."""
        ...


class Client(Protocol):
    """One connected client: the hub delivers into it, the session replies through it.

    ``send`` and ``deliver`` queue bytes already framed for the client's transport (by its
    :class:`~services.realtime.wire.Wire`); neither blocks nor raises. ``close`` stops delivery
    at once and closes with the transport's representation of ``disconnect``.
    """

    conn_id: str
    principal: Identity | None
    #: channels the client is subscribed to, in subscribe order (kept by the session, read by
    #: the registry). A tuple, not a set: most connections hold one channel, and thousands of
    #: idle connections each keep it (a one-channel tuple is 48 bytes, a set 216).
    subscriptions: tuple[str, ...]
    closed: bool
    #: called once when the client starts closing (the registry detaches it from the hub)
    on_close: Callable[[Client], None] | None

    def send(self, data: bytes) -> None: ...

    def deliver(self, frame: bytes) -> None: ...

    def lost(self, channel: str, position: StreamPosition) -> None: ...

    def unsubscribed(self, channel: str, code: int, reason: str) -> None:
        """Tell the client the server ended its subscription to ``channel`` (its wire
        protocol's ``unsubscribe`` push)."""

    def close(
        self, disconnect: Disconnect, reason: str, *, flush: bool = False, code: int | None = None
    ) -> None:
        """Close for ``disconnect``; ``code``, when given, is an application's own close code
        (3000-4999) sent instead of the protocol's code for ``disconnect``."""
