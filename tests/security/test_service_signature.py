"""The signing scheme itself (``services/auth/service_signature.py``): the worked example of
``docs/security.md``, verification rules and the replay caches (memory and Redis)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from services.auth import service_signature as sig

ROOT = Path(__file__).resolve().parents[2]

# The worked example printed in docs/security.md.
EXAMPLE_SECRET = "example-service-secret-at-least-32-bytes"
EXAMPLE_PATH = "/api/v1/channels/alerts:demo/publish"
EXAMPLE_BODY = b'{"data":{"hello":"world"}}'
EXAMPLE_TIMESTAMP = "1767225600000"
EXAMPLE_V2 = "2ad824afffc612b65731787844c8be5b98be0f6862324c0b0524eab5364abd4f"
EXAMPLE_V1 = "16c2abc9ccc3908969a1b0e77904b81bef937b2aea76334e641d4f88b5e5a283"
TOLERANCE_MS = 120_000
NOW = int(EXAMPLE_TIMESTAMP)


def test_the_documented_example() -> None:
    v2 = sig.canonical_message(2, "POST", EXAMPLE_PATH, EXAMPLE_BODY, EXAMPLE_TIMESTAMP)
    assert (
        v2 == b'POST|/api/v1/channels/alerts:demo/publish|{"data":{"hello":"world"}}|1767225600000'
    )
    assert sig.sign(EXAMPLE_SECRET, v2) == EXAMPLE_V2
    v1 = sig.canonical_message(1, "POST", EXAMPLE_PATH, EXAMPLE_BODY, EXAMPLE_TIMESTAMP)
    assert v1 == b'POST|{"data":{"hello":"world"}}|1767225600000'
    assert sig.sign(EXAMPLE_SECRET, v1) == EXAMPLE_V1
    docs = (ROOT / "docs" / "security.md").read_text()
    for value in (EXAMPLE_SECRET, EXAMPLE_PATH, EXAMPLE_TIMESTAMP, EXAMPLE_V2, EXAMPLE_V1):
        assert value in docs, value
    assert EXAMPLE_BODY.decode() in docs


def _verify(**changes: str | int | None) -> sig.VerifiedSignature:
    values: dict[str, object] = {
        "signature": EXAMPLE_V2,
        "timestamp": EXAMPLE_TIMESTAMP,
        "version": "2",
        "method": "POST",
        "target": EXAMPLE_PATH,
        "body": EXAMPLE_BODY,
        "now_ms": NOW,
        "tolerance_ms": TOLERANCE_MS,
    }
    values.update(changes)
    return sig.verify(EXAMPLE_SECRET, **values)  # type: ignore[arg-type]


def test_verify_accepts_the_example_and_names_the_version() -> None:
    verified = _verify()
    assert (verified.version, verified.timestamp_ms) == (2, NOW)
    assert _verify(signature=EXAMPLE_V1, version=None).version == 1
    assert _verify(signature=EXAMPLE_V1, version="1").version == 1
    assert _verify(signature=EXAMPLE_V2.upper()).replay_key == verified.replay_key
    assert EXAMPLE_V2 not in verified.replay_key  # the store never holds the signature itself


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"target": "/api/v1/channels/user:x/publish"}, "invalid request signature"),
        ({"method": "PUT"}, "invalid request signature"),
        ({"body": b"{}"}, "invalid request signature"),
        ({"signature": EXAMPLE_V1}, "invalid request signature"),  # v1 sent as v2
        ({"version": "0"}, "x-signature-version must be 1 or 2"),
        ({"timestamp": "1e12"}, "x-timestamp must be Unix milliseconds"),
        ({"timestamp": "1" * 17}, "x-timestamp must be Unix milliseconds"),
        ({"timestamp": ""}, "x-signature and x-timestamp are both required"),
        ({"signature": ""}, "x-signature and x-timestamp are both required"),
        ({"now_ms": NOW + TOLERANCE_MS + 1}, "x-timestamp is too far from the server clock"),
        ({"now_ms": NOW - TOLERANCE_MS - 1}, "x-timestamp is too far from the server clock"),
    ],
)
def test_verify_refuses(changes: dict[str, str | int], reason: str) -> None:
    with pytest.raises(sig.SignatureError) as info:
        _verify(**changes)
    assert info.value.reason == reason


def test_the_window_edges_are_inclusive() -> None:
    assert _verify(now_ms=NOW + TOLERANCE_MS).timestamp_ms == NOW
    assert _verify(now_ms=NOW - TOLERANCE_MS).timestamp_ms == NOW


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_memory_cache_claims_once_forgets_after_the_ttl_and_is_bounded() -> None:
    clock = Clock()
    cache = sig.MemoryReplayCache(max_entries=3, clock=clock)
    assert await cache.claim("a", 10) is True
    assert await cache.claim("a", 10) is False
    assert await cache.claim("b", 20) is True
    assert await cache.claim("c", 20) is True
    # full of live entries: refuse to forget one (that would re-open its replay), fail closed
    with pytest.raises(sig.ReplayCacheUnavailable):
        await cache.claim("d", 10)
    assert await cache.claim("a", 10) is False
    clock.now += 10.5  # "a" expired: its slot is free and it may be claimed again
    assert await cache.claim("a", 10) is True
    assert await cache.claim("b", 10) is False
    with pytest.raises(sig.ReplayCacheUnavailable):
        await cache.claim("d", 10)
    clock.now += 10  # everything expired
    for key in ("a", "b", "c"):
        assert await cache.claim(key, 10) is True


async def test_the_redis_cache_claims_once_across_clients(
    redis_url: str, redis_prefix: str
) -> None:
    one, two = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        key = uuid.uuid4().hex
        first = sig.RedisReplayCache(one, redis_prefix)
        second = sig.RedisReplayCache(two, redis_prefix)
        assert await first.claim(key, 5) is True
        assert await second.claim(key, 5) is False
        ttl = await one.pttl(f"{redis_prefix}:sig:{key}")
        assert 0 < ttl <= 5000
    finally:
        await one.aclose()
        await two.aclose()


async def test_the_redis_cache_reports_an_unreachable_server() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        with pytest.raises(sig.ReplayCacheUnavailable):
            await sig.RedisReplayCache(client, "x").claim("k", 5)
    finally:
        await client.aclose()
