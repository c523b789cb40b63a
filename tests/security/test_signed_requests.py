"""Signed service requests (``x-signature``): a signature is good for one request only, the v2
scheme binds it to the path, and the time window is configurable.

The signatures are computed here from the documented formula (``docs/security.md``), as a
backend would, never with the server's own helper.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from handlers import keys
from server.app import create_app
from tests.conftest import TEST_SERVICE_SECRET

DEMO = "/api/v1/channels/alerts:demo/publish"


def now_ms() -> int:
    return int(time.time() * 1000)


def signed(
    method: str,
    body: bytes,
    *,
    path: str | None = None,
    secret: str = TEST_SERVICE_SECRET,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Signature headers: v1 (``{METHOD}|{body}|{ts}``) without ``path``, v2
    (``{METHOD}|{path with query}|{body}|{ts}``) with it."""
    ts = str(now_ms() if timestamp is None else timestamp)
    if path is None:
        message = f"{method}|".encode() + body + f"|{ts}".encode()
        version = {}
    else:
        message = f"{method}|{path}|".encode() + body + f"|{ts}".encode()
        version = {"x-signature-version": "2"}
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return {
        "x-timestamp": ts,
        "x-signature": digest,
        "Content-Type": "application/json",
        **version,
    }


async def _history(client: TestClient, channel: str) -> list[Any]:
    hub = client.server.app[keys.hub]
    history = await hub.broker.history(channel, hub.options(channel))
    return [orjson.loads(pub.data) for pub in history.publications]


async def _message(response: Any) -> str:
    body = await response.json()
    message: str = body["message"]
    return message


async def test_a_v1_signature_is_accepted_once_and_cannot_be_retargeted(client: TestClient) -> None:
    body = orjson.dumps({"data": {"n": 1}})
    headers = signed("POST", body)
    first = await client.post(DEMO, data=body, headers=headers)
    assert first.status == 200, await first.text()
    again = await client.post(DEMO, data=body, headers=headers)
    assert again.status == 401
    assert "already used" in await _message(again)
    # v1 does not cover the path: the same signature sent to a victim's channel is a replay too
    victim = f"user:{uuid.uuid4()}"
    moved = await client.post(f"/api/v1/channels/{victim}/publish", data=body, headers=headers)
    assert moved.status == 401
    assert "already used" in await _message(moved)
    # upper-case hex is the same signature, not a new one
    shouting = {**headers, "x-signature": headers["x-signature"].upper()}
    assert (await client.post(DEMO, data=body, headers=shouting)).status == 401
    assert await _history(client, "alerts:demo") == [{"n": 1}]
    assert await _history(client, victim) == []


async def test_a_v2_signature_is_bound_to_its_path_and_query(client: TestClient) -> None:
    body = orjson.dumps({"data": "v2"})
    headers = signed("POST", body, path=DEMO)
    victim = f"/api/v1/channels/user:{uuid.uuid4()}/publish"
    moved = await client.post(victim, data=body, headers=headers)
    assert moved.status == 401
    assert await _message(moved) == "invalid request signature"
    # the refused attempt did not use the signature up: it still works where it was made for
    ok = await client.post(DEMO, data=body, headers=headers)
    assert ok.status == 200, await ok.text()
    assert (await client.post(DEMO, data=body, headers=headers)).status == 401
    # a query string is part of the signed path
    query_headers = signed("POST", body, path=f"{DEMO}?trace=1")
    assert (await client.post(f"{DEMO}?trace=2", data=body, headers=query_headers)).status == 401
    assert (await client.post(f"{DEMO}?trace=1", data=body, headers=query_headers)).status == 200
    assert await _history(client, "alerts:demo") == ["v2", "v2"]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-signature-version": "3"}, "x-signature-version must be 1 or 2"),
        ({"x-timestamp": "soon"}, "x-timestamp must be Unix milliseconds"),
        ({"x-signature": ""}, "x-signature and x-timestamp are both required"),
        ({"x-signature": "zz"}, "invalid request signature"),
    ],
)
async def test_malformed_signature_headers_are_refused(
    client: TestClient, headers: dict[str, str], message: str
) -> None:
    body = orjson.dumps({"data": 1})
    response = await client.post(DEMO, data=body, headers={**signed("POST", body), **headers})
    assert response.status == 401
    assert await _message(response) == message
    assert await _history(client, "alerts:demo") == []


async def test_the_window_is_configurable(aiohttp_client: Any, make_settings: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(SIGNATURE_TOLERANCE_SECONDS="5")))
    assert client.server.app[keys.config].auth.signature_tolerance == 5
    body = orjson.dumps({"data": 1})
    for offset in (-10_000, 10_000):
        old = signed("POST", body, path=DEMO, timestamp=now_ms() + offset)
        response = await client.post(DEMO, data=body, headers=old)
        assert response.status == 401
        assert await _message(response) == "x-timestamp is too far from the server clock"
    recent = signed("POST", body, path=DEMO, timestamp=now_ms() - 2_000)
    assert (await client.post(DEMO, data=body, headers=recent)).status == 200


