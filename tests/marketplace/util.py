"""Shortcuts for the marketplace tests."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient


def auth(token: str, **headers: str) -> dict[str, str]:
    """Request headers with the bearer ``token``."""
    return {"Authorization": f"Bearer {token}", **headers}


async def post_request(client: TestClient, token: str, **fields: Any) -> dict[str, Any]:
    """Create a request (201 expected) and return it."""
    body = {
        "title": "CRM for a 40-person sales team",
        "description": "Hosted, EU data residency.",
        "requirements": [
            {"name": "SSO", "description": "SAML 2.0", "priority": "must"},
            {"name": "Reporting", "priority": "should"},
        ],
        "budget": "25000.00",
        "currency": "EUR",
        **fields,
    }
    response = await client.post("/api/v1/requests", json=body, headers=auth(token))
    assert response.status == 201, await response.text()
    data: dict[str, Any] = await response.json()
    return data


async def post_proposal(
    client: TestClient, token: str, request_id: str, **fields: Any
) -> dict[str, Any]:
    """Submit a proposal (201 expected) and return it."""
    body = {
        "price": "19999.50",
        "currency": "EUR",
        "summary": "Our CRM does all of it.",
        "answers": [{"requirement": "SSO", "response": "SAML and OIDC", "compliance": "full"}],
        **fields,
    }
    response = await client.post(
        f"/api/v1/requests/{request_id}/proposals", json=body, headers=auth(token)
    )
    assert response.status == 201, await response.text()
    data: dict[str, Any] = await response.json()
    assert response.headers["Location"] == f"/api/v1/proposals/{data['id']}"
    assert response.headers["ETag"] == f'"{data["version"]}"'
    return data


async def set_status(
    client: TestClient, token: str, proposal_id: str, status: str, **headers: str
) -> Any:
    """``PUT /proposals/{id}/status``; returns the response."""
    return await client.put(
        f"/api/v1/proposals/{proposal_id}/status",
        json={"status": status},
        headers=auth(token, **headers),
    )
