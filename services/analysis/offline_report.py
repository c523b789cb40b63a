"""A deterministic analysis computed from the stored data, used when no API key is configured.

Same input, same text: prices are ranked, requirement coverage is scored (``full`` = 1,
``partial`` = 0.5, ``none`` or unanswered = 0, weighted ``must`` 3, ``should`` 2, ``nice`` 1), and
the recommendation maximises ``0.7 * coverage + 0.3 * (cheapest price / price)`` among the open
proposals that leave no must-have unanswered. Labels (``R1``, ``P1``) are those of
:mod:`services.analysis.prompt`, so the report cites the data the same way Claude is asked to.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from services.analysis.prompt import money, proposal_label, requirement_label
from storage.analyses import AnalysisInput, ProposalFacts, RequestFacts

WEIGHTS = {"must": 3, "should": 2, "nice": 1}
SCORES = {"full": 1.0, "partial": 0.5, "none": 0.0}
CLOSED = ("withdrawn", "rejected")
COVERAGE_WEIGHT = 0.7
PRICE_WEIGHT = 0.3


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the report knows about one proposal."""

    label: str
    proposal: ProposalFacts
    #: requirement label -> compliance (``full``, ``partial``, ``none``; ``none`` if unanswered)
    compliance: dict[str, str]
    coverage: float  # 0..1, weighted
    missing_musts: tuple[str, ...]

    @property
    def open(self) -> bool:
        return self.proposal.status not in CLOSED


def assess(request: RequestFacts, label: str, proposal: ProposalFacts) -> Assessment:
    """Score ``proposal`` against the requirements of ``request``."""
    answers = {answer.requirement: answer.compliance for answer in proposal.answers}
    compliance: dict[str, str] = {}
    total = earned = 0.0
    missing: list[str] = []
    for index, req in enumerate(request.requirements):
        rlabel = requirement_label(index)
        level = answers.get(req.name, "none")
        compliance[rlabel] = level
        weight = WEIGHTS[req.priority]
        total += weight
        earned += weight * SCORES[level]
        if req.priority == "must" and level == "none":
            missing.append(rlabel)
    coverage = earned / total if total else 1.0
    return Assessment(label, proposal, compliance, coverage, tuple(missing))


def pct(value: float) -> str:
    """``0.833`` as ``83%``."""
    return f"{round(value * 100)}%"


def budget_note(price: Decimal, currency: str, request: RequestFacts) -> str:
    """How ``price`` compares with the request's budget (``31% under budget``)."""
    if request.budget is None:
        return "no budget stated"
    if currency != request.currency:
        return f"in {currency}, not comparable with the {request.currency} budget"
    if request.budget == 0:
        return "budget is zero"
    delta = (price - request.budget) / request.budget
    if delta <= 0:
        return f"{pct(float(-delta))} under budget"
    return f"{pct(float(delta))} over budget"


def price_order(request: RequestFacts, items: list[Assessment]) -> list[Assessment]:
    """Cheapest first; prices in another currency than the request's after the others."""
    # Prices in the request's currency first: other currencies cannot be ranked against them.
    return sorted(
        items,
        key=lambda a: (a.proposal.currency != request.currency, a.proposal.price, a.label),
    )


def price_scores(request: RequestFacts, items: list[Assessment]) -> dict[str, float]:
    """Label -> cheapest price / price (1 for the cheapest, 0 when not comparable)."""
    same = [a.proposal.price for a in items if a.proposal.currency == request.currency]
    cheapest = min(same) if same else None
    scores: dict[str, float] = {}
    for a in items:
        if cheapest is None or a.proposal.currency != request.currency:
            scores[a.label] = 0.0
        elif a.proposal.price == 0:
            scores[a.label] = 1.0
        else:
            scores[a.label] = float(cheapest / a.proposal.price)
    return scores


def rank(
    request: RequestFacts, candidates: list[Assessment], eligible: list[Assessment]
) -> list[tuple[Assessment, float]]:
    """``eligible`` proposals best first with their score; price scores are relative to the
    cheapest of ``candidates``."""
    prices = price_scores(request, candidates)
    scored = [(a, COVERAGE_WEIGHT * a.coverage + PRICE_WEIGHT * prices[a.label]) for a in eligible]
    return sorted(scored, key=lambda item: (-item[1], item[0].proposal.price, item[0].label))


def _ranking_section(request: RequestFacts, items: list[Assessment]) -> list[str]:
    lines = ["## Price ranking", ""]
    if not items:
        return [*lines, "No proposals have been submitted yet.", ""]
    for rank, a in enumerate(price_order(request, items), start=1):
        p = a.proposal
        status = "" if a.open else f" ({p.status}, not considered)"
        note = budget_note(p.price, p.currency, request)
        lines.append(f"{rank}. [{a.label}] {p.vendor_email}: {money(p.price, p.currency)}, {note}")
        lines[-1] += status
    return [*lines, ""]


def _coverage_section(request: RequestFacts, items: list[Assessment]) -> list[str]:
    lines = ["## Requirement coverage", ""]
    if not request.requirements:
        return [*lines, "The request states no requirements, so coverage cannot be scored.", ""]
    for a in sorted(items, key=lambda a: (-a.coverage, a.label)):
        groups: dict[str, list[str]] = {"full": [], "partial": [], "none": []}
        for rlabel, level in a.compliance.items():
            groups[level].append(f"[{rlabel}]")
        parts = [f"{level}: {', '.join(refs)}" for level, refs in groups.items() if refs]
        lines.append(f"- [{a.label}] {pct(a.coverage)} weighted coverage ({'; '.join(parts)})")
    return [*lines, ""]


