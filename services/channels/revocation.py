"""Telling every node that access to channels changed, so live subscriptions follow.

Permissions are checked when a client subscribes; after that, whatever removes access must say
so here. The messages go through the hub's control channel to every node, where the
connection registry (:mod:`services.realtime.registry`) re-checks or ends the subscriptions it
holds and pushes ``unsubscribe`` to the clients that lost access:

* :func:`channel_changed`: who may read ``channel`` changed (strategy unshared or deleted,
  request deleted...): every node re-checks the channel's local subscribers against the rules;
* :func:`user_changed`: something about a user changed (role): every node re-checks that user's
  subscriptions, with the new role;
* :func:`unsubscribe_user`: end one user's subscription to one channel, no questions asked
  (the server API's ``unsubscribe``).

The first two are best effort: the change is already committed, so a broker outage is logged
and the periodic re-check (``WS_RECHECK_SECONDS``) ends the access instead.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from pubsub.broker import BrokerError

log = logging.getLogger(__name__)

#: control op: re-check subscriptions (``channel``: its subscribers; ``user_id``: that user's,
#: with ``role`` when it changed)
RECHECK = "recheck"
#: control op: end ``user_id``'s subscription to ``channel`` with ``code`` and ``reason``
UNSUBSCRIBE = "unsubscribe"


class ControlPublisher(Protocol):
    """The hub, as far as access changes are concerned."""

    async def publish_control(self, op: str, fields: dict[str, Any]) -> None: ...


async def _best_effort(hub: ControlPublisher | None, fields: dict[str, Any]) -> None:
    if hub is None:
        return
    try:
        await hub.publish_control(RECHECK, fields)
    except BrokerError:
        # Committed already: the periodic re-check catches up (docs/security.md).
        log.warning("access change not announced: broker unavailable", extra=fields)


async def channel_changed(hub: ControlPublisher | None, channel: str) -> None:
    """Who may read ``channel`` changed: re-check its subscribers on every node."""
    await _best_effort(hub, {"channel": channel})


async def user_changed(hub: ControlPublisher | None, user_id: str, *, role: str | None) -> None:
    """``user_id``'s rights changed (``role``: the new role): re-check the user's subscriptions
    on every node."""
    fields: dict[str, Any] = {"user_id": user_id}
    if role is not None:
        fields["role"] = role
    await _best_effort(hub, fields)


async def unsubscribe_user(
    hub: ControlPublisher, user_id: str, channel: str, code: int, reason: str
) -> None:
    """End ``user_id``'s subscription to ``channel`` on every node; raises
    :class:`~pubsub.broker.BrokerError` when the message could not be sent."""
    await hub.publish_control(
        UNSUBSCRIBE, {"user_id": user_id, "channel": channel, "code": code, "reason": reason}
    )
