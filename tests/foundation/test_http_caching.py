"""Conditional GET (``If-None-Match`` → 304) and gzip of JSON bodies, as HTTP clients and
caches use them."""

from __future__ import annotations

import gzip
from typing import Any

import orjson

from handlers.http_caching import accepts_gzip, none_match
from tests.helpers import make_user
from tests.marketplace.util import auth, post_request

NO_GZIP = {"Accept-Encoding": "identity"}


async def test_if_none_match_on_a_resource_answers_304_until_it_changes(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    created = await post_request(client, buyer)
    path = f"/api/v1/requests/{created['id']}"

    first = await client.get(path, headers=auth(buyer, **NO_GZIP))
    etag = first.headers["ETag"]
    assert etag == '"1"'
    again = await client.get(path, headers=auth(buyer, **{"If-None-Match": etag}))
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["ETag"] == etag

    changed = await client.patch(
        path, json={"title": "A new title"}, headers=auth(buyer, **{"If-Match": etag})
    )
    assert changed.status == 200
    after = await client.get(path, headers=auth(buyer, **{"If-None-Match": etag}))
    assert after.status == 200
    assert (await after.json())["title"] == "A new title"
    assert after.headers["ETag"] == '"2"'


async def test_lists_get_a_content_etag_and_304(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    await post_request(client, buyer)
    first = await client.get("/api/v1/requests?status=open", headers=auth(buyer, **NO_GZIP))
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')

    same = await client.get(
        "/api/v1/requests?status=open", headers=auth(buyer, **{"If-None-Match": f'"x", {etag}'})
    )
    assert same.status == 304
    await post_request(client, buyer, title="Another one")
    changed = await client.get(
        "/api/v1/requests?status=open", headers=auth(buyer, **{"If-None-Match": etag})
    )
    assert changed.status == 200
    assert len((await changed.json())["items"]) == 2
    assert changed.headers["ETag"] != etag


async def test_large_json_is_gzipped_only_when_the_client_accepts_it(client: Any) -> None:
    _, buyer = await make_user(client, "buyer")
    for n in range(4):
        await post_request(client, buyer, title=f"Request number {n}")
    path = "/api/v1/requests?status=open"

    plain = await client.get(path, headers=auth(buyer, **NO_GZIP))
    identity = await plain.read()
    assert len(identity) > 1024
    assert "Content-Encoding" not in plain.headers
    assert "Accept-Encoding" in plain.headers["Vary"]

    zipped = await client.get(
        path, headers=auth(buyer, **{"Accept-Encoding": "gzip"}), auto_decompress=False
    )
    assert zipped.headers["Content-Encoding"] == "gzip"
    raw = await zipped.read()
    assert len(raw) < len(identity)
    assert orjson.loads(gzip.decompress(raw)) == orjson.loads(identity)
    assert "Accept-Encoding" in zipped.headers["Vary"]

    refused = await client.get(
        path, headers=auth(buyer, **{"Accept-Encoding": "gzip;q=0, br"}), auto_decompress=False
    )
    assert "Content-Encoding" not in refused.headers


async def test_small_bodies_and_websocket_frames_are_not_compressed(client: Any) -> None:
    health = await client.get("/health", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert "Content-Encoding" not in health.headers
    assert await health.json() == {"status": "ok"}

    ws = await client.ws_connect("/ws", headers={"Accept-Encoding": "gzip"})
    assert ws.compress == 0  # no permessage-deflate either
    await ws.close()


def test_header_parsing() -> None:
    assert none_match('"3"', '"3"')
    assert none_match('W/"3"', '"3"')
    assert none_match('"1", "3"', 'W/"3"')
    assert none_match("*", '"9"')
    assert not none_match('"4"', '"3"')
    assert not none_match(None, '"3"')
    assert accepts_gzip("gzip, deflate, br")
    assert accepts_gzip("*")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("identity")
    assert not accepts_gzip(None)
