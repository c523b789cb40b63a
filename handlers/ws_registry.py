"""All WebSocket connections of this process, by id and by user, and cluster-wide control.

``disconnect_user`` goes through the broker's control channel, so a logout closes the user's
connections on every node, not only this one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from handlers.ws_connection import (
    CLOSE_GOING_AWAY,
    CLOSE_UNAUTHENTICATED,
    Connection,
    Flusher,
)
from pubsub.hub import Hub

log = logging.getLogger(__name__)


class ConnectionRegistry:
    """Index of local connections; receives control messages from the hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.flusher = Flusher()
        self._by_id: dict[str, Connection] = {}
        self._by_user: dict[str, set[Connection]] = {}
        self.accepting = True
        hub.add_control_handler("disconnect_user", self._on_control)

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, conn: Connection) -> None:
        self._by_id[conn.conn_id] = conn
        conn.on_close = self._detach

    def _detach(self, conn: Connection) -> None:
        """Stop delivering to a closing connection right away (it may never read again)."""
        for channel in list(conn.subscriptions):
            self.hub.unsubscribe(conn, channel)
        conn.subscriptions.clear()

    def bind_user(self, conn: Connection, user_id: str) -> int:
        """Attach an authenticated connection to its user; returns that user's local count."""
        conns = self._by_user.setdefault(user_id, set())
        conns.add(conn)
        return len(conns)

    def user_connections(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    def remove(self, conn: Connection) -> None:
        self._by_id.pop(conn.conn_id, None)
        if conn.principal is not None:
            conns = self._by_user.get(conn.principal.user_id)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self._by_user[conn.principal.user_id]
        self._detach(conn)

    def connections(self) -> list[Connection]:
        return list(self._by_id.values())

    async def disconnect_user(self, user_id: str, code: int, reason: str) -> None:
        """Close every connection of ``user_id`` on every node."""
        message = {"user_id": user_id, "code": code, "reason": reason}
        await self.hub.publish_control("disconnect_user", message)

    def close_user_local(self, user_id: str, code: int, reason: str) -> int:
        conns = list(self._by_user.get(user_id, ()))
        for conn in conns:
            conn.close_soon(code, reason, flush=True)
        return len(conns)

    def _on_control(self, message: dict[str, Any]) -> None:
        self.close_user_local(
            str(message.get("user_id")),
            int(message.get("code", 4003)),
            str(message.get("reason", "")),
        )

    def close_expired(self, now: float | None = None) -> int:
        """Close connections whose token expired without an in-band ``refresh``."""
        now = time.time() if now is None else now
        expired = [
            conn
            for conns in self._by_user.values()
            for conn in conns
            if conn.principal is not None and conn.principal.expires_at <= now
        ]
        for conn in expired:
            conn.close_soon(CLOSE_UNAUTHENTICATED, "token expired", flush=True)
        return len(expired)

    async def expire_forever(self, interval: float = 1.0) -> None:
        """Run :meth:`close_expired` every ``interval`` seconds. One sweep for all
        connections costs less memory than a timer per connection, for at most ``interval``
        seconds of lateness."""
        while True:
            await asyncio.sleep(interval)
            self.close_expired()

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> int:
        """Stop accepting and close every connection (graceful shutdown)."""
        self.accepting = False
        conns = self.connections()
        for conn in conns:
            conn.close_soon(code, reason, flush=True)
        return len(conns)
