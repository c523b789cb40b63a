"""The permission rules of every namespace the service defines, wired in one place."""

from __future__ import annotations

import asyncpg

from services.alerts.access import alerts_rule
from services.analysis.access import analysis_rule
from services.channels.permissions import ChannelRules
from services.marketplace.access import proposals_rule


def channel_rules(pool: asyncpg.Pool) -> ChannelRules:
    """Rules for ``user``, ``proposals``, ``alerts`` and ``analysis`` over ``pool``."""
    rules = ChannelRules()
    rules.register("proposals", proposals_rule(pool))
    rules.register("alerts", alerts_rule(pool))
    rules.register("analysis", analysis_rule(pool))
    return rules
