"""``GET /api/v1/analyses``: the caller's analyses across requests, paged newest first."""

from __future__ import annotations

import uuid
from typing import Any

from tests.analysis.support import auth, seed_request, start, wait_status
from tests.helpers import make_user


async def _finished(client: Any, token: str, request_id: str, kind: str) -> str:
    created = await start(client, token, request_id, kind=kind)
    await wait_status(client, token, created["id"], "done")
    return str(created["id"])


async def _pages(client: Any, token: str, query: str) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    url = f"/api/v1/analyses?{query}"
    while True:
        resp = await client.get(url, headers=auth(token))
        body = await resp.json()
        assert resp.status == 200, body
        pages.append(body["items"])
        if body["next_cursor"] is None:
            return pages
        url = f"/api/v1/analyses?{query}&cursor={body['next_cursor']}"


async def test_lists_own_analyses_newest_first_in_pages(offline_client: Any) -> None:
    owner, token = await make_user(offline_client, "buyer")
    other, other_token = await make_user(offline_client, "buyer")
    _admin, admin_token = await make_user(offline_client, "admin")
    first = await seed_request(offline_client, owner, title="First")
    second = await seed_request(offline_client, owner, title="Second")
    theirs = await seed_request(offline_client, other, title="Theirs")
    mine = [
        await _finished(offline_client, token, first, "compare_proposals"),
        await _finished(offline_client, token, second, "summarize_request"),
        await _finished(offline_client, token, first, "summarize_request"),
        # started by an admin, about the owner's request: the owner may read it, so it is listed
        await _finished(offline_client, admin_token, second, "compare_proposals"),
        await _finished(offline_client, token, second, "compare_proposals"),
    ]
    foreign = await _finished(offline_client, other_token, theirs, "compare_proposals")

    pages = await _pages(offline_client, token, "limit=2")
    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [item for page in pages for item in page]
    assert [item["id"] for item in listed] == mine[::-1]
    assert all(item["text"] is None and item["text_chars"] > 0 for item in listed)
    assert all(item["status"] == "done" for item in listed)

    admin_ids = [
        i["id"] for page in await _pages(offline_client, admin_token, "limit=100") for i in page
    ]
    assert foreign in admin_ids
    assert set(mine) <= set(admin_ids)
    other_ids = [i["id"] for page in await _pages(offline_client, other_token, "") for i in page]
    assert other_ids == [foreign]


async def test_filters_combine(offline_client: Any) -> None:
    owner, token = await make_user(offline_client, "buyer")
    first = await seed_request(offline_client, owner)
    second = await seed_request(offline_client, owner)
    compare_first = await _finished(offline_client, token, first, "compare_proposals")
    await _finished(offline_client, token, first, "summarize_request")
    compare_second = await _finished(offline_client, token, second, "compare_proposals")

    def ids(pages: list[list[dict[str, Any]]]) -> list[str]:
        return [item["id"] for page in pages for item in page]

    assert ids(await _pages(offline_client, token, "kind=compare_proposals")) == [
        compare_second,
        compare_first,
    ]
    both = f"kind=compare_proposals&request_id={first}"
    assert ids(await _pages(offline_client, token, both)) == [compare_first]
    assert ids(await _pages(offline_client, token, "status=running")) == []
    assert len(ids(await _pages(offline_client, token, "status=done"))) == 3
    assert ids(await _pages(offline_client, token, f"request_id={uuid.uuid4()}")) == []


async def test_bad_queries_get_400(offline_client: Any) -> None:
    _owner, token = await make_user(offline_client, "buyer")
    for query in (
        "limit=0",
        "limit=101",
        "kind=poem",
        "status=sleeping",
        "request_id=nope",
        "cursor=!!",
        "cursor=bm90LWEtY3Vyc29y",
        "colour=red",
    ):
        resp = await offline_client.get(f"/api/v1/analyses?{query}", headers=auth(token))
        body = await resp.json()
        assert resp.status == 400, (query, body)
        assert body["error"] is True
    assert (await offline_client.get("/api/v1/analyses")).status == 401


async def test_listing_is_in_the_openapi_document(offline_client: Any) -> None:
    spec = await (await offline_client.get("/api/openapi.json")).json()
    listing = spec["paths"]["/api/v1/analyses"]["get"]
    params = {p["name"] for p in listing["parameters"] if p["in"] == "query"}
    assert params == {"kind", "status", "request_id", "limit", "cursor"}
    page = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert page == {"$ref": "#/components/schemas/AnalysisPage"}
    schemas = spec["components"]["schemas"]
    assert set(schemas["AnalysisPage"]["required"]) == {"items", "next_cursor"}
    start = spec["paths"]["/api/v1/requests/{id}/analyses"]["post"]
    body = start["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "question" in schemas[body]["properties"]
    assert "question" in schemas[body]["properties"]["kind"]["enum"]
    assert schemas[body]["properties"]["question"]["anyOf"][0]["maxLength"] == 2000
