"""Magic-link abuse, Host-header injection, client-IP spoofing and SQL-injection strings."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from email_validator import EmailNotValidError, validate_email

from handlers import keys
from server.app import create_app
from tests.auth.flows import bearer, link_of, request_link, sent_messages, sign_in
from tests.helpers import connect, make_user, request

INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE users; --",
    "admin'--@example.com",
    "x@example.com'; DELETE FROM magic_links; --",
    '" OR ""="',
    "1; SELECT pg_sleep(5)",
    "\\x00\\'",
    "user:1' OR 1=1 --",
]


def _is_valid_address(value: str) -> bool:
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


async def _counts(client: Any) -> dict[str, int]:
    async with client.server.app[keys.pool].acquire() as conn:
        return {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
            for table in ("users", "magic_links", "refresh_families", "refresh_tokens")
        }


async def _users(client: Any) -> list[asyncpg.Record]:
    async with client.server.app[keys.pool].acquire() as conn:
        rows: list[asyncpg.Record] = await conn.fetch("SELECT id, email, role FROM users")
        return rows


async def test_tampered_magic_link_is_refused_and_creates_nothing(client: Any) -> None:
    token = await request_link(client, "tamper@example.com")
    before = await _counts(client)
    flipped = ("A" if token[0] != "A" else "B") + token[1:]
    for bad in (flipped, token[:-1], token + "x", token.upper()):
        resp = await client.post("/api/v1/auth/verify", json={"token": bad})
        assert resp.status == 401
    assert await _counts(client) == before
    # the genuine link still works once
    assert (await client.post("/api/v1/auth/verify", json={"token": token})).status == 200
    assert (await client.post("/api/v1/auth/verify", json={"token": token})).status == 401


async def test_expired_link_creates_no_user_and_no_session(client: Any) -> None:
    token = await request_link(client, "expired@example.com")
    async with client.server.app[keys.pool].acquire() as conn:
        await conn.execute("UPDATE magic_links SET expires_at = now() - interval '1 second'")
    resp = await client.post("/api/v1/auth/verify", json={"token": token})
    assert resp.status == 401
    counts = await _counts(client)
    assert counts["users"] == counts["refresh_families"] == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example"},
        {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
        {"Forwarded": "host=evil.example;proto=https"},
        {"Host": "127.0.0.1:8080@evil.example"},
    ],
)
async def test_host_header_injection_does_not_change_the_link(
    client: Any, headers: dict[str, str]
) -> None:
    resp = await client.post(
        "/api/v1/auth/login", json={"email": "host@example.com"}, headers=headers
    )
    assert resp.status == 202
    messages = await sent_messages(client)
    assert len(messages) == 1
    url, _ = link_of(messages[0])
    assert url == "http://127.0.0.1:8080/login"
    assert "evil" not in messages[0].get_content()


async def test_spoofed_forwarded_for_does_not_escape_the_ip_limit(
    make_settings: Any, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(create_app(make_settings(LOGIN_RATE_PER_IP="2")))
    statuses = []
    for i in range(4):
        resp = await client.post(
            "/api/v1/auth/login",
            json={"email": f"spoof{i}@example.com"},
            headers={"X-Forwarded-For": f"10.0.0.{i}"},
        )
        statuses.append(resp.status)
    assert statuses == [202, 202, 429, 429]
    assert (await _counts(client))["magic_links"] == 2


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(
    make_settings: Any, aiohttp_client: Any
) -> None:
    settings = make_settings(LOGIN_RATE_PER_IP="1", TRUSTED_PROXIES="127.0.0.0/8,::1")
    client = await aiohttp_client(create_app(settings))

    async def login(xff: str) -> int:
        resp = await client.post(
            "/api/v1/auth/login",
            json={"email": "proxy@example.com"},
            headers={"X-Forwarded-For": xff},
        )
        return int(resp.status)

    # the client-written left part is ignored: the first untrusted hop from the right counts
    assert await login("1.1.1.1, 203.0.113.5") == 202
    assert await login("9.9.9.9, 203.0.113.5") == 429
    assert await login("203.0.113.6") == 202


def _from(ip: str) -> dict[str, str]:
    """Headers of a request relayed by the trusted proxy (loopback) for client ``ip``."""
    return {"X-Forwarded-For": ip}


async def _login_from(client: Any, email: str, ip: str) -> int:
    resp = await client.post("/api/v1/auth/login", json={"email": email}, headers=_from(ip))
    if resp.status == 429:
        assert int(resp.headers["Retry-After"]) >= 1
    return int(resp.status)


async def test_a_stranger_cannot_lock_a_person_out_of_sign_in(
    make_settings: Any, aiohttp_client: Any
) -> None:
    """The per-e-mail limit counts per (e-mail, client IP): a stranger who spends the limit for
    the victim's address from their own address only blocks themselves."""
    settings = make_settings(LOGIN_RATE_PER_EMAIL="2", TRUSTED_PROXIES="127.0.0.0/8,::1")
    client = await aiohttp_client(create_app(settings))
    victim = "victim@example.com"
    stranger = [await _login_from(client, victim, "203.0.113.66") for _ in range(4)]
    assert stranger == [202, 202, 429, 429]
    # the victim, from their own address, still gets links (and, at their pace, the limit too)
    own = [await _login_from(client, victim, "198.51.100.7") for _ in range(3)]
    assert own == [202, 202, 429]
    assert (await _counts(client))["magic_links"] == 4
    assert len(await sent_messages(client)) == 4


