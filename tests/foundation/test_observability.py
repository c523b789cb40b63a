"""What an operator sees: process, database-pool and token-cache metrics on ``/metrics``, and
one warning line per slow request that never carries a URL secret."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from handlers import keys
from server.app import create_app
from server.settings import Settings
from tests.helpers import make_user


async def scrape(client: Any) -> dict[str, float]:
    """``/metrics`` as ``{sample name: value}`` for samples without labels."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            if not sample.labels:
                samples[sample.name] = sample.value
    return samples


async def test_process_metrics_are_exported(client: Any) -> None:
    samples = await scrape(client)
    assert samples["process_resident_memory_bytes"] > 10_000_000
    assert samples["process_open_fds"] > 3
    assert "process_cpu_seconds_total" in samples
    assert samples["process_max_fds"] >= samples["process_open_fds"]


async def test_database_pool_gauges_follow_borrowed_connections(client: Any) -> None:
    before = await scrape(client)
    assert before["arena_db_pool_max"] == 10  # DB_POOL_MAX default
    assert before["arena_db_pool_size"] >= 1
    assert (
        before["arena_db_pool_in_use"] + before["arena_db_pool_idle"]
        == before["arena_db_pool_size"]
    )
    # Background tasks (outbox relay, janitor) borrow connections too, so compare with margins.
    pool = client.server.app[keys.pool]
    held = [await pool.acquire() for _ in range(3)]
    try:
        during = await scrape(client)
    finally:
        for conn in held:
            await pool.release(conn)
    assert during["arena_db_pool_in_use"] >= 3
    assert during["arena_db_pool_size"] >= 3
    deadline = time.monotonic() + 10
    while (await scrape(client))["arena_db_pool_in_use"] > during["arena_db_pool_in_use"] - 3:
        assert time.monotonic() < deadline, "released connections still counted as in use"
        await asyncio.sleep(0.05)


async def test_token_cache_hits_and_misses_are_counted(client: Any) -> None:
    _, token = await make_user(client)
    start = await scrape(client)
    for _ in range(3):
        resp = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200
    end = await scrape(client)
    assert end["arena_token_cache_misses_total"] - start["arena_token_cache_misses_total"] == 1
    assert end["arena_token_cache_hits_total"] - start["arena_token_cache_hits_total"] == 2


async def test_a_slow_request_logs_one_warning_without_the_url_secret(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Any request is "slow" against a 1 µs threshold: the line's content is what is tested.
    client = await aiohttp_client(create_app(make_settings(SLOW_REQUEST_SECONDS="0.000001")))
    secret = "tv" + "s3cr3t" * 6
    with caplog.at_level(logging.WARNING, logger="arena.http"):
        resp = await client.post(
            f"/webhooks/tv/{secret}?token=also-secret",
            data=b"{}",
            headers={"X-Request-ID": "slow-req-1"},
        )
        ws = await client.ws_connect("/ws")
        await ws.close()
    slow = [record for record in caplog.records if record.getMessage() == "slow request"]
    assert len(slow) == 1  # the WebSocket's lifetime is not a slow request
    (record,) = slow
    fields = record.__dict__
    assert fields["method"] == "POST"
    assert fields["route"] == "/webhooks/tv/{secret}"
    assert fields["path"] == "/webhooks/tv/{secret}"
    assert fields["status"] == resp.status
    assert fields["duration_ms"] >= 0
    assert resp.headers["X-Request-ID"] == "slow-req-1"
    assert fields["request_id"] == "slow-req-1"
    line = caplog.text
    assert secret not in line
    assert "also-secret" not in line


async def test_the_concrete_path_is_logged_when_it_holds_no_secret(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await aiohttp_client(create_app(make_settings(SLOW_REQUEST_SECONDS="0.000001")))
    _, token = await make_user(client)
    with caplog.at_level(logging.WARNING, logger="arena.http"):
        await client.get(
            "/api/v1/requests/00000000-0000-0000-0000-000000000001",
            headers={"Authorization": f"Bearer {token}"},
        )
    (record,) = [r for r in caplog.records if r.getMessage() == "slow request"]
    assert record.__dict__["path"] == "/api/v1/requests/00000000-0000-0000-0000-000000000001"
    assert record.__dict__["route"] == "/api/v1/requests/{id}"
    assert record.__dict__["status"] == 404


async def test_fast_requests_log_no_warning(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await aiohttp_client(create_app(make_settings(SLOW_REQUEST_SECONDS="3600")))
    with caplog.at_level(logging.WARNING, logger="arena.http"):
        assert (await client.get("/health")).status == 200
    assert not [r for r in caplog.records if r.getMessage() == "slow request"]
