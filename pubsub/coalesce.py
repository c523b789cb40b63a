"""Coalescing of identical reads: callers that ask before a read is sent share it.

A burst of subscribes to one channel (thousands of clients reconnecting, a page load opening
the same feed in every tab) each needs the channel's position *read after it registered for
live publications* (the hub's gap-free subscribe). A read already sent may have been answered
before a later caller registered, so it cannot be shared with that caller; a read not sent yet
can. :class:`Coalescer` therefore keeps at most one read per key on its way and one waiting
behind it: every caller that arrives while a read is waiting joins it, and the waiting read is
sent when the one before it finishes. A burst of N callers costs about two reads instead of N,
and no caller gets an answer read before it asked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight(Generic[V]):
    __slots__ = ("sent", "task")

    def __init__(self) -> None:
        #: the read may be on its way: new callers must not join it any more
        self.sent = False
        self.task: asyncio.Task[V]


class Coalescer(Generic[K, V]):
    """Shares one call of ``read()`` per key among the callers that asked before it was sent.

    Calls of one key never overlap: the next one is sent when the previous one finished,
    whatever its outcome. A caller cancelled while waiting does not cancel the shared read.
    Every caller sees the shared read's result or exception.
    """

    def __init__(self) -> None:
        self._newest: dict[K, _Flight[V]] = {}

    def __len__(self) -> int:
        return len(self._newest)

    async def __call__(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """The result of a ``read()`` of ``key`` sent after this call (maybe someone else's)."""
        flight = self._newest.get(key)
        if flight is None or flight.sent:
            previous = None if flight is None else flight.task
            flight = _Flight()
            flight.task = asyncio.ensure_future(self._send(flight, previous, read))
            self._newest[key] = flight
            flight.task.add_done_callback(self._done_callback(key, flight))
        # shield: one caller being cancelled must not cancel the read the others wait for
        return await asyncio.shield(flight.task)

    @staticmethod
    async def _send(
        flight: _Flight[V], previous: asyncio.Task[V] | None, read: Callable[[], Awaitable[V]]
    ) -> V:
        if previous is not None and not previous.done():
            await asyncio.wait((previous,))  # its outcome belongs to its own callers
        flight.sent = True
        return await read()

    def _done_callback(self, key: K, flight: _Flight[V]) -> Callable[[asyncio.Task[V]], None]:
        def done(task: asyncio.Task[V]) -> None:
            if self._newest.get(key) is flight:
                del self._newest[key]
            if not task.cancelled():
                # every caller may have gone: the exception is theirs, not the loop's to log
                with contextlib.suppress(BaseException):
                    task.exception()

        return done
