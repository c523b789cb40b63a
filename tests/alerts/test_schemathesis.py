"""Property-based API tests for the alert-feed endpoints: schemathesis generates requests from
the OpenAPI document; the real app must never answer 500 and must match what it documents."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import requests
import schemathesis
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from tests.alerts.util import create_strategy, tv_path
from tests.helpers import make_user
from tests.schemathesis_support import checks_for, explore

OUR_PATHS = ("/api/v1/strategies", "/api/v1/alerts", "/webhooks/")
EXAMPLES = 15


def fuzz(
    spec: dict[str, Any],
    base_url: str,
    tokens: list[str],
    fixed: dict[str, str],
    mode: GenerationMode,
) -> int:
    """Every alert-feed operation with generated data, as each caller; returns calls made."""
    schema = schemathesis.openapi.from_dict(spec)
    checks = checks_for(mode)
    calls = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if not operation.path.startswith(OUR_PATHS):
                continue
            # DELETE of the fixed strategy would end the run's useful part early.
            if operation.method.upper() == "DELETE" and "strategy_id" in operation.path:
                continue
            params = {
                name: value for name, value in fixed.items() if f"{{{name}}}" in operation.path
            }
            for token in tokens:
                headers = {"Authorization": f"Bearer {token}"}

                def send(case: Any, headers: dict[str, str] = headers) -> None:
                    nonlocal calls
                    calls += 1
                    case.call_and_validate(
                        base_url=base_url, session=session, headers=headers, checks=checks
                    )

                for path_parameters in ({}, params) if params else ({},):
                    strategy = operation.as_strategy(mode, path_parameters=path_parameters)
                    # Operations with nothing left to break (no body, no query, fixed path)
                    # have no negative cases.
                    expected = Unsatisfiable if mode is GenerationMode.NEGATIVE else ()
                    with contextlib.suppress(expected):
                        explore(strategy, send, EXAMPLES)
    return calls


async def _prepared(client: Any) -> tuple[dict[str, Any], str, list[str], dict[str, str]]:
    _, owner = await make_user(client)
    _, stranger = await make_user(client)
    strategy = await create_strategy(client, owner)
    response = await client.post(tv_path(strategy), data="ticker=SPY action=buy qty=1")
    alert = await response.json()
    spec = await (await client.get("/api/openapi.json")).json()
    base_url = str(client.make_url("")).rstrip("/")
    fixed = {
        "strategy_id": strategy["id"],
        "alert_id": alert["id"],
        "secret": strategy["secrets"]["url_secret"],
    }
    return spec, base_url, [owner, stranger], fixed


async def test_generated_valid_requests_get_no_500_and_match_the_schema(client: Any) -> None:
    spec, base_url, tokens, fixed = await _prepared(client)
    calls = await asyncio.to_thread(fuzz, spec, base_url, tokens, fixed, GenerationMode.POSITIVE)
    assert calls > 100


async def test_generated_invalid_requests_are_rejected_with_4xx(client: Any) -> None:
    spec, base_url, tokens, fixed = await _prepared(client)
    calls = await asyncio.to_thread(
        fuzz, spec, base_url, tokens[:1], fixed, GenerationMode.NEGATIVE
    )
    assert calls > 50
