"""Helpers for the alert-feed tests: strategies with secrets, signed and TradingView posts."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from handlers import keys
from handlers.webhook_signature import sign


async def create_strategy(client: TestClient, token: str, name: str = "Breakout") -> dict[str, Any]:
    """POST a strategy; returns the 201 body (with its one-time secrets)."""
    response = await client.post(
        "/api/v1/strategies", json={"name": name}, headers={"Authorization": f"Bearer {token}"}
    )
    body: dict[str, Any] = await response.json()
    assert response.status == 201, body
    return body


def tv_path(strategy: dict[str, Any]) -> str:
    return f"/webhooks/tv/{strategy['secrets']['url_secret']}"


def signed_headers(
    secret: str, body: bytes, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "Content-Type": "application/json",
    }


async def post_signed(
    client: TestClient, strategy: dict[str, Any], payload: Any, **kwargs: Any
) -> Any:
    body = orjson.dumps(payload)
    headers = signed_headers(strategy["secrets"]["signing_secret"], body, **kwargs)
    return await client.post(f"/webhooks/alerts/{strategy['id']}", data=body, headers=headers)


async def count_rows(client: TestClient, table: str, strategy_id: str | None = None) -> int:
    """Rows of ``table`` (alerts or outbox) for the strategy, read straight from PostgreSQL."""
    async with client.server.app[keys.pool].acquire() as conn:
        if table == "alerts":
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM alerts WHERE strategy_id = $1::uuid", strategy_id
                )
            )
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE $1 = ANY(channels)", f"alerts:{strategy_id}"
            )
        )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
