"""Offline answers to free-form questions (kind ``question``), computed from the stored data.

No language model: the question is matched against a fixed set of topics (keywords, and the
labels, requirement names and vendors it mentions), and each topic found is answered with the
facts that settle it, cited with the labels of :mod:`services.analysis.prompt`::

    cheapest        "cheapest", "lowest price", "least expensive", "best price"
    priciest        "most expensive", "highest price", "priciest"
    budget          "budget", "afford", "spend"
    deadline        "deadline", "due", "when", "date", "timeline"
    coverage        "requirement", "cover", "meet", "support", "comply", "missing",
                    "must-have", or a requirement named (``SSO``) or labelled (``R1``)
    compare         "compare", "versus", "vs", "difference", "better", "between",
                    or two proposals/vendors named
    recommend       "recommend", "best", "choose", "pick", "should we"
    count           "how many", "number of"
    proposal        a proposal labelled (``P2``) or a vendor named (e-mail, its name, its domain)

When no topic is found the answer says so and lists the facts it has. Same data, same
question, same text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from services.analysis.offline_report import (
    Assessment,
    assess,
    budget_note,
    pct,
    price_order,
    rank,
)
from services.analysis.prompt import money, proposal_label, requirement_label
from storage.analyses import AnalysisInput, ProposalFacts, RequestFacts

_TOPICS: dict[str, re.Pattern[str]] = {
    "cheapest": re.compile(
        r"\b(cheap\w*|lowest[- ](price\w*|cost\w*|bid\w*|offer\w*|quote\w*)|least expensive|"
        r"most affordable|best (price|offer|deal)|minimum price)"
    ),
    "priciest": re.compile(
        r"\b(most expensive|priciest|costliest|most costly|highest[- ](price\w*|cost\w*|bid\w*|"
        r"offer\w*|quote\w*))"
    ),
    "budget": re.compile(r"\b(budget\w*|afford\w*|spend\w*)"),
    "deadline": re.compile(r"\b(deadline\w*|due|when|dates?|timeline\w*|time ?frame)\b"),
    "coverage": re.compile(
        r"\b(requirement\w*|cover\w*|meets?|met|meeting|support\w*|compl\w*|missing|"
        r"must[- ]haves?|gaps?)\b"
    ),
    "compare": re.compile(r"\b(compar\w*|versus|vs\.?|differ\w*|better|between)(\W|$)"),
    "recommend": re.compile(
        r"\b(recommend\w*|best\b(?! (price|offer|deal))|choose|choice|pick|select|"
        r"should (we|i)|go with|winner)"
    ),
    "count": re.compile(r"\b(how many|number of)\b"),
}
_PROPOSAL_LABEL = re.compile(r"\bp(\d{1,3})\b")
_REQUIREMENT_LABEL = re.compile(r"\br(\d{1,3})\b")


class _Facts:
    """The request, its assessed proposals, and what the question mentions."""

    def __init__(self, data: AnalysisInput, question: str) -> None:
        self.request: RequestFacts = data.request
        self.items = [
            assess(self.request, proposal_label(i), p) for i, p in enumerate(data.proposals)
        ]
        self.open = [a for a in self.items if a.open]
        self.text = " ".join(question.lower().split())
        self.topics = [name for name, pattern in _TOPICS.items() if pattern.search(self.text)]
        self.proposals = self._mentioned_proposals()
        self.requirements = self._mentioned_requirements()

    def _mentioned_proposals(self) -> list[Assessment]:
        labels = {int(n) for n in _PROPOSAL_LABEL.findall(self.text)}
        found = [a for i, a in enumerate(self.items) if i + 1 in labels]
        for a in self.items:
            if a not in found and any(_mentions(self.text, n) for n in _vendor_names(a.proposal)):
                found.append(a)
        return sorted(found, key=lambda a: int(a.label[1:]))

    def _mentioned_requirements(self) -> list[int]:
        labels = {int(n) for n in _REQUIREMENT_LABEL.findall(self.text)}
        return [
            i
            for i, req in enumerate(self.request.requirements)
            if i + 1 in labels or _mentions(self.text, req.name.lower())
        ]

    def cite(self, a: Assessment) -> str:
        p = a.proposal
        return f"[{a.label}] {p.vendor_email} at {money(p.price, p.currency)}"

    def comparable(self) -> list[Assessment]:
        """Open proposals priced in the request's currency, cheapest first."""
        same = [a for a in self.open if a.proposal.currency == self.request.currency]
        return price_order(self.request, same)


