"""Cached signing keys: a rotation here revokes at once, a key made on another instance works
at once, an early revocation elsewhere stops verifying within the cache's lifetime, and a
generation's expiry is honoured even while its key is cached."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from handlers import keys
from server.app import create_app
from services.alerts.key_cache import KEY_TTL, SigningKeyCache, UrlMatch, UrlSecretCache, ValidKey
from tests.alerts.util import auth, create_strategy, post_signed, tv_path
from tests.helpers import eventually, make_user


async def test_a_key_made_on_another_instance_verifies_at_once_and_a_revoked_one_stops(
    aiohttp_client: Any, settings: Any
) -> None:
    here = await aiohttp_client(create_app(settings))
    there = await aiohttp_client(create_app(settings))
    _, token = await make_user(here)
    strategy = await create_strategy(here, token)
    # This instance caches the first key.
    assert (await post_signed(here, strategy, {"ticker": "A"})).status == 201
    assert here.server.app[keys.secret_box].keys.get(uuid.UUID(strategy["id"])) is not None
    # The other instance rotates, revoking the old key now.
    url = f"/api/v1/strategies/{strategy['id']}/rotate"
    rotated = await there.post(url, json={"grace_seconds": 0}, headers=auth(token))
    assert rotated.status == 200
    newest = {"id": strategy["id"], "secrets": (await rotated.json())["secrets"]}
    # The new key: a cache miss for it reads the keys again, no 401.
    assert (await post_signed(here, newest, {"ticker": "B"})).status == 201
    # Reading the keys again also dropped the revoked one here.
    assert (await post_signed(here, strategy, {"ticker": "C"})).status == 401


async def test_an_early_revocation_elsewhere_stops_verifying_within_the_ttl(
    aiohttp_client: Any, settings: Any
) -> None:
    here = await aiohttp_client(create_app(settings))
    there = await aiohttp_client(create_app(settings))
    _, token = await make_user(here)
    strategy = await create_strategy(here, token)
    assert (await post_signed(here, strategy, {"ticker": "A"})).status == 201
    url = f"/api/v1/strategies/{strategy['id']}/rotate"
    assert (await there.post(url, json={"grace_seconds": 0}, headers=auth(token))).status == 200

    async def old_key_refused() -> bool:
        response = await post_signed(here, strategy, {"ticker": "old"})
        await response.read()
        return bool(response.status == 401)

    await eventually(old_key_refused, timeout=KEY_TTL * 4, what="the revoked key refused")


def test_expired_generations_are_not_used_while_cached() -> None:
    cache = SigningKeyCache()
    strategy = uuid.uuid4()
    now = datetime.now(UTC)
    cache.put(
        strategy,
        [ValidKey(b"current", None), ValidKey(b"old", now + timedelta(seconds=30))],
    )
    assert cache.get(strategy, now) == [b"current", b"old"]
    assert cache.get(strategy, now + timedelta(seconds=31)) == [b"current"]


def test_entries_live_for_the_ttl_and_forget_drops_them() -> None:
    clock = [0.0]
    cache = SigningKeyCache(ttl=5.0, timer=lambda: clock[0])
    first, second = uuid.uuid4(), uuid.uuid4()
    cache.put(first, [ValidKey(b"k1", None)])
    cache.put(second, [ValidKey(b"k2", None)])
    cache.forget(second)
    assert cache.get(first) == [b"k1"]
    assert cache.get(second) is None
    clock[0] = 5.1
    assert cache.get(first) is None


def test_the_cache_is_bounded() -> None:
    cache = SigningKeyCache(maxsize=2)
    ids = [uuid.uuid4() for _ in range(3)]
    for strategy in ids:
        cache.put(strategy, [ValidKey(b"k", None)])
    assert sum(cache.get(strategy) is not None for strategy in ids) == 2


async def test_url_secrets_a_rotation_here_revokes_at_once_and_elsewhere_within_the_ttl(
    aiohttp_client: Any, settings: Any
) -> None:
    here = await aiohttp_client(create_app(settings))
    there = await aiohttp_client(create_app(settings))
    _, token = await make_user(here)
    strategy = await create_strategy(here, token)
    old_path = tv_path(strategy)
    url = f"/api/v1/strategies/{strategy['id']}/rotate"
    # Both instances have used (cached) the first URL secret.
    for instance in (here, there):
        assert (await instance.post(old_path, data=f"buy {uuid.uuid4()}")).status == 201
    rotated = await here.post(url, json={"grace_seconds": 0}, headers=auth(token))
    assert rotated.status == 200
    new_path = tv_path({"secrets": (await rotated.json())["secrets"]})
    # The instance that rotated refuses the old URL at once; both accept the new one at once.
    assert (await here.post(old_path, data="buy late")).status == 404
    for instance in (here, there):
        assert (await instance.post(new_path, data=f"buy {uuid.uuid4()}")).status == 201

    async def old_url_refused_there() -> bool:
        response = await there.post(old_path, data=f"buy {uuid.uuid4()}")
        await response.read()
        return bool(response.status == 404)

    await eventually(old_url_refused_there, timeout=KEY_TTL * 4, what="the revoked URL refused")


def test_url_secret_expiry_is_honoured_while_cached() -> None:
    cache = UrlSecretCache()
    strategy = uuid.uuid4()
    now = datetime.now(UTC)
    cache.put(b"d" * 32, UrlMatch(strategy, now + timedelta(seconds=30)))
    assert cache.get(b"d" * 32, now) == strategy
    assert cache.get(b"d" * 32, now + timedelta(seconds=31)) is None
    cache.forget(strategy)
    assert cache.get(b"d" * 32, now) is None
