"""A per-address cap on WebSocket sockets that have not authenticated yet.

A socket costs memory and a task from its upgrade on, but proves who it is only with its first
command, up to ``WS_AUTH_TIMEOUT`` later. Without a cap one address could open thousands of
such half-open sessions and hold each for the whole timeout. :class:`UnauthenticatedSockets`
admits at most ``limit`` of them per client address; the upgrade handler asks for a
:class:`Ticket` before upgrading (refusing with 429 when there is none), attaches the
connection to it and releases it when the connection ends.

A socket stops counting as soon as it has authenticated. Rather than being told (which would
tie this to the command loop), the counter asks the ``authenticated`` predicate about the
attached sockets whenever an address reaches its limit, and drops those that have. The answer
is therefore always exact at the moment it matters, and normal admissions stay O(1).

No aiohttp here: the handler passes the client address (``handlers.client_ip``) and the socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Ticket(Generic[T]):
    """One admitted socket of ``address``; counts until released or authenticated."""

    __slots__ = ("_owner", "address", "subject")

    def __init__(self, owner: UnauthenticatedSockets[T], address: str) -> None:
        self._owner: UnauthenticatedSockets[T] | None = owner
        self.address = address
        #: the socket, once the upgrade has made one; until then the ticket counts as pending
        self.subject: T | None = None

    def attach(self, subject: T) -> None:
        """Bind the upgraded socket, whose authentication then decides whether it counts."""
        self.subject = subject

    def release(self) -> None:
        """The socket is gone (or never came to be); idempotent."""
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._discard(self)


class UnauthenticatedSockets(Generic[T]):
    """At most ``limit`` unauthenticated sockets per client address (one process)."""

    def __init__(self, limit: int, authenticated: Callable[[T], bool]) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._authenticated = authenticated
        self._pending: dict[str, set[Ticket[T]]] = {}

    def admit(self, address: str) -> Ticket[T] | None:
        """A ticket for one more socket from ``address``, or ``None`` when it is at the limit."""
        tickets = self._pending.get(address)
        if tickets is not None and len(tickets) >= self.limit:
            self._prune(tickets)
            if len(tickets) >= self.limit:
                return None
        ticket = Ticket(self, address)
        self._pending.setdefault(address, set()).add(ticket)
        return ticket

    def pending(self, address: str) -> int:
        """How many sockets of ``address`` have not authenticated (for tests and metrics)."""
        tickets = self._pending.get(address)
        if not tickets:
            return 0
        self._prune(tickets)
        return len(tickets)

    def _prune(self, tickets: set[Ticket[T]]) -> None:
        done = [t for t in tickets if t.subject is not None and self._authenticated(t.subject)]
        for ticket in done:
            ticket.release()

    def _discard(self, ticket: Ticket[T]) -> None:
        tickets = self._pending.get(ticket.address)
        if tickets is None:
            return
        tickets.discard(ticket)
        if not tickets:
            del self._pending[ticket.address]
