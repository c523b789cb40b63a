"""Operational endpoints: /health, /ready (503 with details when a backend is down), /metrics."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from handlers import keys
from server.app import create_app
from server.settings import Settings
from tests.conftest import with_database
from tests.helpers import connect, eventually, make_user, request


async def test_health_is_liveness(client: TestClient) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_ready_is_503_with_details_when_the_database_is_gone(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    pg_admin_url: str,
) -> None:
    # A throwaway database the app migrates itself, then dropped under its feet.
    name = f"arena_gone_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        client = await aiohttp_client(
            create_app(make_settings(DATABASE_URL=with_database(pg_admin_url, name)))
        )
        assert (await client.get("/ready")).status == 200
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        response = await client.get("/ready")
        body = await response.json()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    assert response.status == 503, body
    assert response.headers["Retry-After"] == "1"
    assert body["error"] is True
    assert body["status_code"] == 503
    assert body["status"] == "unavailable"
    assert body["message"] == "not ready: database unavailable"
    assert body["database"]["ok"] is False
    assert body["database"]["backend"] == "postgres"
    assert body["errors"]["database"] == [body["database"]["error"]]
    assert body["broker"] == {"ok": True, "backend": "memory"}
    # liveness is unaffected: the process still serves
    assert (await client.get("/health")).status == 200


async def test_ready_is_503_when_the_broker_is_down(client: TestClient) -> None:
    await client.server.app[keys.hub].broker.close()
    response = await client.get("/ready")
    body = await response.json()
    assert response.status == 503, body
    assert body["message"] == "not ready: broker unavailable"
    assert body["broker"] == {"ok": False, "error": "BrokerError", "backend": "memory"}
    assert body["database"] == {"ok": True, "backend": "postgres"}
    assert body["errors"] == {"broker": ["BrokerError"]}


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None when absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


async def scrape(client: TestClient) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return await response.text()


async def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    for _ in range(3):
        assert (await client.get("/health")).status == 200
    assert (await client.get("/no/such/secret-abc")).status == 404
    publish = "/api/v1/channels/alerts:x1/publish"
    assert (await client.post(publish, data=b"{}")).status == 401
    text = await scrape(client)
    assert sample(
        text, "arena_http_requests_total", method="GET", route="/health", status="200"
    ) == pytest.approx(3)
    assert sample(
        text, "arena_http_requests_total", method="GET", route="unmatched", status="404"
    ) == pytest.approx(1)
    template = "/api/v1/channels/{channel}/publish"
    assert sample(
        text, "arena_http_requests_total", method="POST", route=template, status="401"
    ) == pytest.approx(1)
    assert sample(
        text, "arena_http_request_seconds_count", method="GET", route="/health"
    ) == pytest.approx(3)
    # concrete paths (which may carry secrets) never become labels
    assert "secret-abc" not in text
    assert "alerts:x1" not in text


async def test_metrics_track_open_websockets_and_channels(client: TestClient) -> None:
    _, token = await make_user(client, "admin")
    assert sample(await scrape(client), "arena_ws_connections") == 0
    ws = await connect(client, token)
    await request(ws, "subscribe", channel="alerts:metrics")
    text = await scrape(client)
    assert sample(text, "arena_ws_connections") == 1
    assert sample(text, "arena_channels") == 1
    assert sample(text, "arena_subscriptions") == 1
    await ws.close()

    async def closed() -> bool:  # the server notices the close asynchronously
        return sample(await scrape(client), "arena_ws_connections") == 0

    await eventually(closed, what="the server noticing the close")
    text = await scrape(client)
    assert sample(text, "arena_ws_connections") == 0
    assert sample(text, "arena_subscriptions") == 0
    assert (sample(text, "arena_ws_disconnects_total", code="1000") or 0) >= 1


async def test_ready_reports_redis_when_redis_url_is_set(redis_client: TestClient) -> None:
    response = await redis_client.get("/ready")
    body = await response.json()
    assert response.status == 200, body
    assert body["broker"] == {"ok": True, "backend": "redis"}
    assert body["database"] == {"ok": True, "backend": "postgres"}
