"""The one place channel names are built. Every namespace's name builder lives here, so a
grep for ``names.alerts(`` finds every publisher of an alert feed and no module spells
``f"alerts:{...}"`` itself. Storage never knows channel names."""

from __future__ import annotations

from uuid import UUID

Ident = str | UUID


def user(user_id: Ident) -> str:
    """``user:{id}``: everything addressed to one user (their proposals, requests, analyses)."""
    return f"user:{user_id}"


def proposals(request_id: Ident) -> str:
    """``proposals:{request_id}``: the room of one request (summaries only: rivals read it)."""
    return f"proposals:{request_id}"


def alerts(strategy_id: Ident) -> str:
    """``alerts:{strategy_id}``: the live alert feed of one strategy."""
    return f"alerts:{strategy_id}"


def analysis(analysis_id: Ident) -> str:
    """``analysis:{id}``: the token stream of one AI analysis."""
    return f"analysis:{analysis_id}"
