"""``/api/v1/requests``: CRUD, validation, pagination, visibility and permissions."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from handlers import keys
from tests.helpers import make_user
from tests.marketplace.util import auth, post_proposal, post_request, set_status


async def test_buyer_creates_and_reads_a_request(client: Any) -> None:
    owner_id, buyer = await make_user(client, "buyer")
    deadline = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    response = await client.post(
        "/api/v1/requests",
        json={
            "title": "  Ticketing system  ",
            "requirements": [{"name": "SLA"}],
            "budget": 1234.5,
            "deadline": deadline,
        },
        headers=auth(buyer),
    )
    assert response.status == 201
    created = await response.json()
    assert response.headers["ETag"] == '"1"'
    assert response.headers["Location"] == f"/api/v1/requests/{created['id']}"
    assert created["owner_id"] == owner_id
    assert created["title"] == "Ticketing system"
    assert created["budget"] == "1234.50"
    assert created["currency"] == "USD"
    assert created["status"] == "open"
    assert created["version"] == 1
    assert created["requirements"] == [{"name": "SLA", "description": "", "priority": "must"}]

    response = await client.get(f"/api/v1/requests/{created['id']}", headers=auth(buyer))
    assert response.status == 200
    assert await response.json() == created


async def test_only_buyers_and_admins_post_requests(client: Any) -> None:
    _, vendor = await make_user(client, "vendor")
    _, admin = await make_user(client, "admin")
    body = {"title": "x"}
    response = await client.post("/api/v1/requests", json=body, headers=auth(vendor))
    assert response.status == 403
    assert (await response.json())["error"] is True
    response = await client.post("/api/v1/requests", json=body, headers=auth(admin))
    assert response.status == 201
    response = await client.post("/api/v1/requests", json=body)
    assert response.status == 401


INVALID_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"title": "ok", "colour": "red"}, "colour"),
    ({"title": 42}, "title"),
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"title": "nul \x00 byte"}, "title"),
    ({"title": "ok", "budget": -1}, "budget"),
    ({"title": "ok", "budget": "1.234"}, "budget"),
    ({"title": "ok", "budget": "NaN"}, "budget"),
    ({"title": "ok", "budget": True}, "budget"),
    ({"title": "ok", "currency": "usd"}, "currency"),
    ({"title": "ok", "deadline": "2030-01-01T00:00:00"}, "deadline"),
    ({"title": "ok", "deadline": "9999-12-31T23:59:59-23:00"}, "deadline"),
    ({"title": "ok", "requirements": "SSO"}, "requirements"),
    ({"title": "ok", "requirements": [{"name": "a", "weight": 3}]}, "requirements.0.weight"),
    (
        {"title": "ok", "requirements": [{"name": "a", "priority": "meh"}]},
        "requirements.0.priority",
    ),
    ({"title": "ok", "requirements": [{"name": "a"}, {"name": "a"}]}, "body"),
    ({"title": "ok", "requirements": [{"name": str(i)} for i in range(51)]}, "requirements"),
]


async def test_invalid_bodies_get_per_field_errors_and_store_nothing(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    for body, field in INVALID_BODIES:
        response = await client.post("/api/v1/requests", json=body, headers=auth(buyer))
        assert response.status == 400, body
        error = await response.json()
        assert error["status_code"] == 400
        assert field in error["errors"], (body, error)
    async with client.server.app[keys.pool].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM requests") == 0
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0


async def test_past_deadline_and_malformed_json_are_refused(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    response = await client.post(
        "/api/v1/requests", json={"title": "x", "deadline": past}, headers=auth(buyer)
    )
    assert response.status == 400
    assert "deadline" in (await response.json())["errors"]
    response = await client.post("/api/v1/requests", data=b"{not json", headers=auth(buyer))
    assert response.status == 400
    response = await client.post("/api/v1/requests", json=[1, 2], headers=auth(buyer))
    assert response.status == 400


async def test_sql_injection_strings_are_stored_verbatim(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    other = await post_request(client, buyer, title="untouched")
    nasty = "Robert'); DROP TABLE requests; --"
    nasty_desc = "' OR '1'='1' /* \\x00 */; UPDATE requests SET title='pwned'; --"
    created = await post_request(
        client,
        buyer,
        title=nasty,
        description=nasty_desc,
        requirements=[{"name": "1; DELETE FROM proposals", "description": '"; --'}],
    )
    response = await client.get(f"/api/v1/requests/{created['id']}", headers=auth(buyer))
    stored = await response.json()
    assert stored["title"] == nasty
    assert stored["description"] == nasty_desc
    assert stored["requirements"][0]["name"] == "1; DELETE FROM proposals"
    response = await client.get(f"/api/v1/requests/{other['id']}", headers=auth(buyer))
    assert (await response.json())["title"] == "untouched"
    response = await client.get(
        "/api/v1/requests", params={"status": "open' OR 1=1 --"}, headers=auth(buyer)
    )
    assert response.status == 400
    async with client.server.app[keys.pool].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM requests") == 2


async def test_list_paginates_with_a_cursor_newest_first(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    created = [(await post_request(client, buyer, title=f"r{i}"))["id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await client.get("/api/v1/requests", params=params, headers=auth(buyer))
        assert response.status == 200
        page = await response.json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(created))
    assert pages == 3


def _cursor(timestamp: str) -> str:
    raw = orjson.dumps([timestamp, "00000000-0000-0000-0000-000000000000"])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_bad_list_queries_are_400(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    for params in (
        {"limit": "101"},
        {"limit": "0"},
        {"limit": "many"},
        {"cursor": "not-a-cursor"},
        {"cursor": "W10"},  # valid base64 of "[]"
        {"cursor": _cursor("0001-01-01T00:00:00+01:00")},  # before year 1 in UTC
        {"cursor": _cursor("2030-01-01T00:00:00")},  # no time zone
        {"status": "pending"},
        {"owner": "nobody"},
        {"sort": "title"},
    ):
        response = await client.get("/api/v1/requests", params=params, headers=auth(buyer))
        assert response.status == 400, params
        assert (await response.json())["errors"], params


async def test_list_filters_by_status_and_owner_within_what_you_may_see(client: Any) -> None:
    alice_id, alice = await make_user(client, "buyer")
    bob_id, bob = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    _, admin = await make_user(client, "admin")
    a_open = await post_request(client, alice, title="a-open")
    a_closed = await post_request(client, alice, title="a-closed")
    response = await client.patch(
        f"/api/v1/requests/{a_closed['id']}", json={"status": "closed"}, headers=auth(alice)
    )
    assert response.status == 200
    b_open = await post_request(client, bob, title="b-open")

    async def ids(token: str, **params: str) -> list[str]:
        response = await client.get("/api/v1/requests", params=params, headers=auth(token))
        assert response.status == 200
        return [item["title"] for item in (await response.json())["items"]]

    assert await ids(alice) == ["a-closed", "a-open"]
    assert await ids(alice, status="open") == ["a-open"]
    assert await ids(alice, owner=bob_id) == []  # Bob's requests are not Alice's business
    assert await ids(vendor) == ["b-open", "a-open"]  # vendors browse open requests
    assert await ids(vendor, owner=alice_id) == ["a-open"]
    assert await ids(admin) == ["b-open", "a-closed", "a-open"]
    assert await ids(admin, status="closed", owner=alice_id) == ["a-closed"]
    assert {a_open["id"], b_open["id"]}


async def test_visibility_404_and_permission_403(client: Any) -> None:
    _, alice = await make_user(client, "buyer")
    _, bob = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    created = await post_request(client, alice)
    url = f"/api/v1/requests/{created['id']}"

    assert (await client.get(url, headers=auth(bob))).status == 404
    assert (await client.patch(url, json={"title": "x"}, headers=auth(bob))).status == 404
    assert (await client.delete(url, headers=auth(bob))).status == 404
    assert (await client.get(url, headers=auth(vendor))).status == 200
    response = await client.patch(url, json={"title": "mine now"}, headers=auth(vendor))
    assert response.status == 403
    assert (await client.delete(url, headers=auth(vendor))).status == 403
    assert (await client.get("/api/v1/requests/not-a-uuid", headers=auth(alice))).status == 404
    missing = "/api/v1/requests/00000000-0000-0000-0000-000000000000"
    assert (await client.get(missing, headers=auth(alice))).status == 404

    # A closed request disappears for vendors without a proposal on it.
    await client.patch(url, json={"status": "closed"}, headers=auth(alice))
    assert (await client.get(url, headers=auth(vendor))).status == 404


async def test_patch_changes_only_given_fields_and_bumps_the_version(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    created = await post_request(client, buyer)
    url = f"/api/v1/requests/{created['id']}"
    response = await client.patch(
        url,
        json={"title": "New title", "budget": None},
        headers=auth(buyer, **{"If-Match": '"1"'}),
    )
    assert response.status == 200
    updated = await response.json()
    assert response.headers["ETag"] == '"2"'
    assert updated["title"] == "New title"
    assert updated["budget"] is None
    assert updated["description"] == created["description"]
    assert updated["requirements"] == created["requirements"]
    assert updated["version"] == 2

    assert (await client.patch(url, json={}, headers=auth(buyer))).status == 400
    response = await client.patch(url, json={"title": None}, headers=auth(buyer))
    assert response.status == 400
    response = await client.patch(url, json={"status": "awarded"}, headers=auth(buyer))
    assert response.status == 400


async def test_stale_writes_get_412_and_change_nothing(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    created = await post_request(client, buyer)
    url = f"/api/v1/requests/{created['id']}"
    assert (await client.patch(url, json={"title": "v2"}, headers=auth(buyer))).status == 200
    for headers, body in (
        ({"If-Match": '"1"'}, {"title": "lost update"}),
        ({"If-Match": 'W/"1"'}, {"title": "lost update"}),
        ({"If-Match": '"abc"'}, {"title": "lost update"}),
        ({}, {"title": "lost update", "version": 1}),
    ):
        response = await client.patch(url, json=body, headers=auth(buyer, **headers))
        assert response.status == 412, headers
    response = await client.patch(
        url, json={"title": "x", "version": 3}, headers=auth(buyer, **{"If-Match": '"2"'})
    )
    assert response.status == 400
    assert (await client.delete(url, headers=auth(buyer, **{"If-Match": '"1"'}))).status == 412
    current = await (await client.get(url, headers=auth(buyer))).json()
    assert current["title"] == "v2"
    assert current["version"] == 2


async def test_delete_removes_request_and_proposals_but_not_awarded_ones(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    doomed = await post_request(client, buyer)
    proposal = await post_proposal(client, vendor, doomed["id"])
    url = f"/api/v1/requests/{doomed['id']}"
    response = await client.delete(url, headers=auth(buyer, **{"If-Match": '"1"'}))
    assert response.status == 204
    assert (await client.get(url, headers=auth(buyer))).status == 404
    response = await client.get(f"/api/v1/proposals/{proposal['id']}", headers=auth(vendor))
    assert response.status == 404

    awarded = await post_request(client, buyer)
    proposal = await post_proposal(client, vendor, awarded["id"])
    assert (await set_status(client, buyer, proposal["id"], "accepted")).status == 200
    url = f"/api/v1/requests/{awarded['id']}"
    assert (await client.delete(url, headers=auth(buyer))).status == 409
    response = await client.patch(url, json={"status": "open"}, headers=auth(buyer))
    assert response.status == 409
    assert (await client.get(url, headers=auth(buyer))).status == 200


async def test_racing_patches_with_the_same_version_exactly_one_wins(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    _, admin = await make_user(client, "admin")
    created = await post_request(client, buyer)
    url = f"/api/v1/requests/{created['id']}"
    responses = await asyncio.gather(
        client.patch(url, json={"title": "buyer's"}, headers=auth(buyer, **{"If-Match": '"1"'})),
        client.patch(url, json={"title": "admin's"}, headers=auth(admin, **{"If-Match": '"1"'})),
    )
    assert sorted(r.status for r in responses) == [200, 412]
    winner = await next(r for r in responses if r.status == 200).json()
    current = await (await client.get(url, headers=auth(buyer))).json()
    assert current == winner
    assert current["version"] == 2