def _mentions(text: str, name: str) -> bool:
    return len(name) >= 2 and re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


def _vendor_names(proposal: ProposalFacts) -> list[str]:
    email = proposal.vendor_email.lower()
    local, _, domain = email.partition("@")
    names = [email, local]
    company = domain.split(".")[0]
    if len(company) >= 3 and company not in ("gmail", "example", "outlook", "yahoo", "hotmail"):
        names.append(company)
    return names


def _uncomparable_note(f: _Facts) -> list[str]:
    other = [a for a in f.open if a.proposal.currency != f.request.currency]
    if not other:
        return []
    refs = ", ".join(f.cite(a) for a in other)
    return [f"Not comparable (another currency than {f.request.currency}): {refs}."]


def _closed_note(f: _Facts) -> list[str]:
    closed = [a for a in f.items if not a.open]
    if not closed:
        return []
    refs = ", ".join(f"[{a.label}] ({a.proposal.status})" for a in closed)
    return [f"Not considered because withdrawn or rejected: {refs}."]


def _cheapest(f: _Facts) -> list[str]:
    ordered = f.comparable()
    if not ordered:
        return ["No open proposal has a price comparable with the request's yet.", *_closed_note(f)]
    low = ordered[0]
    tied = [a for a in ordered if a.proposal.price == low.proposal.price]
    note = budget_note(low.proposal.price, low.proposal.currency, f.request)
    if len(tied) > 1:
        refs = ", ".join(f"[{a.label}] {a.proposal.vendor_email}" for a in tied)
        lines = [f"The cheapest open proposals are tied: {refs}, each at "]
        lines[0] += f"{money(low.proposal.price, low.proposal.currency)} ({note})."
    else:
        lines = [f"The cheapest open proposal is {f.cite(low)} ({note})."]
    if len(ordered) > len(tied):
        nxt = ordered[len(tied)]
        gap = nxt.proposal.price - low.proposal.price
        lines.append(
            f"Next is {f.cite(nxt)}, {money(gap, nxt.proposal.currency)} more. "
            f"Its weighted requirement coverage is {pct(nxt.coverage)}, against "
            f"{pct(low.coverage)} for [{low.label}]."
        )
    else:
        lines.append(f"[{low.label}] has {pct(low.coverage)} weighted requirement coverage.")
    return [*lines, *_uncomparable_note(f), *_closed_note(f)]


def _priciest(f: _Facts) -> list[str]:
    ordered = f.comparable()
    if not ordered:
        return ["No open proposal has a price comparable with the request's yet.", *_closed_note(f)]
    high = ordered[-1]
    note = budget_note(high.proposal.price, high.proposal.currency, f.request)
    lines = [f"The most expensive open proposal is {f.cite(high)} ({note})."]
    lines.append(f"It has {pct(high.coverage)} weighted requirement coverage.")
    return [*lines, *_uncomparable_note(f), *_closed_note(f)]


def _budget(f: _Facts) -> list[str]:
    request = f.request
    if request.budget is None:
        lines = ["The request states no budget."]
        ordered = f.comparable()
        if ordered:
            lines.append(
                f"Open proposals range from {money(ordered[0].proposal.price, request.currency)} "
                f"[{ordered[0].label}] to {money(ordered[-1].proposal.price, request.currency)} "
                f"[{ordered[-1].label}]."
            )
        return lines
    lines = [f"The budget is {money(request.budget, request.currency)}."]
    within = [a for a in f.comparable() if a.proposal.price <= request.budget]
    over = [a for a in f.comparable() if a.proposal.price > request.budget]
    if within:
        refs = "; ".join(
            f"{f.cite(a)} ({budget_note(a.proposal.price, a.proposal.currency, request)})"
            for a in within
        )
        lines.append(f"Within budget: {refs}.")
    else:
        lines.append("No open proposal is within budget.")
    if over:
        refs = "; ".join(
            f"{f.cite(a)} ({budget_note(a.proposal.price, a.proposal.currency, request)})"
            for a in over
        )
        lines.append(f"Over budget: {refs}.")
    return [*lines, *_uncomparable_note(f)]


