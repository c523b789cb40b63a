"""Refresh rotation, reuse detection, logout and roles."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSMsgType

from handlers import keys
from services.realtime.codecs.arena import CLOSE_FORBIDDEN
from tests.auth.flows import bearer, sign_in
from tests.helpers import DEADLINE, connect, make_user


async def _refresh(client: Any, token: str) -> Any:
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": token})


async def test_every_refresh_returns_a_new_refresh_token(client: Any) -> None:
    session = await sign_in(client, "rotate@example.com")
    first = await _refresh(client, session["refresh_token"])
    assert first.status == 200
    body = await first.json()
    assert body["refresh_token"] != session["refresh_token"]
    assert body["user"]["id"] == session["user"]["id"]
    me = await client.get("/api/v1/auth/me", headers=bearer(body["access_token"]))
    assert me.status == 200
    second = await _refresh(client, body["refresh_token"])
    assert second.status == 200


async def test_reusing_a_refresh_token_revokes_the_whole_family(client: Any) -> None:
    session = await sign_in(client, "reuse@example.com")
    rotated = await (await _refresh(client, session["refresh_token"])).json()
    reuse = await _refresh(client, session["refresh_token"])
    assert reuse.status == 401
    assert "already used" in (await reuse.json())["message"]
    # the newest token of the family stops working too
    newest = await _refresh(client, rotated["refresh_token"])
    assert newest.status == 401
    assert "revoked" in (await newest.json())["message"]
    # another login (another family) is unaffected
    other = await sign_in(client, "reuse@example.com")
    assert (await _refresh(client, other["refresh_token"])).status == 200


async def test_concurrent_refreshes_with_one_token_let_at_most_one_through(client: Any) -> None:
    session = await sign_in(client, "race@example.com")
    responses = await asyncio.gather(
        *(_refresh(client, session["refresh_token"]) for _ in range(4))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200, 401, 401, 401]
    winner = next(r for r in responses if r.status == 200)
    # the parallel reuse revoked the family, so even the winner's new token is dead
    assert (await _refresh(client, (await winner.json())["refresh_token"])).status == 401


async def test_access_token_is_not_a_refresh_token(client: Any) -> None:
    session = await sign_in(client, "typ@example.com")
    resp = await _refresh(client, session["access_token"])
    assert resp.status == 401
    assert (await resp.json())["message"] == "wrong token type"
    resp = await client.get("/api/v1/auth/me", headers=bearer(session["refresh_token"]))
    assert resp.status == 401


async def test_refresh_picks_up_a_changed_role(client: Any) -> None:
    session = await sign_in(client, "promote@example.com")
    _, admin = await make_user(client, "admin")
    resp = await client.put(
        f"/api/v1/users/{session['user']['id']}/role",
        json={"role": "vendor"},
        headers=bearer(admin),
    )
    assert resp.status == 200
    assert (await resp.json())["role"] == "vendor"
    body = await (await _refresh(client, session["refresh_token"])).json()
    claims = client.server.app[keys.tokens].decode(body["access_token"], ("access",))
    assert claims["role"] == "vendor"


async def test_only_admins_change_roles(client: Any) -> None:
    user_id, buyer = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    for token in (buyer, vendor):
        resp = await client.put(
            f"/api/v1/users/{user_id}/role", json={"role": "admin"}, headers=bearer(token)
        )
        assert resp.status == 403
    resp = await client.put(f"/api/v1/users/{user_id}/role", json={"role": "admin"})
    assert resp.status == 401
    _, admin = await make_user(client, "admin")
    resp = await client.put(
        f"/api/v1/users/{user_id}/role", json={"role": "root"}, headers=bearer(admin)
    )
    assert resp.status == 400
    resp = await client.put(
        "/api/v1/users/not-a-uuid/role", json={"role": "vendor"}, headers=bearer(admin)
    )
    assert resp.status == 404
    async with client.server.app[keys.pool].acquire() as conn:
        assert await conn.fetchval("SELECT role FROM users WHERE id = $1::uuid", user_id) == "buyer"


async def test_logout_revokes_the_family_and_closes_websockets(client: Any) -> None:
    session = await sign_in(client, "bye@example.com")
    ws = await connect(client, session["access_token"])
    resp = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": session["refresh_token"]}
    )
    assert resp.status == 204
    msg = await ws.receive(timeout=DEADLINE)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    # 4003, not 4001: the session is over, so clients must not reconnect with a cached token.
    assert ws.close_code == CLOSE_FORBIDDEN
    assert msg.extra == "logged out"
    assert (await _refresh(client, session["refresh_token"])).status == 401


async def test_logout_with_a_bad_token_changes_nothing(client: Any) -> None:
    session = await sign_in(client, "stay@example.com")
    resp = await client.post("/api/v1/auth/logout", json={"refresh_token": "x.y.z"})
    assert resp.status == 401
    resp = await client.post("/api/v1/auth/logout", json={"refresh_token": session["access_token"]})
    assert resp.status == 401
    assert (await _refresh(client, session["refresh_token"])).status == 200


async def test_me_requires_a_valid_access_token(client: Any) -> None:
    resp = await client.get("/api/v1/auth/me")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    resp = await client.get("/api/v1/auth/me", headers=bearer("garbage"))
    assert resp.status == 401
    resp = await client.get("/api/v1/auth/me?token=whatever")
    assert resp.status == 401


async def test_service_token_describes_itself(client: Any) -> None:
    token = client.server.app[keys.tokens].issue_service("billing").token
    resp = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert resp.status == 200
    assert await resp.json() == {"id": "service:billing", "email": None, "role": "service"}
