"""Proposals: submission, visibility, the state machine, permissions and races."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from handlers import keys
from storage.proposals import TRANSITIONS
from tests.helpers import make_user
from tests.marketplace.util import auth, post_proposal, post_request, set_status

STATES = ("submitted", "shortlisted", "rejected", "accepted", "withdrawn")


async def test_vendor_submits_a_proposal(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    vendor_id, vendor = await make_user(client, "vendor")
    request = await post_request(client, buyer)
    proposal = await post_proposal(client, vendor, request["id"], price=100)
    assert proposal["vendor_id"] == vendor_id
    assert proposal["request_id"] == request["id"]
    assert proposal["price"] == "100.00"
    assert proposal["status"] == "submitted"
    assert proposal["answers"][0]["requirement"] == "SSO"
    for token in (buyer, vendor):
        response = await client.get(f"/api/v1/proposals/{proposal['id']}", headers=auth(token))
        assert response.status == 200
        assert response.headers["ETag"] == '"1"'
        assert await response.json() == proposal


async def test_submission_rules(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    request = await post_request(client, buyer)
    url = f"/api/v1/requests/{request['id']}/proposals"
    body = {"price": "10", "summary": "s"}

    assert (await client.post(url, json=body, headers=auth(buyer))).status == 403
    assert (await client.post(url, json=body)).status == 401
    response = await client.post(
        url,
        json={**body, "answers": [{"requirement": "Blockchain"}]},
        headers=auth(vendor),
    )
    assert response.status == 400
    assert "answers.0.requirement" in (await response.json())["errors"]
    response = await client.post(url, json={**body, "price": -5}, headers=auth(vendor))
    assert response.status == 400
    assert "price" in (await response.json())["errors"]
    response = await client.post(url, json={"summary": "s", "extra": 1}, headers=auth(vendor))
    errors = (await response.json())["errors"]
    assert response.status == 400
    assert {"price", "extra"} <= set(errors)

    assert (await client.post(url, json=body, headers=auth(vendor))).status == 201
    response = await client.post(url, json=body, headers=auth(vendor))
    assert response.status == 409  # one proposal per vendor and request

    missing = "/api/v1/requests/00000000-0000-0000-0000-000000000000/proposals"
    assert (await client.post(missing, json=body, headers=auth(vendor))).status == 404

    closed = await post_request(client, buyer)
    await client.patch(
        f"/api/v1/requests/{closed['id']}", json={"status": "closed"}, headers=auth(buyer)
    )
    _, late_vendor = await make_user(client, "vendor")
    url = f"/api/v1/requests/{closed['id']}/proposals"
    # The closed request is invisible to a vendor who has not proposed: 404, not 409.
    assert (await client.post(url, json=body, headers=auth(late_vendor))).status == 404


async def test_proposals_are_visible_only_to_the_parties(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    _, other_buyer = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    _, rival = await make_user(client, "vendor")
    _, admin = await make_user(client, "admin")
    request = await post_request(client, buyer)
    proposal = await post_proposal(client, vendor, request["id"])
    rival_proposal = await post_proposal(client, rival, request["id"])
    url = f"/api/v1/proposals/{proposal['id']}"
    assert (await client.get(url, headers=auth(other_buyer))).status == 404
    assert (await client.get(url, headers=auth(rival))).status == 404
    assert (await client.get(url, headers=auth(admin))).status == 200
    # A rival may not even move it: 404, since it may not see it.
    assert (await set_status(client, rival, proposal["id"], "withdrawn")).status == 404

    async def listed(token: str, **params: str) -> set[str]:
        response = await client.get("/api/v1/proposals", params=params, headers=auth(token))
        assert response.status == 200
        return {item["id"] for item in (await response.json())["items"]}

    assert await listed(buyer) == {proposal["id"], rival_proposal["id"]}
    assert await listed(buyer, request_id=request["id"]) == {proposal["id"], rival_proposal["id"]}
    assert await listed(vendor) == {proposal["id"]}
    assert await listed(vendor, mine="true") == {proposal["id"]}
    assert await listed(buyer, mine="true") == set()
    assert await listed(other_buyer) == set()
    assert await listed(admin) == {proposal["id"], rival_proposal["id"]}
    await set_status(client, buyer, rival_proposal["id"], "shortlisted")
    assert await listed(buyer, status="shortlisted") == {rival_proposal["id"]}
    response = await client.get(
        "/api/v1/proposals", params={"mine": "perhaps"}, headers=auth(buyer)
    )
    assert response.status == 400


async def test_proposal_list_paginates(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    request = await post_request(client, buyer)
    created = []
    for _ in range(3):
        _, vendor = await make_user(client, "vendor")
        created.append((await post_proposal(client, vendor, request["id"]))["id"])
    response = await client.get("/api/v1/proposals", params={"limit": "2"}, headers=auth(buyer))
    first = await response.json()
    response = await client.get(
        "/api/v1/proposals",
        params={"limit": "2", "cursor": first["next_cursor"]},
        headers=auth(buyer),
    )
    second = await response.json()
    assert second["next_cursor"] is None
    ids = [item["id"] for item in first["items"] + second["items"]]
    assert ids == list(reversed(created))


def _path_to(state: str) -> list[str]:
    return {
        "submitted": [],
        "shortlisted": ["shortlisted"],
        "rejected": ["rejected"],
        "accepted": ["accepted"],
        "withdrawn": ["withdrawn"],
    }[state]


@pytest.mark.parametrize("start", STATES)
async def test_state_machine_allows_exactly_the_documented_transitions(
    client: Any, start: str
) -> None:
    _, buyer = await make_user(client, "buyer")
    _, admin = await make_user(client, "admin")
    for target in ("shortlisted", "rejected", "accepted", "withdrawn"):
        request = await post_request(client, buyer)
        _, vendor = await make_user(client, "vendor")
        proposal = await post_proposal(client, vendor, request["id"])
        for step in _path_to(start):
            assert (await set_status(client, admin, proposal["id"], step)).status == 200
        response = await set_status(client, admin, proposal["id"], target)
        expected = 200 if target in TRANSITIONS[start] else 409
        assert response.status == expected, (start, target, await response.text())
        if expected == 409:
            body = await response.json()
            assert start in body["message"]


async def test_who_may_move_a_proposal(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    request = await post_request(client, buyer)
    proposal = await post_proposal(client, vendor, request["id"])
    for status in ("shortlisted", "rejected", "accepted"):
        assert (await set_status(client, vendor, proposal["id"], status)).status == 403
    assert (await set_status(client, buyer, proposal["id"], "withdrawn")).status == 403
    assert (await set_status(client, buyer, proposal["id"], "shortlisted")).status == 200
    assert (await set_status(client, vendor, proposal["id"], "withdrawn")).status == 200
    response = await client.put(
        f"/api/v1/proposals/{proposal['id']}/status",
        json={"status": "submitted"},
        headers=auth(buyer),
    )
    assert response.status == 400


async def test_accepting_awards_the_request_and_only_once(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    _, rival = await make_user(client, "vendor")
    request = await post_request(client, buyer)
    first = await post_proposal(client, vendor, request["id"])
    second = await post_proposal(client, rival, request["id"])
    response = await set_status(client, buyer, first["id"], "accepted", **{"If-Match": '"1"'})
    assert response.status == 200
    assert (await response.json())["version"] == 2
    response = await client.get(f"/api/v1/requests/{request['id']}", headers=auth(buyer))
    assert (await response.json())["status"] == "awarded"
    response = await set_status(client, buyer, second["id"], "accepted")
    assert response.status == 409
    assert (await set_status(client, buyer, second["id"], "rejected")).status == 200


async def test_stale_status_change_is_412(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    _, vendor = await make_user(client, "vendor")
    request = await post_request(client, buyer)
    proposal = await post_proposal(client, vendor, request["id"])
    assert (await set_status(client, buyer, proposal["id"], "shortlisted")).status == 200
    response = await set_status(client, buyer, proposal["id"], "accepted", **{"If-Match": '"1"'})
    assert response.status == 412
    response = await client.put(
        f"/api/v1/proposals/{proposal['id']}/status",
        json={"status": "accepted", "version": 1},
        headers=auth(buyer),
    )
    assert response.status == 412
    got = await client.get(f"/api/v1/proposals/{proposal['id']}", headers=auth(buyer))
    assert (await got.json())["status"] == "shortlisted"


async def test_racing_buyers_on_one_proposal_exactly_one_wins(client: Any) -> None:
    """The owner and an admin act on the same version at once: one 200, the other 412."""
    _, buyer = await make_user(client, "buyer")
    _, admin = await make_user(client, "admin")
    _, vendor = await make_user(client, "vendor")
    for targets in (
        ("accepted", "rejected"),
        ("accepted", "accepted"),
        ("shortlisted", "rejected"),
    ):
        request = await post_request(client, buyer)
        proposal = await post_proposal(client, vendor, request["id"])
        responses = await asyncio.gather(
            set_status(client, buyer, proposal["id"], targets[0], **{"If-Match": '"1"'}),
            set_status(client, admin, proposal["id"], targets[1], **{"If-Match": '"1"'}),
        )
        statuses = sorted(r.status for r in responses)
        assert statuses == [200, 412], targets
        winner = next(r for r in responses if r.status == 200)
        final = await (
            await client.get(f"/api/v1/proposals/{proposal['id']}", headers=auth(buyer))
        ).json()
        assert final == await winner.json()
        assert final["version"] == 2


async def test_racing_accepts_without_preconditions_accept_only_one(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    request = await post_request(client, buyer)
    ids = []
    for _ in range(4):
        _, vendor = await make_user(client, "vendor")
        ids.append((await post_proposal(client, vendor, request["id"]))["id"])
    responses = await asyncio.gather(*(set_status(client, buyer, i, "accepted") for i in ids))
    assert sorted(r.status for r in responses) == [200, 409, 409, 409]
    async with client.server.app[keys.pool].acquire() as conn:
        accepted = await conn.fetchval(
            "SELECT count(*) FROM proposals WHERE status = 'accepted' AND request_id = $1::uuid",
            request["id"],
        )
    assert accepted == 1


async def test_database_refuses_illegal_states_even_without_the_handlers(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    request = await post_request(client, buyer)
    ids = []
    for _ in range(2):
        _, vendor = await make_user(client, "vendor")
        ids.append((await post_proposal(client, vendor, request["id"]))["id"])
    async with client.server.app[keys.pool].acquire() as conn:
        await conn.execute("UPDATE proposals SET status = 'accepted' WHERE id = $1::uuid", ids[0])
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "UPDATE proposals SET status = 'accepted' WHERE id = $1::uuid", ids[1]
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "UPDATE proposals SET status = 'submitted' WHERE id = $1::uuid", ids[0]
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE proposals SET price = -1 WHERE id = $1::uuid", ids[1])
