"""Who may start, read, cancel and watch analyses; input validation."""

from __future__ import annotations

import uuid
from typing import Any

from tests.analysis.support import auth, get, seed_request, start, subscribe, wait_status
from tests.helpers import connect, make_user, request


async def test_only_the_owner_and_admins_may_start(offline_client: Any) -> None:
    owner, _owner_token = await make_user(offline_client, "buyer")
    _other, other_token = await make_user(offline_client, "buyer")
    _vendor, vendor_token = await make_user(offline_client, "vendor")
    _admin, admin_token = await make_user(offline_client, "admin")
    request_id = await seed_request(offline_client, owner)
    url = f"/api/v1/requests/{request_id}/analyses"

    for token in (other_token, vendor_token):
        resp = await offline_client.post(
            url, json={"kind": "compare_proposals"}, headers=auth(token)
        )
        assert resp.status == 403
        assert (await resp.json())["error"] is True
        listed = await offline_client.get(url, headers=auth(token))
        assert listed.status == 403
    resp = await offline_client.post(url, json={"kind": "compare_proposals"})
    assert resp.status == 401

    created = await start(offline_client, admin_token, request_id)
    assert created["status"] == "queued"
    assert created["provider"] == "offline"


async def test_others_cannot_read_or_cancel_an_analysis(offline_client: Any) -> None:
    owner, owner_token = await make_user(offline_client, "buyer")
    _other, other_token = await make_user(offline_client, "buyer")
    _admin, admin_token = await make_user(offline_client, "admin")
    request_id = await seed_request(offline_client, owner)
    created = await start(offline_client, owner_token, request_id)
    url = f"/api/v1/analyses/{created['id']}"

    assert (await offline_client.get(url, headers=auth(other_token))).status == 404
    assert (await offline_client.delete(url, headers=auth(other_token))).status == 404
    assert (await offline_client.get(url)).status == 401
    done = await wait_status(offline_client, admin_token, created["id"], "done")
    assert done["text"]
    resp = await offline_client.delete(url, headers=auth(owner_token))
    assert resp.status == 409  # already finished


async def test_bad_input_gets_clear_4xx(offline_client: Any) -> None:
    owner, token = await make_user(offline_client, "buyer")
    request_id = await seed_request(offline_client, owner)
    url = f"/api/v1/requests/{request_id}/analyses"

    resp = await offline_client.post(url, json={"kind": "write_a_poem"}, headers=auth(token))
    body = await resp.json()
    assert resp.status == 400
    assert "kind" in body["errors"]
    resp = await offline_client.post(
        url, json={"kind": "compare_proposals", "x": 1}, headers=auth(token)
    )
    assert resp.status == 400
    resp = await offline_client.post(url, data=b"{not json", headers=auth(token))
    assert resp.status == 400
    missing = f"/api/v1/requests/{uuid.uuid4()}/analyses"
    resp = await offline_client.post(
        missing, json={"kind": "compare_proposals"}, headers=auth(token)
    )
    assert resp.status == 404
    resp = await offline_client.post(
        "/api/v1/requests/not-a-uuid/analyses",
        json={"kind": "compare_proposals"},
        headers=auth(token),
    )
    assert resp.status == 404
    assert (await offline_client.get("/api/v1/analyses/nope", headers=auth(token))).status == 404
    resp = await offline_client.get(f"/api/v1/analyses/{uuid.uuid4()}", headers=auth(token))
    assert resp.status == 404
    resp = await offline_client.get(f"{url}?limit=0", headers=auth(token))
    assert resp.status == 400


async def test_channel_permission_owner_and_admin_only(offline_client: Any) -> None:
    owner, owner_token = await make_user(offline_client, "buyer")
    _other, other_token = await make_user(offline_client, "buyer")
    _admin, admin_token = await make_user(offline_client, "admin")
    request_id = await seed_request(offline_client, owner)
    created = await start(offline_client, owner_token, request_id)
    channel = created["channel"]

    for token in (owner_token, admin_token):
        ws = await connect(offline_client, token)
        await subscribe(ws, channel, created["since"])
        await ws.close()
    ws = await connect(offline_client, other_token)
    for name in (channel, "analysis:not-a-uuid", f"analysis:{uuid.uuid4()}"):
        reply = await request(ws, "subscribe", channel=name)
        assert reply["error"]["code"] == "permission_denied", reply
        reply = await request(ws, "history", channel=name)
        assert reply["error"]["code"] == "permission_denied", reply
    await ws.close()
    await get(offline_client, owner_token, created["id"])