async def test_a_signature_used_on_one_instance_is_refused_by_another(
    redis_settings: Any, aiohttp_client: Any
) -> None:
    """With Redis the replay cache is shared: a replay sent to another instance fails too."""
    one = await aiohttp_client(create_app(redis_settings))
    two = await aiohttp_client(create_app(redis_settings))
    body = orjson.dumps({"data": "once"})
    headers = signed("POST", body)
    assert (await one.post(DEMO, data=body, headers=headers)).status == 200
    replay = await two.post(DEMO, data=body, headers=headers)
    assert replay.status == 401
    assert "already used" in await _message(replay)
    fresh = signed("POST", body, path=DEMO)
    assert (await two.post(DEMO, data=body, headers=fresh)).status == 200


# -- every backend route accepts a signed request (acting as the service principal) --------

#: Routes that do not authenticate a caller by token: they ignore signature headers.
PUBLIC_ROUTES = {
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/verify"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/logout"),
}


def _backend_routes(client: TestClient) -> list[tuple[str, str]]:
    """``(method, concrete path)`` of every ``/api/v1/`` route, path parameters filled in."""
    found = []
    for route in client.server.app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "OPTIONS", "*"):
            continue
        canonical = resource.canonical
        if not canonical.startswith("/api/v1/") or (route.method, canonical) in PUBLIC_ROUTES:
            continue
        path = canonical.replace("{channel}", "alerts:parity")
        while "{" in path:
            start, end = path.index("{"), path.index("}")
            path = path[:start] + str(uuid.uuid4()) + path[end + 1 :]
        found.append((route.method, path))
    return found


async def test_every_backend_route_takes_a_signature_like_a_service_token(
    client: TestClient,
) -> None:
    routes = _backend_routes(client)
    assert len(routes) > 20
    token = client.server.app[keys.tokens].issue_service("parity").token
    for method, path in routes:
        body = b"" if method in ("GET", "DELETE") else b"{}"
        signed_response = await client.request(
            method, path, data=body, headers=signed(method, body, path=path)
        )
        bearer_response = await client.request(
            method,
            path,
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert signed_response.status not in (401, 500), (method, path, signed_response.status)
        assert signed_response.status == bearer_response.status, (method, path)


async def test_a_signed_request_is_the_service_principal(client: TestClient) -> None:
    me = await client.get("/api/v1/auth/me", headers=signed("GET", b"", path="/api/v1/auth/me"))
    assert me.status == 200, await me.text()
    assert await me.json() == {"id": "service:signed-request", "email": None, "role": "service"}
    # v1 works on every backend route too (the body of a GET is empty)
    listed = await client.get("/api/v1/requests", headers=signed("GET", b""))
    assert listed.status == 200, await listed.text()


async def test_a_bad_signature_on_a_backend_route_is_refused(client: TestClient) -> None:
    wrong = signed("GET", b"", path="/api/v1/requests", secret="x" * 40)
    response = await client.get("/api/v1/requests", headers=wrong)
    assert response.status == 401
    assert await _message(response) == "invalid request signature"
    moved = signed("GET", b"", path="/api/v1/requests")
    response = await client.get("/api/v1/proposals", headers=moved)
    assert response.status == 401


async def test_with_a_token_the_token_decides_and_signature_headers_are_ignored(
    client: TestClient,
) -> None:
    token = client.server.app[keys.tokens].issue_service("both").token
    garbage = {"x-signature": "nope", "x-timestamp": "1", "x-signature-version": "9"}
    response = await client.get(
        "/api/v1/auth/me", headers={**garbage, "Authorization": f"Bearer {token}"}
    )
    assert response.status == 200
    assert (await response.json())["id"] == "service:both"
    # a valid signature does not rescue a bad token, and is not spent by the attempt
    good = signed("GET", b"", path="/api/v1/auth/me")
    response = await client.get("/api/v1/auth/me", headers={**good, "Authorization": "Bearer x"})
    assert response.status == 401
    response = await client.get("/api/v1/auth/me", headers=good)
    assert response.status == 200
    assert (await response.json())["id"] == "service:signed-request"


async def test_public_auth_routes_ignore_signature_headers(client: TestClient) -> None:
    body = orjson.dumps({"email": "someone@example.com"})
    garbage = {"x-signature": "nope", "x-timestamp": "1", "Content-Type": "application/json"}
    response = await client.post("/api/v1/auth/login", data=body, headers=garbage)
    assert response.status == 202


@pytest.mark.parametrize("path", ["/api/v1/schema", "/api/v1/docs", "/api/v1/redoc"])
async def test_public_documentation_pages_ignore_signature_headers(
    client: TestClient, path: str
) -> None:
    """Pages that identify no caller never read signature headers, even under /api/v1/."""
    garbage = {"x-signature": "nope", "x-timestamp": "1"}
    response = await client.get(path, headers=garbage)
    assert response.status == 200, await response.text()