def _deadline(f: _Facts) -> list[str]:
    request = f.request
    if request.deadline is None:
        lines = ["The request states no deadline."]
    else:
        lines = [f"The deadline is {request.deadline.date().isoformat()}."]
    lines.append(f"The request is {request.status}; the proposals state no delivery dates.")
    return lines


def _requirement_line(f: _Facts, index: int) -> str:
    req = f.request.requirements[index]
    label = requirement_label(index)
    groups: dict[str, list[str]] = {"full": [], "partial": [], "none": []}
    for a in f.open:
        groups[a.compliance[label]].append(f"[{a.label}]")
    parts = [f"fully met by {', '.join(groups['full']) or 'no open proposal'}"]
    parts += [
        f"{words} by {', '.join(groups[level])}"
        for level, words in (("partial", "partly met"), ("none", "not met"))
        if groups[level]
    ]
    return f"- [{label}] {req.name} ({req.priority}): " + "; ".join(parts) + "."


def _coverage(f: _Facts) -> list[str]:
    request = f.request
    if not request.requirements:
        return ["The request states no requirements, so coverage cannot be scored."]
    if not f.open:
        return ["No open proposal to score against the requirements yet."]
    if f.requirements:
        return [_requirement_line(f, i) for i in f.requirements]
    lines = ["Weighted requirement coverage of the open proposals (must 3, should 2, nice 1):"]
    for a in sorted(f.open, key=lambda a: (-a.coverage, a.label)):
        missing = ", ".join(f"[{r}]" for r in a.missing_musts)
        note = f"; misses must-have {missing}" if missing else "; meets every must-have"
        lines.append(f"- [{a.label}] {a.proposal.vendor_email}: {pct(a.coverage)}{note}.")
    unmet = [
        f"[{requirement_label(i)}] {req.name}"
        for i, req in enumerate(request.requirements)
        if not any(a.compliance[requirement_label(i)] == "full" for a in f.open)
    ]
    if unmet:
        lines.append("No open proposal fully meets: " + "; ".join(unmet) + ".")
    return lines


def _compare(f: _Facts) -> list[str]:
    chosen = f.proposals if len(f.proposals) >= 2 else f.open
    if not chosen:
        return ["There is no open proposal to compare yet."]
    order = [a.label for a in price_order(f.request, f.open)]
    lines = []
    for a in chosen:
        p = a.proposal
        rank_note = f"price rank {order.index(a.label) + 1} of {len(order)}" if a.open else p.status
        missing = ", ".join(f"[{r}]" for r in a.missing_musts)
        lines.append(
            f"- [{a.label}] {p.vendor_email}: {money(p.price, p.currency)} ({rank_note}; "
            f"{budget_note(p.price, p.currency, f.request)}), {pct(a.coverage)} weighted "
            f"coverage" + (f", misses must-have {missing}" if missing else "") + "."
        )
    if len(chosen) >= 2:
        best = max(chosen, key=lambda a: (a.coverage, -a.proposal.price))
        cheap = min(
            chosen, key=lambda a: (a.proposal.currency != f.request.currency, a.proposal.price)
        )
        lines.append(
            f"[{best.label}] covers the requirements best; "
            f"[{cheap.label}] is the cheapest of these."
        )
    return lines