def _missing_section(request: RequestFacts, items: list[Assessment]) -> list[str]:
    lines = ["## Missing requirements", ""]
    if not request.requirements:
        return [*lines, "None: no requirements are stated.", ""]
    unmet = [
        f"[{requirement_label(i)}] {req.name} ({req.priority})"
        for i, req in enumerate(request.requirements)
        if not any(a.compliance[requirement_label(i)] == "full" for a in items if a.open)
    ]
    if unmet:
        lines.append("No open proposal fully meets: " + "; ".join(unmet) + ".")
    else:
        lines.append("Every requirement is fully met by at least one open proposal.")
    for a in items:
        if a.missing_musts:
            refs = ", ".join(f"[{r}]" for r in a.missing_musts)
            lines.append(f"- [{a.label}] leaves must-have {refs} unanswered or unmet.")
    return [*lines, ""]


def _recommendation_section(request: RequestFacts, items: list[Assessment]) -> list[str]:
    lines = ["## Recommendation", ""]
    candidates = [a for a in items if a.open]
    if not candidates:
        return [*lines, "No open proposal to recommend yet.", ""]
    eligible = [a for a in candidates if not a.missing_musts]
    if not eligible:
        lines.append("Every open proposal misses at least one must-have requirement; ranking all.")
        eligible = candidates
    ranking = rank(request, candidates, eligible)
    scored = [a for a, _ in ranking]
    best, score = ranking[0]
    p = best.proposal
    lines.append(f"Recommended: [{best.label}] {p.vendor_email} (score {score:.2f}).")
    lines.append("")
    lines.append("Reasons:")
    lines.append(f"- {pct(best.coverage)} weighted requirement coverage.")
    order = [a.label for a in price_order(request, candidates)]
    lines.append(
        f"- Price {money(p.price, p.currency)}, rank {order.index(best.label) + 1} of "
        f"{len(order)}; {budget_note(p.price, p.currency, request)}."
    )
    if request.requirements and not best.missing_musts:
        lines.append("- Answers every must-have requirement.")
    if len(scored) > 1:
        runner_up = scored[1]
        lines.append(
            f"- Ahead of [{runner_up.label}] ({pct(runner_up.coverage)} coverage, "
            f"{money(runner_up.proposal.price, runner_up.proposal.currency)})."
        )
    risks = [
        f"[{rlabel}] is only partially met"
        for rlabel, level in best.compliance.items()
        if level == "partial"
    ]
    risks += [f"must-have [{r}] is not met" for r in best.missing_musts]
    if request.budget is not None and p.currency == request.currency and p.price > request.budget:
        risks.append("the price is over budget")
    lines.append("")
    lines.append("Risks: " + ("; ".join(risks) + "." if risks else "none found in the data."))
    return [*lines, ""]


def compare_proposals(data: AnalysisInput) -> str:
    """Price ranking, coverage, missing requirements and a recommendation, in Markdown."""
    request = data.request
    items = [assess(request, proposal_label(i), p) for i, p in enumerate(data.proposals)]
    lines = [
        f"# Comparison of proposals for {request.title}",
        "",
        f"{len(items)} proposal(s) against {len(request.requirements)} requirement(s); "
        f"budget {money(request.budget, request.currency)}.",
        "",
    ]
    for section in (_ranking_section, _coverage_section, _missing_section):
        lines.extend(section(request, items))
    lines.extend(_recommendation_section(request, items))
    return "\n".join(lines).rstrip() + "\n"


def summarize_request(data: AnalysisInput) -> str:
    """Goal, requirements by priority, budget and timing, and proposals so far, in Markdown."""
    request = data.request
    description = " ".join(request.description.split())
    if len(description) > 400:
        description = description[:400].rsplit(" ", 1)[0] + " ..."
    lines = [f"# Summary of {request.title}", "", "## Goal", ""]
    lines.append(description or "The request has no description beyond its title.")
    lines.extend(["", "## Requirements", ""])
    if not request.requirements:
        lines.append("No requirements are stated.")
    for priority in ("must", "should", "nice"):
        refs = [
            f"[{requirement_label(i)}] {req.name}"
            for i, req in enumerate(request.requirements)
            if req.priority == priority
        ]
        if refs:
            lines.append(f"- {priority}: " + "; ".join(refs))
    deadline = request.deadline.date().isoformat() if request.deadline else "not stated"
    lines.extend(["", "## Budget and timing", ""])
    lines.append(f"Budget {money(request.budget, request.currency)}; deadline {deadline}; ")
    lines[-1] += f"status {request.status}."
    lines.extend(["", "## Proposals so far", ""])
    items = [assess(request, proposal_label(i), p) for i, p in enumerate(data.proposals)]
    open_items = [a for a in items if a.open]
    lines.append(f"{len(items)} proposal(s), {len(open_items)} open.")
    same = [a for a in open_items if a.proposal.currency == request.currency]
    if same:
        low = min(same, key=lambda a: (a.proposal.price, a.label))
        high = max(same, key=lambda a: (a.proposal.price, a.label))
        lines.append(
            f"Prices range from {money(low.proposal.price, request.currency)} [{low.label}] "
            f"to {money(high.proposal.price, request.currency)} [{high.label}]."
        )
    questions = [
        f"[{requirement_label(i)}] {req.name}"
        for i, req in enumerate(request.requirements)
        if open_items and not any(a.compliance[requirement_label(i)] == "full" for a in open_items)
    ]
    if questions:
        lines.append("Open questions: no open proposal fully meets " + "; ".join(questions) + ".")
    return "\n".join(lines).rstrip() + "\n"


REPORTS = {"compare_proposals": compare_proposals, "summarize_request": summarize_request}


def report(kind: str, data: AnalysisInput) -> str:
    """The offline report of ``kind``; raises ``KeyError`` for an unknown kind."""
    return REPORTS[kind](data)
