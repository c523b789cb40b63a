"""TradingView ingestion: JSON and text bodies, de-duplication, bad input, secrets."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from handlers import keys
from server import lifecycle
from server.app import create_app
from services.auth.ratelimit import RedisRateLimiter
from storage import alerts
from storage.errors import NotFound
from tests.alerts.util import auth, count_rows, create_strategy, tv_path
from tests.helpers import make_user


async def test_json_alert_is_stored_with_extracted_fields(client: Any) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    body = (
        '{"ticker": "BTCUSDT", "action": "BUY", "quantity": "0.5", "price": 42000.5, '
        '"time": "2026-11-22T10:00:00Z", "message": "breakout", "extra": [1, 2]}'
    )
    response = await client.post(
        tv_path(strategy), data=body, headers={"Content-Type": "application/json"}
    )
    reply = await response.json()
    assert response.status == 201, reply
    assert reply["duplicate"] is False
    response = await client.get(f"/api/v1/alerts/{reply['id']}", headers=auth(token))
    alert = await response.json()
    assert alert["ticker"] == "BTCUSDT"
    assert alert["action"] == "buy"
    assert alert["quantity"] == 0.5
    assert alert["price"] == 42000.5
    assert alert["time"].startswith("2026-11-22T10:00:00")
    assert alert["message"] == "breakout"
    assert alert["raw_body"] == body
    assert alert["content_type"] == "application/json"
    assert alert["source"] == "tradingview"


async def test_plain_text_alert_is_accepted(client: Any) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    response = await client.post(
        tv_path(strategy), data="ETHUSD sell 3 @ 2500", headers={"Content-Type": "text/plain"}
    )
    assert response.status == 201
    alert_id = (await response.json())["id"]
    alert = await (await client.get(f"/api/v1/alerts/{alert_id}", headers=auth(token))).json()
    assert alert["content_type"] == "text/plain"
    assert alert["action"] == "sell"
    assert alert["raw_body"] == "ETHUSD sell 3 @ 2500"


async def test_identical_retries_within_the_window_store_one_alert(client: Any) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    body = '{"ticker": "NQ1!", "action": "buy"}'
    headers = {"Content-Type": "application/json"}
    first = await client.post(tv_path(strategy), data=body, headers=headers)
    second = await client.post(tv_path(strategy), data=body, headers=headers)
    assert first.status == 201
    assert second.status == 200
    assert (await second.json()) == {"id": (await first.json())["id"], "duplicate": True}
    other = await client.post(tv_path(strategy), data=body.replace("buy", "sell"), headers=headers)
    assert other.status == 201
    assert await count_rows(client, "alerts", strategy["id"]) == 2
    assert await count_rows(client, "outbox", strategy["id"]) == 2


async def test_concurrent_retries_race_to_exactly_one_alert(client: Any) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    body = "ticker=CL1! action=buy qty=1"

    async def post() -> int:
        response = await client.post(tv_path(strategy), data=body)
        return int(response.status)

    statuses = await asyncio.gather(*(post() for _ in range(30)))
    assert sorted(statuses) == [200] * 29 + [201]
    assert await count_rows(client, "alerts", strategy["id"]) == 1
    assert await count_rows(client, "outbox", strategy["id"]) == 1


async def test_dedup_window_zero_keeps_every_copy(aiohttp_client: Any, make_settings: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(WEBHOOK_DEDUP_WINDOW="0")))
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    for _ in range(2):
        response = await client.post(tv_path(strategy), data="same text")
        assert response.status == 201
    assert await count_rows(client, "alerts", strategy["id"]) == 2


async def _chunks(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 4096 + 1):
        yield b"a" * 4096


@pytest.mark.parametrize(
    ("data", "headers", "status"),
    [
        (b"x" * (64 * 1024 + 1), {"Content-Type": "text/plain"}, 413),
        (b"", {"Content-Type": "application/json"}, 400),
        (b"", {"Content-Type": "text/plain"}, 400),
        (b"\xc3\x28 invalid", {"Content-Type": "text/plain; charset=utf-8"}, 400),
        (b"hello", {"Content-Type": "text/plain; charset=x-unknown-7"}, 400),
        (b'{"ticker": "ES", ', {"Content-Type": "application/json"}, 400),
        (b"hello\x00", {"Content-Type": "text/plain"}, 400),
        (b"hello", {"Content-Type": "application/octet-stream"}, 415),
    ],
)
async def test_rejected_bodies_store_nothing(
    client: Any, data: bytes, headers: dict[str, str], status: int
) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    response = await client.post(tv_path(strategy), data=data, headers=headers)
    body = await response.json()
    assert response.status == status, body
    assert body["error"] is True
    assert await count_rows(client, "alerts", strategy["id"]) == 0
    assert await count_rows(client, "outbox", strategy["id"]) == 0


async def test_streamed_body_over_the_limit_is_413(client: Any) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    response = await client.post(tv_path(strategy), data=_chunks(70 * 1024))
    assert response.status == 413
    assert await count_rows(client, "alerts", strategy["id"]) == 0


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in {"request_id", "timestamp"}}


async def test_unknown_and_revoked_secrets_get_the_same_404(client: Any) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    rotated = await client.post(
        f"/api/v1/strategies/{strategy['id']}/rotate",
        json={"grace_seconds": 0},
        headers=auth(token),
    )
    assert rotated.status == 200
    revoked = await client.post(tv_path(strategy), data="buy")
    unknown = await client.post("/webhooks/tv/" + "A" * 43, data="buy")
    malformed = await client.post("/webhooks/tv/short", data="buy")
    assert revoked.status == unknown.status == malformed.status == 404
    first = _comparable(await revoked.json())
    assert first == _comparable(await unknown.json()) == _comparable(await malformed.json())
    fresh = await client.post(tv_path(await rotated.json()), data="buy")
    assert fresh.status == 201


async def test_the_url_secret_never_reaches_logs_or_metrics(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    secret = strategy["secrets"]["url_secret"]
    caplog.set_level(logging.DEBUG)
    await client.post(tv_path(strategy), data="buy")
    await client.post(tv_path(strategy), data="buy")  # duplicate
    await client.post(tv_path(strategy), data=b"\xff", headers={"Content-Type": "text/plain"})
    await client.post(tv_path(strategy), data=b"x" * 70_000)
    await client.post("/webhooks/tv/" + secret[::-1], data="buy")
    logged = [str(record.__dict__) for record in caplog.records]
    assert logged, "expected access log records"
    assert not [line for line in logged if secret in line or secret[::-1] in line]
    metrics = await (await client.get("/metrics", headers=auth(token))).text()
    assert secret not in metrics
    assert "/webhooks/tv/{secret}" in metrics


async def test_webhooks_are_rate_limited_per_ip(aiohttp_client: Any, make_settings: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(WEBHOOK_RATE_PER_IP="3")))
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    statuses = [(await client.post(tv_path(strategy), data=f"alert {n}")).status for n in range(3)]
    assert statuses == [201, 201, 201]
    limited = await client.post(tv_path(strategy), data="alert 4")
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1
    unknown = await client.post("/webhooks/tv/" + "B" * 43, data="probe")
    assert unknown.status == 429  # brute-forcing secrets is throttled too
    assert await count_rows(client, "alerts", strategy["id"]) == 3


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ('{"ticker": "\\u0000", "message": "nul \\u0000 inside", "qty": 1e14}', 201),
        ('{"ticker": "😀", "message": "\\ud83d\\ude00", "price": "1,234.5"}', 201),
        ('{"time": "0001-01-01T00:00:00+14:00", "quantity": 1e300, "price": -5}', 201),
        ('{"time": -1, "action": ["buy"], "ticker": {"a": 1}}', 201),
        ('{"message": "\\ud800 lone surrogate"}', 400),
        ('{"quantity": 1e400}', 400),
    ],
)
async def test_odd_values_never_cause_a_500(client: Any, body: str, status: int) -> None:
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    response = await client.post(
        tv_path(strategy), data=body.encode(), headers={"Content-Type": "application/json"}
    )
    reply = await response.json()
    assert response.status == status, reply
    if status == 201:
        alert = await (
            await client.get(f"/api/v1/alerts/{reply['id']}", headers=auth(token))
        ).json()
        assert alert["raw_body"] == body


async def test_rate_limit_is_shared_by_instances_through_redis(
    aiohttp_client: Any, make_settings: Any, redis_url: str, redis_prefix: str
) -> None:
    env = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "WEBHOOK_RATE_PER_IP": "4"}
    client = await aiohttp_client(create_app(make_settings(**env)))
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    # Another instance's limiter on the same Redis and prefix spends half of this IP's budget.
    # A second app is not started here: a kicked relay that is not the leader busy-loops
    # (OutboxRelay._wait never clears its wake-up event), which can stall the teardown.
    other = Redis.from_url(redis_url)
    try:
        limiter = RedisRateLimiter(other, redis_prefix)
        for _ in range(2):
            assert (await limiter.hit("webhook:ip:127.0.0.1", 4, 60.0)).allowed
    finally:
        await other.aclose()
    statuses = [(await client.post(tv_path(strategy), data=f"alert {n}")).status for n in range(3)]
    assert statuses == [201, 201, 429]


async def test_webhooks_within_the_instance_share_wait_for_no_redis_round_trip(
    aiohttp_client: Any, make_settings: Any, redis_url: str, redis_prefix: str
) -> None:
    # 600/min with a 60 s sync: this instance may allow 600 hits before Redis counts them, and
    # the first sync is a minute away, so a webhook acknowledged now did not ask Redis.
    env = {
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": redis_prefix,
        "WEBHOOK_RATE_PER_IP": "600",
        "RATE_LIMIT_SYNC_SECONDS": "60",
    }
    client = await aiohttp_client(create_app(make_settings(**env)))
    _, token = await make_user(client)
    strategy = await create_strategy(client, token)
    statuses = [(await client.post(tv_path(strategy), data=f"alert {n}")).status for n in range(3)]
    assert statuses == [201, 201, 201]
    assert await count_rows(client, "alerts", strategy["id"]) == 3
    redis = Redis.from_url(redis_url)
    try:
        assert await redis.exists(f"{redis_prefix}:rl:webhook:ip:127.0.0.1") == 0
    finally:
        await redis.aclose()


async def test_webhooks_are_accepted_when_the_limiter_redis_is_down(
    aiohttp_client: Any, make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(WEBHOOK_RATE_PER_IP="600"))
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)

    async def limiter_on_down_redis(app: Any) -> AsyncIterator[None]:
        app[keys.local_first_limiter] = RedisRateLimiter(down, "x")
        yield

    app.cleanup_ctx.insert(app.cleanup_ctx.index(lifecycle.redis_client) + 1, limiter_on_down_redis)
    try:
        client = await aiohttp_client(app)
        _, token = await make_user(client)
        strategy = await create_strategy(client, token)
        with caplog.at_level(logging.WARNING, logger="handlers.webhooks"):
            response = await client.post(tv_path(strategy), data="alert while Redis is down")
        assert response.status == 201, await response.text()
        assert await count_rows(client, "alerts", strategy["id"]) == 1
        assert "rate limiter unavailable; webhook not throttled" in caplog.text
    finally:
        await down.aclose()


async def test_alert_for_a_strategy_deleted_meanwhile_is_not_found(client: Any) -> None:
    new = alerts.NewAlert(
        strategy_id=uuid.uuid4(),
        source="tradingview",
        raw_body="buy",
        content_type="text/plain",
        body_sha256=hashlib.sha256(b"buy").digest(),
    )
    async with client.server.app[keys.pool].acquire() as conn:
        for dedup in (0, 60):
            with pytest.raises(NotFound):
                async with conn.transaction():
                    await alerts.insert(conn, new, dedup)
