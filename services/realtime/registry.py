"""Every connected client of this process, by id and by user, and cluster-wide control.

``disconnect_user`` goes through the broker's control channel, so a logout closes the user's
connections on every node, not only this one. The same channel carries access changes
(:mod:`services.channels.revocation`): the registry re-checks, or ends, the subscriptions of
its local sessions, and :meth:`ConnectionRegistry.recheck_forever` re-checks every session
periodically so that a missed message cannot leave access open for long. Clients are known
through the :class:`~services.realtime.client.Client` protocol, whatever their transport and
wire protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Coroutine
from typing import Any, Protocol

from pubsub.hub import Hub
from services.channels.revocation import RECHECK, UNSUBSCRIBE
from services.realtime.client import Client
from services.realtime.errors import UNSUBSCRIBE_SERVER, UNSUBSCRIBE_SERVER_REASON, Disconnect

log = logging.getLogger(__name__)


class Guarded(Protocol):
    """A client's session, as far as access changes are concerned
    (:class:`~services.realtime.session.Session`)."""

    @property
    def client(self) -> Client: ...

    async def recheck(
        self, channels: Collection[str] | None = None, *, role: str | None = None
    ) -> int:
        """Check the client's subscriptions (or those of ``channels``) against the channel
        rules again, as ``role`` when given; end the ones no longer allowed."""
        ...

    async def end_subscription(self, channel: str, code: int, reason: str) -> bool:
        """End the subscription to ``channel`` and tell the client why."""
        ...


class ConnectionRegistry:
    """Index of local clients; receives control messages from the hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._by_id: dict[str, Client] = {}
        self._by_user: dict[str, set[Client]] = {}
        self._sessions: dict[str, Guarded] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.accepting = True
        hub.add_control_handler("disconnect_user", self._on_control)
        hub.add_control_handler(RECHECK, self._on_recheck)
        hub.add_control_handler(UNSUBSCRIBE, self._on_unsubscribe)

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, client: Client) -> None:
        self._by_id[client.conn_id] = client
        client.on_close = self._detach

    def track(self, session: Guarded) -> None:
        """Know ``session`` (of an added client) for access re-checks until its client is
        removed."""
        self._sessions[session.client.conn_id] = session

    def _detach(self, client: Client) -> None:
        """Stop delivering to a closing client right away (it may never read again)."""
        for channel in list(client.subscriptions):
            self.hub.unsubscribe(client, channel)
        client.subscriptions = ()

    def bind_user(self, client: Client, user_id: str) -> int:
        """Attach an authenticated client to its user; returns that user's local count."""
        clients = self._by_user.setdefault(user_id, set())
        clients.add(client)
        return len(clients)

    def user_connections(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    def remove(self, client: Client) -> None:
        self._by_id.pop(client.conn_id, None)
        self._sessions.pop(client.conn_id, None)
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

    # -- access changes ----------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _user_sessions(self, user_id: str) -> list[Guarded]:
        found = (self._sessions.get(c.conn_id) for c in self._by_user.get(user_id, ()))
        return [session for session in found if session is not None]

    def _on_recheck(self, message: dict[str, Any]) -> None:
        channel, user_id, role = message.get("channel"), message.get("user_id"), message.get("role")
        if isinstance(channel, str):
            for session in list(self._sessions.values()):
                if channel in session.client.subscriptions:
                    self._spawn(self._recheck(session, (channel,), None))
        if isinstance(user_id, str):
            new_role = role if isinstance(role, str) else None
            for session in self._user_sessions(user_id):
                self._spawn(self._recheck(session, None, new_role))

    def _on_unsubscribe(self, message: dict[str, Any]) -> None:
        user_id, channel = message.get("user_id"), message.get("channel")
        if not isinstance(user_id, str) or not isinstance(channel, str):
            log.warning("malformed unsubscribe control message ignored")
            return
        code = message.get("code")
        if not isinstance(code, int) or isinstance(code, bool):
            code = UNSUBSCRIBE_SERVER
        reason = str(message.get("reason") or UNSUBSCRIBE_SERVER_REASON)
        for session in self._user_sessions(user_id):
            if channel in session.client.subscriptions:
                self._spawn(session.end_subscription(channel, code, reason))

    @staticmethod
    async def _recheck(session: Guarded, channels: Collection[str] | None, role: str | None) -> int:
        try:
            return await session.recheck(channels, role=role)
        except Exception:
            log.exception("subscription re-check failed")
            return 0

    async def recheck_all(self) -> int:
        """Re-check every local session once, one after the other (so the database sees one
        query at a time); the number of subscriptions ended."""
        ended = 0
        for session in list(self._sessions.values()):
            if not session.client.closed:
                ended += await self._recheck(session, None, None)
        return ended

    async def recheck_forever(self, interval: float) -> None:
        """Run :meth:`recheck_all` every ``interval`` seconds (``WS_RECHECK_SECONDS``): the
        bound on how long access lost without an announcement keeps a subscription open."""
        while True:
            await asyncio.sleep(interval)
            await self.recheck_all()

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
