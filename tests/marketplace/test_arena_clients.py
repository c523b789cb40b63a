"""What the Arena marketplace clients do, with their exact requests: change a proposal's status
at its own URL, invite vendors by e-mail (who then sign in through the link), and keep a
profile at ``/api/v1/users/me``."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest

from handlers import keys
from tests.auth.flows import bearer, sent_messages
from tests.helpers import connect, make_user, request, service_token
from tests.marketplace.test_live_updates import next_pub
from tests.marketplace.util import auth, post_proposal, post_request

INVITE_LINK = r"(\S+)/invite#token=([A-Za-z0-9_\-]+)"


# -- PUT /api/v1/proposals/{id} {"status": ...} ---------------------------------------------


@pytest.mark.parametrize("suffix", ["/", ""], ids=["seed-trailing-slash", "no-slash"])
async def test_put_proposal_changes_status_like_the_status_endpoint(
    client: Any, suffix: str
) -> None:
    _buyer_id, buyer = await make_user(client, "buyer")
    vendor_id, vendor = await make_user(client, "vendor")
    created = await post_request(client, buyer)
    proposal = await post_proposal(client, vendor, created["id"])
    ws = await connect(client, vendor)
    assert "result" in await request(ws, "subscribe", channel=f"user:{vendor_id}")

    # The marketplace client's exact request (PUT /api/v1/proposals/{id}/): no version, no
    # If-Match.
    response = await client.put(
        f"/api/v1/proposals/{proposal['id']}{suffix}",
        json={"status": "accepted"},
        headers=auth(buyer),
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["status"] == "accepted"
    assert body["version"] == proposal["version"] + 1
    assert response.headers["ETag"] == f'"{body["version"]}"'

    # Published live through the outbox, like PUT .../status (the relay may still be
    # delivering the proposal.created event the vendor subscribed in time for).
    event = await next_pub(ws, f"user:{vendor_id}")
    if event["type"] == "proposal.created":
        event = await next_pub(ws, f"user:{vendor_id}")
    assert event["type"] == "proposal.status_changed"
    assert event["previous_status"] == "submitted"
    assert event["proposal"] == body
    # Stored, and the request is awarded in the same transaction.
    stored = await client.get(f"/api/v1/proposals/{proposal['id']}", headers=auth(vendor))
    assert (await stored.json())["status"] == "accepted"
    parent = await client.get(f"/api/v1/requests/{created['id']}", headers=auth(buyer))
    assert (await parent.json())["status"] == "awarded"
    await ws.close()


async def test_put_proposal_refuses_illegal_transitions_and_other_parties(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    created = await post_request(client, buyer)
    proposal = await post_proposal(client, vendor, created["id"])
    url = f"/api/v1/proposals/{proposal['id']}"

    # Only the request's owner accepts.
    response = await client.put(url, json={"status": "accepted"}, headers=auth(vendor))
    assert response.status == 403
    assert (await client.put(url, json={"status": "rejected"}, headers=auth(buyer))).status == 200
    # rejected is final: 409 with the reason.
    response = await client.put(url, json={"status": "accepted"}, headers=auth(buyer))
    assert response.status == 409
    error = await response.json()
    assert error["message"] == "a rejected proposal cannot become accepted"
    # Unknown statuses are a field error; nothing changed.
    response = await client.put(url, json={"status": "approved"}, headers=auth(buyer))
    assert response.status == 400
    stored = await client.get(url, headers=auth(buyer))
    assert (await stored.json())["status"] == "rejected"


# -- invitations ---------------------------------------------------------------------------


async def _invite_token(client: Any, email: str) -> tuple[str, str]:
    """``(url before the fragment, token)`` of the newest invitation mailed to ``email``."""
    mine = [m for m in await sent_messages(client) if m["To"] == email.lower()]
    assert mine, f"no message for {email}"
    found = re.search(INVITE_LINK, mine[-1].get_content())
    assert found is not None, mine[-1].get_content()
    return found.group(1), found.group(2)


async def _invite(client: Any, token: str, request_id: str, email: str) -> Any:
    return await client.post(
        f"/api/v1/requests/{request_id}/invites", json={"email": email}, headers=auth(token)
    )


async def _accept(client: Any, invite_token: str) -> Any:
    return await client.post("/api/v1/invites/accept", json={"token": invite_token})


async def test_invited_vendor_signs_in_sees_the_request_and_proposes(client: Any) -> None:
    _buyer_id, buyer = await make_user(client, "buyer")
    created = await post_request(client, buyer)
    await client.patch(
        f"/api/v1/requests/{created['id']}", json={"status": "closed"}, headers=auth(buyer)
    )
    reopened = await client.patch(
        f"/api/v1/requests/{created['id']}", json={"status": "open"}, headers=auth(buyer)
    )
    assert reopened.status == 200
    email = "New.Vendor@Example.com"

    response = await _invite(client, buyer, created["id"], email)
    assert response.status == 201, await response.text()
    invite = await response.json()
    assert invite["request_id"] == created["id"]
    assert invite["email"] == "new.vendor@example.com"
    assert "token" not in invite
    base, token = await _invite_token(client, email)
    assert base == client.server.app[keys.config].http.public_base_url

    # Following the link signs the new vendor in.
    response = await _accept(client, token)
    assert response.status == 200, await response.text()
    session = await response.json()
    assert session["user"]["email"] == "new.vendor@example.com"
    assert session["user"]["role"] == "vendor"
    vendor = session["access_token"]
    me = await client.get("/api/v1/auth/me", headers=bearer(vendor))
    assert (await me.json())["role"] == "vendor"

    # The request is in the vendor's list and room; they can propose at once.
    listed = await client.get("/api/v1/requests", headers=auth(vendor))
    assert created["id"] in [item["id"] for item in (await listed.json())["items"]]
    ws = await connect(client, vendor)
    assert "result" in await request(ws, "subscribe", channel=f"proposals:{created['id']}")
    await post_proposal(client, vendor, created["id"])
    await ws.close()

    # Single use.
    assert (await _accept(client, token)).status == 401
    # The session is a real one: its refresh token rotates.
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert refreshed.status == 200


async def test_invited_vendor_keeps_seeing_a_closed_request(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    _, outsider = await make_user(client, "vendor")
    created = await post_request(client, buyer)
    assert (await _invite(client, buyer, created["id"], "closing@example.com")).status == 201
    _, token = await _invite_token(client, "closing@example.com")
    vendor = (await (await _accept(client, token)).json())["access_token"]
    await client.patch(
        f"/api/v1/requests/{created['id']}", json={"status": "closed"}, headers=auth(buyer)
    )
    url = f"/api/v1/requests/{created['id']}"
    assert (await client.get(url, headers=auth(vendor))).status == 200
    assert (await client.get(url, headers=auth(outsider))).status == 404
    ws = await connect(client, outsider)
    assert "error" in await request(ws, "subscribe", channel=f"proposals:{created['id']}")
    await ws.close()


async def test_a_buyer_account_is_upgraded_to_vendor(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    other_id, _ = await make_user(client, "buyer", email="switching@example.com")
    created = await post_request(client, buyer)
    assert (await _invite(client, buyer, created["id"], "switching@example.com")).status == 201
    _, token = await _invite_token(client, "switching@example.com")
    session = await (await _accept(client, token)).json()
    assert session["user"]["id"] == other_id
    assert session["user"]["role"] == "vendor"


async def test_accepting_publishes_the_request_on_the_vendors_channel(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    vendor_id, vendor = await make_user(client, "vendor", email="live@example.com")
    ws = await connect(client, vendor)
    assert "result" in await request(ws, "subscribe", channel=f"user:{vendor_id}")
    created = await post_request(client, buyer)
    assert (await _invite(client, buyer, created["id"], "live@example.com")).status == 201
    _, token = await _invite_token(client, "live@example.com")
    assert (await _accept(client, token)).status == 200
    event = await next_pub(ws, f"user:{vendor_id}")
    assert event["type"] == "request.invited"
    assert event["request_id"] == created["id"]
    assert event["request"] == created
    await ws.close()


async def test_only_the_owner_invites_and_only_to_open_requests(client: Any) -> None:
    _, buyer = await make_user(client, "buyer", email="owner@example.com")
    _, vendor = await make_user(client, "vendor")
    _, stranger = await make_user(client, "buyer")
    _, admin = await make_user(client, "admin")
    created = await post_request(client, buyer)
    rid = created["id"]
    assert (await _invite(client, vendor, rid, "x@example.com")).status == 403
    assert (await _invite(client, stranger, rid, "x@example.com")).status == 404
    assert (await _invite(client, admin, rid, "x@example.com")).status == 201
    response = await _invite(client, buyer, rid, "not-an-address")
    assert response.status == 400
    assert "email" in (await response.json())["errors"]
    response = await _invite(client, buyer, rid, "owner@example.com")
    assert response.status == 400
    await client.patch(f"/api/v1/requests/{rid}", json={"status": "closed"}, headers=auth(buyer))
    response = await _invite(client, buyer, rid, "late@example.com")
    assert response.status == 409
    assert [m for m in await sent_messages(client) if m["To"] == "late@example.com"] == []


async def test_invitations_are_stored_hashed_and_expire(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    created = await post_request(client, buyer)
    assert (await _invite(client, buyer, created["id"], "expiring@example.com")).status == 201
    _, token = await _invite_token(client, "expiring@example.com")
    pool: asyncpg.Pool = client.server.app[keys.pool]
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT token_hash, expires_at - created_at AS ttl FROM request_invites"
        )
        assert all(token.encode() not in bytes(row["token_hash"]) for row in rows)
        assert rows[0]["ttl"].days == 7
        await conn.execute("UPDATE request_invites SET expires_at = now() - interval '1 second'")
    response = await _accept(client, token)
    assert response.status == 401
    assert "invalid, expired or already used" in (await response.json())["message"]
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM users WHERE email = 'expiring@example.com'")
            == 0
        )


# -- /api/v1/users/me ------------------------------------------------------------------------


async def test_profile_is_read_changed_and_validated(client: Any) -> None:
    user_id, token = await make_user(client, "vendor", email="profile@example.com")
    response = await client.get("/api/v1/users/me", headers=auth(token))
    assert response.status == 200
    profile = await response.json()
    assert profile["id"] == user_id
    assert profile["email"] == "profile@example.com"
    assert profile["role"] == "vendor"
    assert profile["name"] is None
    assert profile["company"] is None
    assert profile["notifications"] == {"email_on_proposal": True, "email_on_status": True}

    response = await client.patch(
        "/api/v1/users/me",
        json={
            "name": " Ada Lovelace ",
            "company": "Analytical Engines Ltd",
            "notifications": {"email_on_status": False},
        },
        headers=auth(token),
    )
    assert response.status == 200, await response.text()
    changed = await response.json()
    assert changed["name"] == "Ada Lovelace"
    assert changed["company"] == "Analytical Engines Ltd"
    assert changed["notifications"] == {"email_on_proposal": True, "email_on_status": False}
    # Stored: a new read (a new request) shows it; a partial change keeps the rest.
    response = await client.patch(
        "/api/v1/users/me",
        json={"notifications": {"email_on_proposal": False}},
        headers=auth(token),
    )
    again = await (await client.get("/api/v1/users/me", headers=auth(token))).json()
    assert again["notifications"] == {"email_on_proposal": False, "email_on_status": False}
    assert again["name"] == "Ada Lovelace"
    # null clears a field.
    response = await client.patch("/api/v1/users/me", json={"company": None}, headers=auth(token))
    assert (await response.json())["company"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"company": 7}, "company"),
        ({"notifications": {"email_on_status": "yes"}}, "notifications.email_on_status"),
        ({"notifications": {"sms": True}}, "notifications.sms"),
        ({"notifications": None}, None),
        ({"role": "admin"}, "role"),
        ({}, None),
    ],
)
async def test_profile_changes_are_validated(
    client: Any, body: dict[str, Any], field: str | None
) -> None:
    _, token = await make_user(client, "buyer")
    response = await client.patch("/api/v1/users/me", json=body, headers=auth(token))
    assert response.status == 400, await response.text()
    error = await response.json()
    if field is not None:
        assert field in error["errors"], error
    me = await (await client.get("/api/v1/users/me", headers=auth(token))).json()
    assert me["role"] == "buyer"
    assert me["name"] is None


async def test_profile_needs_an_account(client: Any) -> None:
    assert (await client.get("/api/v1/users/me")).status == 401
    response = await client.get("/api/v1/users/me", headers=auth(service_token(client)))
    assert response.status == 403


async def test_invited_vendors_hear_that_the_request_was_deleted(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    vendor_id, vendor = await make_user(client, "vendor", email="told@example.com")
    created = await post_request(client, buyer)
    assert (await _invite(client, buyer, created["id"], "told@example.com")).status == 201
    _, token = await _invite_token(client, "told@example.com")
    assert (await _accept(client, token)).status == 200
    ws = await connect(client, vendor)
    assert "result" in await request(ws, "subscribe", channel=f"user:{vendor_id}")
    response = await client.delete(f"/api/v1/requests/{created['id']}", headers=auth(buyer))
    assert response.status == 204
    event = await next_pub(ws, f"user:{vendor_id}")
    if event["type"] == "request.invited":  # the relay may deliver it after the subscription
        event = await next_pub(ws, f"user:{vendor_id}")
    assert event == {**event, "type": "request.deleted", "request_id": created["id"]}
    await ws.close()
