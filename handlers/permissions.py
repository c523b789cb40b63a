"""Who may subscribe to which channel (``can_subscribe``), checked on every subscribe,
recovery and history read.

* admins and trusted services: every channel;
* ``user:{id}``: only that user.

Other namespaces are granted by the rules registered in :data:`RULES` by the modules that own
the data behind them (requests, analyses, alerts).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from handlers.principal import Principal

Rule = Callable[[web.Application, Principal, str], Awaitable[bool]]

#: namespace -> rule(app, principal, identifier)
RULES: dict[str, Rule] = {}


async def _user_rule(app: web.Application, principal: Principal, ident: str) -> bool:
    return principal.user_id == ident


RULES["user"] = _user_rule


def register(namespace: str, rule: Rule) -> None:
    """Install the permission rule for ``namespace``."""
    RULES[namespace] = rule


async def can_subscribe(app: web.Application, principal: Principal, channel: str) -> bool:
    """Whether ``principal`` may read ``channel`` (a valid channel name)."""
    if principal.is_privileged:
        return True
    namespace, _, ident = channel.partition(":")
    rule = RULES.get(namespace)
    if rule is None:
        return False
    return await rule(app, principal, ident)
