"""Helpers for analysis tests: seeding requests and proposals with SQL, starting analyses,
watching their channel."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from handlers import keys
from storage import users
from tests.helpers import DEADLINE, receive, request

REQUIREMENTS = [
    {"name": "SSO", "description": "SAML single sign-on", "priority": "must"},
    {"name": "Audit log", "description": "who changed what", "priority": "should"},
    {"name": "Dark mode", "description": "", "priority": "nice"},
]

#: (price, answers as {requirement: compliance}, status)
PROPOSALS: list[tuple[str, dict[str, str], str]] = [
    ("12000.00", {"SSO": "full", "Audit log": "full", "Dark mode": "none"}, "submitted"),
    ("9000.00", {"SSO": "partial", "Audit log": "none"}, "submitted"),
    ("15000.00", {"SSO": "full", "Audit log": "full", "Dark mode": "full"}, "submitted"),
]


async def seed_request(
    client: TestClient,
    owner_id: str,
    *,
    title: str = "CRM for the sales team",
    budget: str | None = "13000.00",
    requirements: list[dict[str, str]] | None = None,
    proposals: list[tuple[str, dict[str, str], str]] | None = None,
) -> str:
    """Insert a request and its proposals (one vendor each); returns the request id."""
    requirements = REQUIREMENTS if requirements is None else requirements
    proposals = PROPOSALS if proposals is None else proposals
    async with client.server.app[keys.pool].acquire() as conn:
        request_id = await conn.fetchval(
            "INSERT INTO requests (owner_id, title, description, requirements, budget) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            uuid.UUID(owner_id),
            title,
            "We need a CRM that our 40 sales people can use from day one.",
            requirements,
            None if budget is None else Decimal(budget),
        )
        for index, (price, answers, status) in enumerate(proposals):
            email = f"vendor{index + 1}-{uuid.uuid4().hex[:6]}@example.com"
            vendor = await users.get_or_create(conn, email, "vendor")
            await conn.execute(
                "INSERT INTO proposals (request_id, vendor_id, price, summary, answers, status, "
                "created_at) VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))",
                request_id,
                vendor.id,
                Decimal(price),
                f"Proposal number {index + 1}",
                [
                    {"requirement": name, "response": f"{level} support", "compliance": level}
                    for name, level in answers.items()
                ],
                status,
                float(index),
            )
    return str(request_id)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def start(
    client: TestClient, token: str, request_id: str, kind: str = "compare_proposals"
) -> dict[str, Any]:
    """Start an analysis; asserts 202 and returns the body."""
    resp = await client.post(
        f"/api/v1/requests/{request_id}/analyses", json={"kind": kind}, headers=auth(token)
    )
    body: dict[str, Any] = await resp.json()
    assert resp.status == 202, body
    return body


async def get(client: TestClient, token: str, analysis_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/analyses/{analysis_id}", headers=auth(token))
    body: dict[str, Any] = await resp.json()
    assert resp.status == 200, body
    return body


async def wait_status(
    client: TestClient, token: str, analysis_id: str, *statuses: str, timeout: float = DEADLINE
) -> dict[str, Any]:
    """Poll until the analysis has one of ``statuses``."""
    async with asyncio.timeout(timeout):
        while True:
            body = await get(client, token, analysis_id)
            if body["status"] in statuses:
                return body
            await asyncio.sleep(0.02)


async def subscribe(
    ws: ClientWebSocketResponse, channel: str, since: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Subscribe; returns the recovered publications and the reply's result."""
    fields: dict[str, Any] = {"channel": channel}
    if since is not None:
        fields["since"] = since
    reply = await request(ws, "subscribe", **fields)
    assert "result" in reply, reply
    result: dict[str, Any] = reply["result"]
    return list(result.get("publications", [])), result


async def next_pub(ws: ClientWebSocketResponse, channel: str) -> dict[str, Any]:
    """The next publication pushed on ``channel``."""
    while True:
        message = await receive(ws)
        if message.get("type") == "pub" and message.get("channel") == channel:
            return message


async def until_end(
    ws: ClientWebSocketResponse, channel: str, pubs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Read pushes until ``pubs`` ends with a ``done`` or ``error`` event; returns ``pubs``."""
    while not pubs or pubs[-1]["data"]["type"] not in ("done", "error"):
        pubs.append(await next_pub(ws, channel))
    return pubs


def check_stream(pubs: list[dict[str, Any]]) -> str:
    """Assert offsets and delta seqs are gap- and duplicate-free; returns the streamed text."""
    offsets = [p["offset"] for p in pubs]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), offsets
    deltas = [p["data"] for p in pubs if p["data"]["type"] == "delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    return "".join(d["text"] for d in deltas)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
