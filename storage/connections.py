"""Pooled connections released without a round trip unless they hold session state.

asyncpg's default release sends
``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every release: a
full round trip per request, as costly as a webhook's insert. Our pool skips it unless the
connection was marked with :func:`mark_session_state`: code that takes a *session* advisory
lock, runs ``LISTEN`` or sets a session variable on a pooled connection must call it (the
outbox relay and the migrations do; :meth:`ArenaConnection.add_listener` marks by itself).
asyncpg still rolls back an open transaction and drops listener callbacks on every release;
transaction-scoped locks, ``SET LOCAL`` and cursors end with the transaction anyway.
"""

from __future__ import annotations

from typing import Any

import asyncpg


class ArenaConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection that remembers whether it holds session state to reset."""

    __slots__ = ("session_state",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: True once something left session state (locks, LISTEN, SET) to reset on release
        self.session_state = False

    def mark_session_state(self) -> None:
        """See :func:`mark_session_state`."""
        self.session_state = True

    async def add_listener(self, channel: str, callback: Any) -> None:
        """``LISTEN``, and mark the connection for a full reset on release."""
        self.session_state = True
        await super().add_listener(channel, callback)

    async def remove_listener(self, channel: str, callback: Any) -> None:
        """``UNLISTEN``; on a connection that is closed already, finish closing it instead.

        asyncpg's ``remove_listener`` does nothing on a closed connection, and the callback
        stays registered. A connection can be closed and not cleaned up yet: when a query
        finds the protocol broken (the server's ``FATAL`` for a terminated backend, or a
        dropped database, read before the connection's end), asyncpg aborts it without its
        cleanup. Releasing it with a callback left makes the pool warn *before* it releases
        the connection, and where warnings are errors (``-W error``, our tests) that warning
        escapes ``Pool.release`` and the connection stays acquired for good: ``Pool.close``
        then waits for it forever. :meth:`terminate` does the cleanup now (callbacks dropped,
        the connection given back to its pool), so the release has nothing left to do.
        """
        if self.is_closed():
            self.terminate()
            return
        await super().remove_listener(channel, callback)


def mark_session_state(conn: asyncpg.Connection) -> None:
    """Have the pool run the full reset query when ``conn`` is released: call it before taking
    a session advisory lock, ``LISTEN`` or ``SET`` on a pooled connection. A no-op for
    connections not made by :func:`create_pool` (they are not pooled here)."""
    # ``conn`` is usually the pool's proxy, which forwards attributes but is no subclass.
    mark = getattr(conn, "mark_session_state", None)
    if mark is not None:
        mark()


async def reset_on_release(conn: asyncpg.Connection) -> None:
    """The pool's release hook (after asyncpg rolled back any open transaction): the full
    reset only for connections marked by :func:`mark_session_state`."""
    if isinstance(conn, ArenaConnection) and conn.session_state:
        query = conn.get_reset_query()
        if query:
            await conn.execute(query)
        conn.session_state = False
