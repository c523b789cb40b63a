"""Every connected client of this process, by id and by user, and cluster-wide control.

``disconnect_user`` goes through the broker's control channel, so a logout closes the user's
connections on every node, not only this one. Clients are known through the
:class:`~services.realtime.client.Client` protocol, whatever their transport and wire protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pubsub.hub import Hub
from services.realtime.client import Client
from services.realtime.errors import Disconnect

log = logging.getLogger(__name__)


class ConnectionRegistry:
    """Index of local clients; receives control messages from the hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._by_id: dict[str, Client] = {}
        self._by_user: dict[str, set[Client]] = {}
        self.accepting = True
        hub.add_control_handler("disconnect_user", self._on_control)

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, client: Client) -> None:
        self._by_id[client.conn_id] = client
        client.on_close = self._detach

    def _detach(self, client: Client) -> None:
        """Stop delivering to a closing client right away (it may never read again)."""
        for channel in list(client.subscriptions):
            self.hub.unsubscribe(client, channel)
        client.subscriptions.clear()

    def bind_user(self, client: Client, user_id: str) -> int:
        """Attach an authenticated client to its user; returns that user's local count."""
        clients = self._by_user.setdefault(user_id, set())
        clients.add(client)
        return len(clients)

    def user_connections(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    def remove(self, client: Client) -> None:
        self._by_id.pop(client.conn_id, None)
        if client.principal is not None:
            clients = self._by_user.get(client.principal.user_id)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self._by_user[client.principal.user_id]
        self._detach(client)

    def connections(self) -> list[Client]:
        return list(self._by_id.values())

    async def disconnect_user(
        self, user_id: str, disconnect: Disconnect, reason: str, *, code: int | None = None
    ) -> None:
        """Close every connection of ``user_id`` on every node, with the protocol's code for
        ``disconnect`` or with ``code`` (an application's own, 3000-4999) when given."""
        message: dict[str, Any] = {
            "user_id": user_id,
            "disconnect": disconnect.value,
            "reason": reason,
        }
        if code is not None:
            message["code"] = code
        await self.hub.publish_control("disconnect_user", message)

    def close_user_local(
        self, user_id: str, disconnect: Disconnect, reason: str, *, code: int | None = None
    ) -> int:
        clients = list(self._by_user.get(user_id, ()))
        for client in clients:
            client.close(disconnect, reason, flush=True, code=code)
        return len(clients)

    def _on_control(self, message: dict[str, Any]) -> None:
        try:
            disconnect = Disconnect(message.get("disconnect"))
        except ValueError:
            # From a node of an older version (it sent a close code): closing is the safe side.
            disconnect = Disconnect.FORBIDDEN
        code = message.get("code")
        self.close_user_local(
            str(message.get("user_id")),
            disconnect,
            str(message.get("reason", "")),
            code=code if isinstance(code, int) and 3000 <= code <= 4999 else None,
        )

    def close_expired(self, now: float | None = None) -> int:
        """Close connections whose token expired without an in-band ``refresh``."""
        now = time.time() if now is None else now
        expired = [
            client
            for clients in self._by_user.values()
            for client in clients
            if client.principal is not None and client.principal.expires_at <= now
        ]
        for client in expired:
            client.close(Disconnect.TOKEN_EXPIRED, "token expired", flush=True)
        return len(expired)

    async def expire_forever(self, interval: float = 1.0) -> None:
        """Run :meth:`close_expired` every ``interval`` seconds. One sweep for all
        connections costs less memory than a timer per connection, for at most ``interval``
        seconds of lateness."""
        while True:
            await asyncio.sleep(interval)
            self.close_expired()

    def close_all(
        self, disconnect: Disconnect = Disconnect.SHUTDOWN, reason: str = "server shutting down"
    ) -> int:
        """Stop accepting and close every connection (graceful shutdown)."""
        self.accepting = False
        clients = self.connections()
        for client in clients:
            client.close(disconnect, reason, flush=True)
        return len(clients)
