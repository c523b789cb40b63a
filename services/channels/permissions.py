"""Who may subscribe to which channel: one :class:`ChannelRules` per application, checked on
every subscribe, recovery and history read.

* admins and trusted services: every channel;
* ``user:{id}``: only that user;
* any other namespace: the rule registered for it by the feature that owns the data behind it
  (``services.marketplace.access``, ``services.alerts.access``, ``services.analysis.access``);
  a namespace without a rule is closed.

Rules are per instance (not a module global), so two apps in one process — tests, workers —
never see each other's rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pubsub.namespaces import ChannelName
from services.auth.principal import Principal

#: rule(principal, identifier) -> may read; the identifier is the part after ``namespace:``
Rule = Callable[[Principal, str], Awaitable[bool]]


async def _own_user_channel(principal: Principal, ident: str) -> bool:
    return principal.user_id == ident


class ChannelRules:
    """The permission rule of every namespace of one application."""

    def __init__(self) -> None:
        self._rules: dict[str, Rule] = {"user": _own_user_channel}

    def register(self, namespace: str, rule: Rule) -> None:
        """Install (or replace) the rule for ``namespace``."""
        self._rules[namespace] = rule

    async def can_subscribe(self, principal: Principal, channel: ChannelName) -> bool:
        """Whether ``principal`` may read ``channel`` (an already parsed, valid name)."""
        if principal.is_privileged:
            return True
        rule = self._rules.get(channel.namespace)
        if rule is None:
            return False
        return await rule(principal, channel.ident)