def _recommend(f: _Facts) -> list[str]:
    if not f.open:
        return ["No open proposal to recommend yet."]
    eligible = [a for a in f.open if not a.missing_musts]
    lines = []
    if not eligible:
        lines.append("Every open proposal misses a must-have requirement; ranking them all.")
        eligible = f.open
    ranking = rank(f.request, f.open, eligible)
    best, score = ranking[0]
    lines.append(
        f"On the data, [{best.label}] {best.proposal.vendor_email} is the best choice "
        f"(score {score:.2f} = 0.7 x {pct(best.coverage)} coverage + 0.3 x price score)."
    )
    if len(ranking) > 1:
        second, second_score = ranking[1]
        lines.append(f"Runner-up: {f.cite(second)} (score {second_score:.2f}).")
    return lines


def _count(f: _Facts) -> list[str]:
    closed = len(f.items) - len(f.open)
    lines = [f"There are {len(f.items)} proposal(s): {len(f.open)} open, {closed} withdrawn "]
    lines[0] += f"or rejected; the request states {len(f.request.requirements)} requirement(s)."
    return lines


def _proposal(f: _Facts) -> list[str]:
    lines = []
    for a in f.proposals:
        p = a.proposal
        lines.append(
            f"[{a.label}] {p.vendor_email}: {money(p.price, p.currency)} "
            f"({budget_note(p.price, p.currency, f.request)}), status {p.status}, "
            f"{pct(a.coverage)} weighted coverage."
        )
        for i, req in enumerate(f.request.requirements):
            label = requirement_label(i)
            lines.append(f"- [{label}] {req.name} ({req.priority}): {a.compliance[label]}")
    return lines


def _facts(f: _Facts) -> list[str]:
    request = f.request
    deadline = request.deadline.date().isoformat() if request.deadline else "not stated"
    lines = [
        f"- Request: {request.title}, {request.status}; budget "
        f"{money(request.budget, request.currency)}; deadline {deadline}.",
    ]
    for i, req in enumerate(request.requirements):
        lines.append(f"- [{requirement_label(i)}] {req.name} ({req.priority})")
    for a in f.items:
        p = a.proposal
        lines.append(
            f"- [{a.label}] {p.vendor_email}: {money(p.price, p.currency)}, {p.status}, "
            f"{pct(a.coverage)} weighted coverage"
        )
    if not f.items:
        lines.append("- No proposals yet.")
    return lines


_SECTIONS: dict[str, tuple[str, Callable[[_Facts], list[str]]]] = {
    "cheapest": ("Cheapest proposal", _cheapest),
    "priciest": ("Most expensive proposal", _priciest),
    "budget": ("Budget", _budget),
    "deadline": ("Deadline", _deadline),
    "coverage": ("Requirement coverage", _coverage),
    "compare": ("Comparison", _compare),
    "recommend": ("Recommendation", _recommend),
    "count": ("Proposals", _count),
}


def answer(data: AnalysisInput, question: str) -> str:
    """The answer to ``question`` about ``data``, in Markdown."""
    f = _Facts(data, question)
    topics = list(f.topics)
    if f.requirements and "coverage" not in topics:
        topics.append("coverage")
    if len(f.proposals) >= 2 and "compare" not in topics:
        topics.append("compare")
    quoted = " ".join(question.split())
    if len(quoted) > 300:
        quoted = quoted[:300].rsplit(" ", 1)[0] + " ..."
    lines = [f"# Question about {f.request.title}", "", f"> {quoted}", ""]
    for topic in topics:
        title, section = _SECTIONS[topic]
        lines.extend([f"## {title}", "", *section(f), ""])
    if f.proposals and "compare" not in topics:
        lines.extend(["## Proposal details", "", *_proposal(f), ""])
    if not topics and not f.proposals:
        lines.extend(
            [
                "## Answer",
                "",
                "The offline analyser cannot tell what is asked. It answers questions about "
                "prices (cheapest, most expensive), the budget, the deadline, requirement "
                "coverage, comparing proposals or vendors, a recommendation and the number of "
                "proposals. These are the facts it has:",
                "",
                *_facts(f),
                "",
            ]
        )
    return "\n".join(lines).rstrip() + "\n"
