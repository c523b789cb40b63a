"""Offline answers to questions on hand-made data: what is named, ties, missing facts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from services.analysis.offline_answer import answer
from storage.analyses import AnalysisInput, Answer, ProposalFacts, RequestFacts, Requirement

REQUIREMENTS = (Requirement("SSO", "", "must"), Requirement("Exports", "", "should"))


def _proposal(email: str, price: str, sso: str, currency: str = "EUR") -> ProposalFacts:
    return ProposalFacts(
        uuid.uuid4(),
        uuid.uuid4(),
        email,
        Decimal(price),
        currency,
        "summary",
        (Answer("SSO", "", sso),),
        "submitted",
        datetime(2026, 1, 1, tzinfo=UTC),
    )


def _data(*proposals: ProposalFacts, budget: str | None = "1000") -> AnalysisInput:
    request = RequestFacts(
        uuid.uuid4(),
        uuid.uuid4(),
        "Ticketing",
        "",
        REQUIREMENTS,
        None if budget is None else Decimal(budget),
        "EUR",
        datetime(2027, 3, 1, tzinfo=UTC),
        "open",
    )
    return AnalysisInput(request, proposals)


def test_vendors_named_by_company_are_compared() -> None:
    data = _data(
        _proposal("sales@acme.io", "900", "full"),
        _proposal("bids@globex.com", "700", "none"),
        _proposal("x@initech.org", "800", "partial"),
    )
    text = answer(data, "How does Acme stack up against Globex?")
    assert "- [P1] sales@acme.io: 900.00 EUR" in text
    assert "- [P2] bids@globex.com: 700.00 EUR" in text
    assert "[P3]" not in text
    assert "700.00 EUR (price rank 1 of 3; 30% under budget), 0% weighted coverage, " in text
    assert "misses must-have [R1]" in text


def test_ties_other_currencies_and_the_deadline() -> None:
    data = _data(
        _proposal("a@one.io", "500", "full"),
        _proposal("b@two.io", "500", "partial"),
        _proposal("c@three.io", "100", "full", currency="USD"),
    )
    text = answer(data, "Cheapest offer? And when is it due?")
    assert "The cheapest open proposals are tied: [P1] a@one.io, [P2] b@two.io" in text
    assert "Not comparable (another currency than EUR): [P3] c@three.io at 100.00 USD." in text
    assert "The deadline is 2027-03-01." in text


def test_without_budget_or_proposals_the_answer_says_so() -> None:
    assert "The request states no budget." in answer(_data(budget=None), "What is the budget?")
    text = answer(_data(), "Who is cheapest?")
    assert "No open proposal has a price comparable with the request's yet." in text
    text = answer(_data(), "Which requirements are missing?")
    assert "No open proposal to score against the requirements yet." in text