async def test_the_per_email_ceiling_holds_across_addresses(
    make_settings: Any, aiohttp_client: Any
) -> None:
    """Many addresses together still cannot mail one person more than the global ceiling."""
    settings = make_settings(
        LOGIN_RATE_PER_EMAIL="2",
        LOGIN_RATE_PER_EMAIL_GLOBAL="5",
        TRUSTED_PROXIES="127.0.0.0/8,::1",
    )
    client = await aiohttp_client(create_app(settings))
    victim = "bombed@example.com"
    statuses = [await _login_from(client, victim, f"203.0.113.{i}") for i in (1, 1, 2, 2, 3, 3, 4)]
    assert statuses == [202, 202, 202, 202, 202, 429, 429]
    assert await _login_from(client, victim, "198.51.100.7") == 429
    assert await _login_from(client, "someone-else@example.com", "203.0.113.4") == 202
    assert (await _counts(client))["magic_links"] == 6


@pytest.mark.parametrize("value", INJECTIONS)
async def test_sql_injection_strings_in_auth_fields_are_harmless(client: Any, value: str) -> None:
    session = await sign_in(client, "victim@example.com")
    user_id, admin = await make_user(client, "admin")
    before = await _counts(client)
    users_before = await _users(client)

    resp = await client.post("/api/v1/auth/login", json={"email": value})
    if _is_valid_address(value):
        # a legal (if odd) address is data like any other: stored verbatim, as one link
        assert resp.status == 202
        async with client.server.app[keys.pool].acquire() as conn:
            stored = await conn.fetchval(
                "SELECT email FROM magic_links WHERE email <> 'victim@example.com'"
            )
        assert stored == value.lower()
        before["magic_links"] += 1
    else:
        assert resp.status == 400
    for path, field in (
        ("/api/v1/auth/verify", "token"),
        ("/api/v1/auth/refresh", "refresh_token"),
        ("/api/v1/auth/logout", "refresh_token"),
    ):
        resp = await client.post(path, json={field: value})
        assert resp.status == 401, (path, await resp.text())
    resp = await client.put(
        f"/api/v1/users/{session['user']['id']}/role", json={"role": value}, headers=bearer(admin)
    )
    assert resp.status == 400
    resp = await client.put(
        "/api/v1/users/x' OR '1'='1/role", json={"role": "admin"}, headers=bearer(admin)
    )
    assert resp.status == 404
    resp = await client.get("/api/v1/auth/me", headers=bearer(value))
    assert resp.status == 401

    ws = await connect(client, session["access_token"])
    reply = await request(ws, "subscribe", channel=value)
    assert reply["error"]["code"] in {"invalid_channel", "permission_denied"}
    reply = await request(ws, "refresh", token=value)
    assert reply["error"]["code"] == "unauthenticated"
    await ws.close()

    assert await _counts(client) == before
    assert await _users(client) == users_before
    assert user_id in {str(row["id"]) for row in users_before}
    # the real session is intact
    resp = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert resp.status == 200
