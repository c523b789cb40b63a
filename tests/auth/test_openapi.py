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


async def test_publish_is_documented_with_both_authentication_schemes(client: Any) -> None:
    spec = await (await client.get("/api/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    bearer = schemes["bearerAuth"]
    assert (bearer["type"], bearer["scheme"], bearer["bearerFormat"]) == ("http", "bearer", "JWT")
    headers = {
        name: (scheme["type"], scheme["in"], scheme["name"])
        for name, scheme in schemes.items()
        if name != "bearerAuth"
    }
    assert sorted(headers.values()) == [
        ("apiKey", "header", "x-signature"),
        ("apiKey", "header", "x-signature-version"),
        ("apiKey", "header", "x-timestamp"),
    ]
    by_header = {value[2]: name for name, value in headers.items()}
    signature, timestamp, version = (
        by_header["x-signature"],
        by_header["x-timestamp"],
        by_header["x-signature-version"],
    )
    assert "SERVICE_SECRET" in schemes[signature]["description"]
    assert "{METHOD}|{path with query}|{body}|{timestamp}" in schemes[version]["description"]

    publish = spec["paths"]["/api/v1/channels/{channel}/publish"]["post"]
    # any one of: a bearer token; a v1 signature; a v2 signature
    security = publish.get("security", spec["security"])
    assert {"bearerAuth": []} in security
    assert {signature: [], timestamp: []} in security
    assert {signature: [], timestamp: [], version: []} in security
    assert publish["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/PublishBody"
    )
    ok = publish["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    result = spec["components"]["schemas"][ok.rsplit("/", 1)[-1]]
    assert set(result["properties"]) == {"channel", "offset", "epoch", "duplicate"}
    for status in ("400", "401", "403"):
        assert status in publish["responses"], status
    assert [p["name"] for p in publish["parameters"] if p["in"] == "path"] == ["channel"]
    # every other backend route accepts the same schemes; the public auth routes none
    assert spec["security"] == security
    assert spec["paths"]["/api/v1/auth/login"]["post"]["security"] == []
