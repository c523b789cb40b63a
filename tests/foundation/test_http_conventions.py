"""Conventions every REST path follows, tested with the requests clients really send."""

from __future__ import annotations

from typing import Any

from tests.helpers import make_user
from tests.marketplace.util import auth, post_request

REQUEST_BODY = {
    "title": "Ticketing for a help desk",
    "description": "Self-hosted.",
    "requirements": [{"name": "SLA timers", "priority": "must"}],
    "budget": "8000.00",
    "currency": "EUR",
}


async def test_a_post_with_a_trailing_slash_is_served_not_redirected(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    resp = await client.post(
        "/api/v1/requests/", json=REQUEST_BODY, headers=auth(buyer), allow_redirects=False
    )
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["title"] == REQUEST_BODY["title"]

    login = await client.post(
        "/api/v1/auth/login/", json={"email": "slash@example.com"}, allow_redirects=False
    )
    assert login.status == 202


async def test_trailing_slash_aliases_answer_like_the_path_without_it(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    created = await post_request(client, buyer)
    for path in (
        f"/api/v1/requests/{created['id']}",
        "/api/v1/requests",
        "/api/v1/proposals",
        "/health",
        "/api/openapi.json",
        "/api/v1/auth/me",
    ):
        plain = await client.get(path, headers=auth(buyer))
        slashed = await client.get(path + "/", headers=auth(buyer), allow_redirects=False)
        assert slashed.status == plain.status == 200, path
        assert await slashed.json() == await plain.json(), path
        assert slashed.headers.get("ETag") == plain.headers.get("ETag"), path
    docs = await client.get("/api/docs/", allow_redirects=False)
    assert docs.status == 200
    assert "text/html" in docs.headers["Content-Type"]


async def test_trailing_slash_keeps_404_405_and_the_route_label(client: Any) -> None:
    assert (await client.get("/no/such/path/")).status == 404
    assert (await client.get("/health//")).status == 404
    wrong_method = await client.delete("/health/")
    assert wrong_method.status == 405
    assert "GET" in wrong_method.headers["Allow"]

    await client.get("/health/")
    metrics = await (await client.get("/metrics")).text()
    assert 'route="/health",status="200"' in metrics
    assert 'route="/health/"' not in metrics


async def test_openapi_lists_each_path_once(client: Any) -> None:
    paths = (await (await client.get("/api/openapi.json")).json())["paths"]
    assert "/api/v1/requests" in paths
    assert not [path for path in paths if path.endswith("/")]
