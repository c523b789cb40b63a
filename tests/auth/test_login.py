"""Magic-link login and verify: the flow, its single use, expiry and rate limits."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import asyncpg

from handlers import keys
from handlers.auth_api import LOGIN_ACCEPTED
from tests.auth.flows import bearer, link_of, request_link, sent_messages, sign_in


async def _rows(client: Any, sql: str, *args: Any) -> list[asyncpg.Record]:
    async with client.server.app[keys.pool].acquire() as conn:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows


async def test_login_verify_creates_the_user_and_returns_tokens(client: Any) -> None:
    body = await sign_in(client, "New.User@Example.com")
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["refresh_expires_in"] == 7 * 24 * 3600
    assert body["user"]["email"] == "new.user@example.com"
    assert body["user"]["role"] == "buyer"
    assert body["user"]["last_login_at"] is not None

    resp = await client.get("/api/v1/auth/me", headers=bearer(body["access_token"]))
    assert resp.status == 200
    me = await resp.json()
    assert me["id"] == body["user"]["id"]
    assert me["email"] == "new.user@example.com"
    users = await _rows(client, "SELECT email FROM users")
    assert [row["email"] for row in users] == ["new.user@example.com"]


async def test_second_login_reuses_the_account_and_keeps_its_role(client: Any) -> None:
    first = await sign_in(client, "vendor@example.com")
    async with client.server.app[keys.pool].acquire() as conn:
        await conn.execute("UPDATE users SET role = 'vendor'")
    second = await sign_in(client, "VENDOR@example.com")
    assert second["user"]["id"] == first["user"]["id"]
    assert second["user"]["role"] == "vendor"
    resp = await client.get("/api/v1/auth/me", headers=bearer(second["access_token"]))
    assert (await resp.json())["role"] == "vendor"


async def test_login_answers_identically_for_known_and_unknown_addresses(client: Any) -> None:
    await sign_in(client, "known@example.com")
    known = await client.post("/api/v1/auth/login", json={"email": "known@example.com"})
    unknown = await client.post("/api/v1/auth/login", json={"email": "nobody@example.com"})
    assert known.status == unknown.status == 202
    assert await known.json() == await unknown.json() == LOGIN_ACCEPTED
    assert set(known.headers) == set(unknown.headers)
    # Both addresses get a link (the unknown one signs up with it); no user is created yet.
    recipients = [m["To"] for m in await sent_messages(client)]
    assert recipients.count("nobody@example.com") == 1
    assert len(await _rows(client, "SELECT 1 FROM users WHERE email = 'nobody@example.com'")) == 0


async def test_magic_link_is_stored_only_as_a_hash(client: Any) -> None:
    token = await request_link(client, "hash@example.com")
    rows = await _rows(
        client, "SELECT token_hash, email, expires_at - created_at AS ttl FROM magic_links"
    )
    assert len(rows) == 1
    assert bytes(rows[0]["token_hash"]) == hashlib.sha256(token.encode()).digest()
    assert token.encode() not in bytes(rows[0]["token_hash"])
    assert rows[0]["ttl"].total_seconds() == 900


async def test_link_uses_public_base_url_not_host_header(client: Any) -> None:
    await client.post(
        "/api/v1/auth/login",
        json={"email": "host@example.com"},
        headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
    )
    url, _ = link_of((await sent_messages(client))[-1])
    assert url == "http://127.0.0.1:8080/login"


async def test_magic_link_works_once(client: Any) -> None:
    token = await request_link(client, "once@example.com")
    first = await client.post("/api/v1/auth/verify", json={"token": token})
    assert first.status == 200
    second = await client.post("/api/v1/auth/verify", json={"token": token})
    assert second.status == 401
    assert (await second.json())["message"] == "sign-in link is invalid, expired or already used"


async def test_concurrent_verifies_of_one_link_succeed_once(client: Any) -> None:
    token = await request_link(client, "race@example.com")
    responses = await asyncio.gather(
        *(client.post("/api/v1/auth/verify", json={"token": token}) for _ in range(5))
    )
    assert sorted(r.status for r in responses) == [200, 401, 401, 401, 401]
    assert len(await _rows(client, "SELECT 1 FROM refresh_families")) == 1


async def test_expired_magic_link_is_refused(client: Any) -> None:
    token = await request_link(client, "late@example.com")
    async with client.server.app[keys.pool].acquire() as conn:
        await conn.execute("UPDATE magic_links SET expires_at = now() - interval '1 second'")
    resp = await client.post("/api/v1/auth/verify", json={"token": token})
    assert resp.status == 401
    assert len(await _rows(client, "SELECT 1 FROM users")) == 0


async def test_invalid_email_is_a_field_error(client: Any) -> None:
    resp = await client.post("/api/v1/auth/login", json={"email": "not-an-email"})
    assert resp.status == 400
    assert "email" in (await resp.json())["errors"]
    resp = await client.post("/api/v1/auth/login", json={"email": "a@example.com", "x": 1})
    assert resp.status == 400
    assert await sent_messages(client) == []
    assert await _rows(client, "SELECT 1 FROM magic_links") == []


async def test_login_is_rate_limited_per_email(make_settings: Any, aiohttp_client: Any) -> None:
    from server.app import create_app

    client = await aiohttp_client(create_app(make_settings(LOGIN_RATE_PER_EMAIL="2")))
    for _ in range(2):
        resp = await client.post("/api/v1/auth/login", json={"email": "flood@example.com"})
        assert resp.status == 202
    resp = await client.post("/api/v1/auth/login", json={"email": "FLOOD@example.com"})
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["status_code"] == 429
    # another address from the same client is still fine
    resp = await client.post("/api/v1/auth/login", json={"email": "other@example.com"})
    assert resp.status == 202
    assert len(await _rows(client, "SELECT 1 FROM magic_links")) == 3


async def test_login_is_rate_limited_per_ip(make_settings: Any, aiohttp_client: Any) -> None:
    from server.app import create_app

    client = await aiohttp_client(create_app(make_settings(LOGIN_RATE_PER_IP="3")))
    statuses = []
    for i in range(5):
        resp = await client.post("/api/v1/auth/login", json={"email": f"u{i}@example.com"})
        statuses.append(resp.status)
    assert statuses == [202, 202, 202, 429, 429]
    assert len(await _rows(client, "SELECT 1 FROM magic_links")) == 3
