"""Every kind of bad token is refused with 401 (REST) or close 4001 (WebSocket), and a refused
token never changes stored data or receives a publication."""

from __future__ import annotations

import time
import warnings
from typing import Any

import jwt
import pytest
from aiohttp import WSMsgType

from handlers import keys
from services.realtime.codecs.arena import CLOSE_UNAUTHENTICATED
from tests.auth.flows import bearer, sign_in
from tests.auth.tokens import alg_none, claims, forge
from tests.conftest import TEST_SECRET
from tests.helpers import DEADLINE, make_user, send

WRONG_KEY = "a-completely-different-secret-of-enough-length-0123"
NOW = int(time.time())


def _hs512(**overrides: Any) -> str:
    """Signed with the server's real secret, but with another HMAC algorithm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return forge(TEST_SECRET, "HS512", **overrides)


BAD_TOKENS = {
    "forged": lambda sub: forge(WRONG_KEY, sub=sub, role="admin"),
    "expired": lambda sub: forge(sub=sub, role="admin", iat=NOW - 3600, exp=NOW - 60),
    "wrong_audience": lambda sub: forge(sub=sub, role="admin", aud="another-service"),
    "wrong_issuer": lambda sub: forge(sub=sub, role="admin", iss="someone-else"),
    "alg_none": lambda sub: alg_none(sub=sub, role="admin"),
    "alg_hs512": lambda sub: _hs512(sub=sub, role="admin"),
    "unknown_kid": lambda sub: forge(sub=sub, role="admin", kid="k9"),
    "no_kid": lambda sub: forge(sub=sub, role="admin", kid=None),
    "refresh_as_access": lambda sub: forge(sub=sub, role="admin", typ="refresh"),
    "service_typ_user_role": lambda sub: forge(sub=sub, role="admin", typ="service"),
    "access_with_service_role": lambda sub: forge(sub=sub, role="service"),
    "missing_exp": lambda sub: forge(sub=sub, role="admin", exp=None),
    "missing_jti": lambda sub: forge(sub=sub, role="admin", jti=None),
    "missing_typ": lambda sub: forge(sub=sub, role="admin", typ=None),
    "missing_iat": lambda sub: forge(sub=sub, role="admin", iat=None),
    "missing_aud": lambda sub: forge(sub=sub, role="admin", aud=None),
    "garbage": lambda sub: "eyJhbGciOiJIUzI1NiJ9.e30.",
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_token_is_refused_on_rest_and_changes_nothing(client: Any, kind: str) -> None:
    victim_id, _ = await make_user(client, "buyer")
    attacker_id, _ = await make_user(client, "buyer")
    token = BAD_TOKENS[kind](attacker_id)
    resp = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # a write guarded by the admin role the token claims
    resp = await client.put(
        f"/api/v1/users/{victim_id}/role", json={"role": "admin"}, headers=bearer(token)
    )
    assert resp.status == 401
    async with client.server.app[keys.pool].acquire() as conn:
        roles = {r["role"] for r in await conn.fetch("SELECT role FROM users")}
    assert roles == {"buyer"}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_token_closes_the_websocket_and_delivers_nothing(client: Any, kind: str) -> None:
    user_id, _ = await make_user(client)
    ws = await client.ws_connect("/ws")
    await send(ws, "authenticate", token=BAD_TOKENS[kind](user_id))
    await send(ws, "subscribe", channel=f"user:{user_id}")
    await client.server.app[keys.hub].publish(f"user:{user_id}", {"secret": True})
    frames = []
    while True:
        msg = await ws.receive(timeout=DEADLINE)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            break
        frames.append(msg.data)
    assert ws.close_code == CLOSE_UNAUTHENTICATED
    assert not any("secret" in frame for frame in frames)


async def test_refresh_token_signed_with_a_wrong_key_is_refused(client: Any) -> None:
    session = await sign_in(client, "victim@example.com")
    real = jwt.decode(session["refresh_token"], options={"verify_signature": False})
    fake = jwt.encode(real, WRONG_KEY, algorithm="HS256", headers={"kid": "k1"})
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": fake})
    assert resp.status == 401
    # the real one was not burnt by the attempt
    resp = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert resp.status == 200


async def test_access_token_is_refused_as_refresh_and_logout(client: Any) -> None:
    session = await sign_in(client, "typ@example.com")
    for path in ("/api/v1/auth/refresh", "/api/v1/auth/logout"):
        resp = await client.post(path, json={"refresh_token": session["access_token"]})
        assert resp.status == 401
    forged_refresh = forge(typ="refresh", fam="00000000-0000-0000-0000-000000000000")
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": forged_refresh})
    assert resp.status == 401
    assert claims()["typ"] == "access"


async def test_refresh_reuse_revokes_family(client: Any) -> None:
    session = await sign_in(client, "reuse@example.com")
    first = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    newest = (await first.json())["refresh_token"]
    again = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert again.status == 401
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": newest})
    assert resp.status == 401
    async with client.server.app[keys.pool].acquire() as conn:
        reason = await conn.fetchval("SELECT revoke_reason FROM refresh_families")
    assert reason == "reuse"
