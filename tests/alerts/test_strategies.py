"""Strategies API: secrets shown once and stored hashed/encrypted, CRUD, sharing, permissions."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from handlers import keys
from tests.alerts.util import auth, create_strategy, tv_path
from tests.helpers import connect, make_user, request, service_token


async def test_create_returns_secrets_once_and_stores_none_in_clear(client: Any) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token, "  Mean reversion  ")
    assert strategy["name"] == "Mean reversion"
    assert strategy["access"] == "owner"
    assert strategy["channel"] == f"alerts:{strategy['id']}"
    secrets = strategy["secrets"]
    assert secrets["webhook_url"].endswith(f"/webhooks/tv/{secrets['url_secret']}")
    assert secrets["signing_secret"].startswith("whsec_")
    assert len(base64.b64decode(secrets["signing_secret"].removeprefix("whsec_"))) == 32
    async with client.server.app[keys.pool].acquire() as conn:
        row = await conn.fetchrow(
            "SELECT url_secret_sha256, signing_secret_enc FROM strategy_secrets "
            "WHERE strategy_id = $1::uuid",
            strategy["id"],
        )
        dump = str(await conn.fetch("SELECT * FROM strategy_secrets"))
    assert (
        bytes(row["url_secret_sha256"]) == hashlib.sha256(secrets["url_secret"].encode()).digest()
    )
    assert secrets["signing_secret"].encode() not in bytes(row["signing_secret_enc"])
    assert secrets["url_secret"] not in dump
    assert secrets["signing_secret"].removeprefix("whsec_") not in dump
    fetched = await (
        await client.get(f"/api/v1/strategies/{strategy['id']}", headers=auth(token))
    ).json()
    assert "secrets" not in fetched
    assert secrets["url_secret"] not in str(fetched)
    assert len(fetched["secret_generations"]) == 1


async def test_validation_and_authentication_errors(client: Any) -> None:
    _, token = await make_user(client)
    for body in ({}, {"name": ""}, {"name": "   "}, {"name": "x" * 201}, {"name": "a", "x": 1}):
        response = await client.post("/api/v1/strategies", json=body, headers=auth(token))
        assert response.status == 400, body
        assert (await response.json())["errors"]
    assert (await client.post("/api/v1/strategies", json={"name": "a"})).status == 401
    service = await client.post(
        "/api/v1/strategies", json={"name": "a"}, headers=auth(service_token(client))
    )
    assert service.status == 403


async def test_list_shows_own_and_shared_strategies(client: Any) -> None:
    _, alice = await make_user(client)
    bob_id, bob = await make_user(client)
    mine = await create_strategy(client, alice, "Alice's")
    theirs = await create_strategy(client, bob, "Bob's")
    response = await client.patch(
        f"/api/v1/strategies/{mine['id']}", json={"shared_with": [bob_id]}, headers=auth(alice)
    )
    assert response.status == 200
    assert (await response.json())["shared_with"] == [bob_id]
    listed = await (await client.get("/api/v1/strategies", headers=auth(bob))).json()
    by_id = {item["id"]: item for item in listed["items"]}
    assert set(by_id) == {mine["id"], theirs["id"]}
    assert by_id[mine["id"]]["access"] == "shared"
    assert "shared_with" not in by_id[mine["id"]]
    alice_list = await (await client.get("/api/v1/strategies", headers=auth(alice))).json()
    assert [item["id"] for item in alice_list["items"]] == [mine["id"]]


async def test_only_the_owner_changes_a_strategy(client: Any) -> None:
    _, owner = await make_user(client)
    friend_id, friend = await make_user(client)
    _, stranger = await make_user(client)
    strategy = await create_strategy(client, owner)
    url = f"/api/v1/strategies/{strategy['id']}"
    await client.patch(url, json={"shared_with": [friend_id]}, headers=auth(owner))
    assert (await client.get(url, headers=auth(friend))).status == 200
    assert (await client.get(url, headers=auth(stranger))).status == 404
    assert (await client.patch(url, json={"name": "x"}, headers=auth(friend))).status == 403
    assert (await client.patch(url, json={"name": "x"}, headers=auth(stranger))).status == 404
    assert (await client.post(f"{url}/rotate", headers=auth(friend))).status == 403
    assert (await client.delete(url, headers=auth(friend))).status == 403
    assert (await client.delete(url, headers=auth(stranger))).status == 404
    assert (await client.get("/api/v1/strategies/not-a-uuid", headers=auth(owner))).status == 404


async def test_patch_rename_version_and_sharing_errors(client: Any) -> None:
    owner_id, owner = await make_user(client)
    strategy = await create_strategy(client, owner)
    url = f"/api/v1/strategies/{strategy['id']}"
    renamed = await client.patch(url, json={"name": "Renamed", "version": 1}, headers=auth(owner))
    body = await renamed.json()
    assert renamed.status == 200, body
    assert (body["name"], body["version"]) == ("Renamed", 2)
    stale = await client.patch(url, json={"name": "Again", "version": 1}, headers=auth(owner))
    assert stale.status == 412
    ghost = "00000000-0000-4000-8000-000000000000"
    for shared in ([ghost], [owner_id], ["nope"]):
        response = await client.patch(url, json={"shared_with": shared}, headers=auth(owner))
        reply = await response.json()
        assert response.status == 400, reply
        assert "shared_with" in str(reply["errors"])
    current = await (await client.get(url, headers=auth(owner))).json()
    assert (current["name"], current["shared_with"]) == ("Renamed", [])


async def test_delete_removes_the_feed_and_its_webhook(client: Any) -> None:
    _, owner = await make_user(client)
    strategy = await create_strategy(client, owner)
    assert (await client.post(tv_path(strategy), data="buy")).status == 201
    url = f"/api/v1/strategies/{strategy['id']}"
    assert (await client.delete(url, headers=auth(owner))).status == 204
    assert (await client.get(url, headers=auth(owner))).status == 404
    assert (await client.post(tv_path(strategy), data="sell")).status == 404
    assert (await client.delete(url, headers=auth(owner))).status == 404


async def test_rotation_grace_is_capped_by_configuration(client: Any) -> None:
    _, owner = await make_user(client)
    strategy = await create_strategy(client, owner)
    url = f"/api/v1/strategies/{strategy['id']}/rotate"
    too_long = await client.post(url, json={"grace_seconds": 10**9}, headers=auth(owner))
    assert too_long.status == 400
    negative = await client.post(url, json={"grace_seconds": -1}, headers=auth(owner))
    assert negative.status == 400
    rotated = await client.post(url, headers=auth(owner))
    body = await rotated.json()
    assert rotated.status == 200
    old, new = body["secret_generations"]
    expires = datetime.fromisoformat(old["expires_at"]) - datetime.now(UTC)
    assert timedelta(hours=23, minutes=59) < expires <= timedelta(hours=24)
    assert new["expires_at"] is None
    # Both URL secrets work during the grace period.
    assert (await client.post(tv_path(strategy), data="old url")).status == 201
    assert (await client.post(tv_path(body), data="new url")).status == 201


async def test_alerts_channel_permission_follows_ownership_and_sharing(client: Any) -> None:
    _, owner = await make_user(client)
    friend_id, friend = await make_user(client)
    _, stranger = await make_user(client)
    _, admin = await make_user(client, "admin")
    strategy = await create_strategy(client, owner)
    channel = strategy["channel"]
    url = f"/api/v1/strategies/{strategy['id']}"

    async def may_subscribe(token: str, name: str = channel) -> bool:
        ws = await connect(client, token)
        try:
            reply = await request(ws, "subscribe", channel=name)
        finally:
            await ws.close()
        if "error" in reply:
            assert reply["error"]["code"] == "permission_denied", reply
            return False
        return True

    assert await may_subscribe(owner)
    assert await may_subscribe(admin)
    assert not await may_subscribe(friend)
    assert not await may_subscribe(stranger)
    assert not await may_subscribe(owner, "alerts:not-a-uuid")
    assert not await may_subscribe(owner, "alerts:00000000-0000-4000-8000-000000000000")
    await client.patch(url, json={"shared_with": [friend_id]}, headers=auth(owner))
    assert await may_subscribe(friend)
    assert not await may_subscribe(stranger)
    await client.patch(url, json={"shared_with": []}, headers=auth(owner))
    assert not await may_subscribe(friend)


async def test_endpoints_are_in_the_openapi_document(client: Any) -> None:
    spec = await (await client.get("/api/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths["/api/v1/strategies"]) == {"get", "post"}
    assert set(paths["/api/v1/strategies/{strategy_id}"]) == {"get", "patch", "delete"}
    assert "post" in paths["/api/v1/strategies/{strategy_id}/rotate"]
    assert set(paths["/api/v1/alerts/{alert_id}"]) == {"get", "patch", "delete"}
    assert set(paths["/api/v1/alerts"]) == {"get", "post"}
    assert "get" in paths["/api/v1/alerts/stats"]
    assert "get" in paths["/api/v1/alerts/series"]
    assert "get" in paths["/api/v1/strategies/by-secret/{secret}"]
    assert "201" in paths["/webhooks/alerts/{strategy_id}"]["post"]["responses"]
    assert "404" in paths["/webhooks/tv/{secret}"]["post"]["responses"]


@pytest.mark.parametrize(
    ("path_suffix", "method", "body"),
    [
        ("/rotate", "POST", {"grace_seconds": False}),
        ("", "PATCH", {"name": "x", "version": True}),
    ],
)
async def test_booleans_are_not_integers(
    client: Any, path_suffix: str, method: str, body: dict[str, Any]
) -> None:
    _, token = await make_user(client, "buyer")
    headers = {"Authorization": f"Bearer {token}"}
    created = await client.post("/api/v1/strategies", json={"name": "Feed"}, headers=headers)
    strategy = await created.json()
    response = await client.request(
        method, f"/api/v1/strategies/{strategy['id']}{path_suffix}", json=body, headers=headers
    )
    assert response.status == 400
    assert (await response.json())["status_code"] == 400
