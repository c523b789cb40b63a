"""CORS on the REST API with the ALLOWED_ORIGINS list; the WebSocket keeps its own Origin check."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import connect, make_user

ALLOWED = "http://127.0.0.1:8080"
FOREIGN = "https://evil.example"


async def test_preflight_from_an_allowed_origin(client: Any) -> None:
    resp = await client.options(
        "/api/v1/auth/login",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, Authorization",
        },
    )
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "AUTHORIZATION" in resp.headers["Access-Control-Allow-Headers"].upper()
    assert "Access-Control-Allow-Credentials" not in resp.headers


async def test_preflight_from_a_foreign_origin_is_refused(client: Any) -> None:
    resp = await client.options(
        "/api/v1/auth/login",
        headers={"Origin": FOREIGN, "Access-Control-Request-Method": "POST"},
    )
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert (await resp.json())["status_code"] == 403


async def test_simple_request_gets_cors_headers_only_for_allowed_origins(client: Any) -> None:
    _, token = await make_user(client)
    headers = {"Authorization": f"Bearer {token}"}
    ok = await client.get("/api/v1/auth/me", headers={**headers, "Origin": ALLOWED})
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "X-Request-ID" in ok.headers["Access-Control-Expose-Headers"]
    foreign = await client.get("/api/v1/auth/me", headers={**headers, "Origin": FOREIGN})
    assert "Access-Control-Allow-Origin" not in foreign.headers


async def test_websocket_still_upgrades_with_an_allowed_origin(client: Any) -> None:
    _, token = await make_user(client)
    ws = await connect(client, token, origin=ALLOWED)
    await ws.close()


SIGNATURE_HEADERS = ("x-signature", "x-timestamp", "x-signature-version")


async def test_preflight_allows_the_signature_headers(client: Any) -> None:
    resp = await client.options(
        "/api/v1/requests",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": ", ".join(SIGNATURE_HEADERS),
        },
    )
    assert resp.status == 200, await resp.text()
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert set(SIGNATURE_HEADERS) <= allowed


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (
            {"Origin": FOREIGN, "Access-Control-Request-Method": "POST"},
            f"CORS preflight request failed: origin '{FOREIGN}' is not allowed",
        ),
        (
            {
                "Origin": ALLOWED,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "X-Evil",
            },
            "CORS preflight request failed: headers are not allowed: X-EVIL",
        ),
        (
            {"Origin": ALLOWED},
            "CORS preflight request failed: 'Access-Control-Request-Method' header is not "
            "specified",
        ),
        (
            {"Access-Control-Request-Method": "POST"},
            "CORS preflight request failed: origin header is not specified in the request",
        ),
    ],
)
async def test_a_refused_preflight_says_why(
    client: Any, headers: dict[str, str], reason: str
) -> None:
    resp = await client.options("/api/v1/auth/login", headers=headers)
    assert resp.status == 403
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["status_code"] == 403
    assert body["message"] == reason
    assert "Access-Control-Allow-Origin" not in resp.headers
