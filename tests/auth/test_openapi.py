"""The auth endpoints are described in the OpenAPI document."""

from __future__ import annotations

from typing import Any


async def test_auth_endpoints_are_documented(client: Any) -> None:
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200
    paths = (await resp.json())["paths"]
    for path, method in (
        ("/api/v1/auth/login", "post"),
        ("/api/v1/auth/verify", "post"),
        ("/api/v1/auth/refresh", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/auth/me", "get"),
        ("/api/v1/users/{user_id}/role", "put"),
    ):
        assert method in paths[path], path
    assert "429" in paths["/api/v1/auth/login"]["post"]["responses"]
    assert "202" in paths["/api/v1/auth/login"]["post"]["responses"]
