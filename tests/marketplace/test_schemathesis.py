"""Property-based API tests: schemathesis generates requests from our own OpenAPI document and
checks the real app (real PostgreSQL) never answers 500 or breaks the documented schema."""

from __future__ import annotations

import asyncio
from typing import Any

import requests
import schemathesis
from schemathesis.generation import GenerationMode

from tests.helpers import make_user
from tests.marketplace.util import post_proposal, post_request
from tests.schemathesis_support import checks_for, explore

OUR_PATHS = ("/api/v1/requests", "/api/v1/proposals")
EXAMPLES = 20


def fuzz(
    spec: dict[str, Any],
    base_url: str,
    tokens: list[str],
    ids: dict[str, str],
    mode: GenerationMode,
    *,
    random_ids: bool = True,
) -> int:
    """Run every marketplace operation with generated data as each caller; returns calls."""
    schema = schemathesis.openapi.from_dict(spec)
    calls = 0
    checks = checks_for(mode)
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if not operation.path.startswith(OUR_PATHS):
                continue
            fixed = {}
            if "{id}" in operation.path:
                kind = "proposal" if operation.path.startswith("/api/v1/proposals") else "request"
                fixed = {"id": ids[kind]}
            for token in tokens:
                headers = {"Authorization": f"Bearer {token}"}

                def send(case: Any, headers: dict[str, str] = headers) -> None:
                    nonlocal calls
                    calls += 1
                    case.call_and_validate(
                        base_url=base_url, session=session, headers=headers, checks=checks
                    )

                # Random ids exercise the 404 paths; the real ones reach the handlers' logic.
                for path_parameters in ({}, fixed) if fixed and random_ids else (fixed,):
                    explore(
                        operation.as_strategy(mode, path_parameters=path_parameters), send, EXAMPLES
                    )
    return calls


async def _prepared(client: Any) -> tuple[dict[str, Any], str, list[str], dict[str, str]]:
    _, buyer = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    created = await post_request(client, buyer)
    proposal = await post_proposal(client, vendor, created["id"])
    spec = await (await client.get("/api/openapi.json")).json()
    base_url = str(client.make_url("")).rstrip("/")
    return spec, base_url, [buyer, vendor], {"request": created["id"], "proposal": proposal["id"]}


async def test_generated_valid_requests_get_no_500_and_match_the_schema(client: Any) -> None:
    spec, base_url, tokens, ids = await _prepared(client)
    # schemathesis is synchronous: it runs in a thread while this loop serves the app.
    calls = await asyncio.to_thread(fuzz, spec, base_url, tokens, ids, GenerationMode.POSITIVE)
    assert calls > 100


async def test_generated_invalid_requests_are_rejected_with_4xx(client: Any) -> None:
    spec, base_url, tokens, ids = await _prepared(client)
    calls = await asyncio.to_thread(
        fuzz, spec, base_url, tokens[:1], ids, GenerationMode.NEGATIVE, random_ids=False
    )
    assert calls > 50
