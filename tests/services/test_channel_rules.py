"""Channel permission rules: per application, closed by default, privileged callers pass."""

from __future__ import annotations

from pubsub.namespaces import default_namespaces, parse
from services.auth.principal import Principal
from services.channels import names
from services.channels.permissions import ChannelRules


def _user(user_id: str, role: str = "buyer") -> Principal:
    return Principal(user_id, role, None, "t", 0.0)


async def test_user_channels_are_private_and_admins_read_everything() -> None:
    rules = ChannelRules()
    own = parse(names.user("u1"), default_namespaces())
    assert await rules.can_subscribe(_user("u1"), own)
    assert not await rules.can_subscribe(_user("u2"), own)
    assert await rules.can_subscribe(_user("a", "admin"), own)
    assert await rules.can_subscribe(_user("s", "service"), own)


async def test_a_namespace_without_a_rule_is_closed() -> None:
    channel = parse(names.alerts("s1"), default_namespaces())
    assert not await ChannelRules().can_subscribe(_user("u1"), channel)


async def test_rules_belong_to_one_application() -> None:
    async def everyone(principal: Principal, ident: str) -> bool:
        return True

    first, second = ChannelRules(), ChannelRules()
    first.register("alerts", everyone)
    channel = parse(names.alerts("s1"), default_namespaces())
    assert await first.can_subscribe(_user("u1"), channel)
    assert not await second.can_subscribe(_user("u1"), channel)
