"""Property-based tests of the analyses API: schemathesis generates requests from the OpenAPI
document; the real app (offline provider, real PostgreSQL) must never answer 500 and must match
what it documents, including the question rules and the paged listing."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import requests
import schemathesis
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from tests.analysis.support import seed_request, start, wait_status
from tests.helpers import make_user
from tests.schemathesis_support import checks_for, explore

EXAMPLES = 15


def fuzz(
    spec: dict[str, Any],
    base_url: str,
    tokens: list[str],
    ids: dict[str, str],
    mode: GenerationMode,
) -> int:
    """Every analyses operation with generated data, as each caller; returns calls made."""
    schema = schemathesis.openapi.from_dict(spec)
    checks = checks_for(mode)
    calls = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if "analyses" not in operation.path:
                continue
            fixed = {}
            if "{id}" in operation.path:
                kind = "request" if operation.path.startswith("/api/v1/requests") else "analysis"
                fixed = {"id": ids[kind]}
            for token in tokens:
                headers = {"Authorization": f"Bearer {token}"}

                def send(case: Any, headers: dict[str, str] = headers) -> None:
                    nonlocal calls
                    calls += 1
                    case.call_and_validate(
                        base_url=base_url, session=session, headers=headers, checks=checks
                    )

                for path_parameters in ({}, fixed) if fixed else ({},):
                    strategy = operation.as_strategy(mode, path_parameters=path_parameters)
                    expected = Unsatisfiable if mode is GenerationMode.NEGATIVE else ()
                    with contextlib.suppress(expected):
                        explore(strategy, send, EXAMPLES)
    return calls


async def _prepared(client: Any) -> tuple[dict[str, Any], str, list[str], dict[str, str]]:
    owner, token = await make_user(client, "buyer")
    _, stranger = await make_user(client, "buyer")
    request_id = await seed_request(client, owner)
    created = await start(client, token, request_id)
    await wait_status(client, token, created["id"], "done")
    spec = await (await client.get("/api/openapi.json")).json()
    base_url = str(client.make_url("")).rstrip("/")
    return spec, base_url, [token, stranger], {"request": request_id, "analysis": created["id"]}


async def test_generated_valid_requests_get_no_500_and_match_the_schema(
    offline_client: Any,
) -> None:
    spec, base_url, tokens, ids = await _prepared(offline_client)
    calls = await asyncio.to_thread(fuzz, spec, base_url, tokens, ids, GenerationMode.POSITIVE)
    assert calls > 100


async def test_generated_invalid_requests_are_rejected_with_4xx(offline_client: Any) -> None:
    spec, base_url, tokens, ids = await _prepared(offline_client)
    calls = await asyncio.to_thread(fuzz, spec, base_url, tokens[:1], ids, GenerationMode.NEGATIVE)
    assert calls > 30
