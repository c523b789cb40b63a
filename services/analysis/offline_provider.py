"""The offline provider: streams :mod:`services.analysis.offline_report` (or, for questions,
:mod:`services.analysis.offline_answer`) at a model-like pace.

Reported as provider ``offline`` so nobody mistakes it for Claude. Tokens are words with their
trailing whitespace (roughly what a model emits); they are released on a fixed schedule of
``tokens_per_second`` rather than with one sleep per token, so the pace holds at high rates too.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from services.analysis.offline_answer import answer
from services.analysis.offline_report import report
from services.analysis.providers import Completion
from storage.analyses import AnalysisInput

MODEL = "offline-analyst-1"
_TOKEN_RE = re.compile(r"\s*\S+\s*|\s+")


def tokenize(text: str) -> list[str]:
    """Split ``text`` into word tokens; joining them gives ``text`` back exactly."""
    return _TOKEN_RE.findall(text)


class OfflineProvider:
    """Computes the analysis locally; never fails on valid data."""

    name = "offline"
    model = MODEL

    def __init__(self, tokens_per_second: float) -> None:
        self.tokens_per_second = tokens_per_second

    async def stream(
        self,
        kind: str,
        data: AnalysisInput,
        on_text: Callable[[str], None],
        *,
        question: str | None = None,
    ) -> Completion:
        """Emit the report token by token; usage counts words in and tokens out."""
        text = answer(data, question or "") if kind == "question" else report(kind, data)
        tokens = tokenize(text)
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        while sent < len(tokens):
            due = min(len(tokens), int((loop.time() - started) * self.tokens_per_second) + 1)
            while sent < due:
                on_text(tokens[sent])
                sent += 1
            if sent < len(tokens):
                await asyncio.sleep(max(0.0, started + sent / self.tokens_per_second - loop.time()))
        words_in = (
            len(data.request.description.split())
            + len((question or "").split())
            + sum(
                len(p.summary.split()) + sum(len(a.response.split()) for a in p.answers)
                for p in data.proposals
            )
        )
        return Completion({"input_tokens": words_in, "output_tokens": len(tokens)}, "end_turn")

    async def close(self) -> None:
        """Nothing to release."""
