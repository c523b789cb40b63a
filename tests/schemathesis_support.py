"""What the schemathesis tests of every API area share: the checks and a deterministic runner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def checks_for(mode: GenerationMode) -> list[Any]:
    """The checks for ``mode``: invalid data must also be rejected."""
    return [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS


def explore(strategy: Any, send: Callable[[Any], None], examples: int) -> None:
    """Run ``send`` on ``examples`` cases drawn from ``strategy`` (deterministic, no example
    database)."""

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        send(case)

    run()
