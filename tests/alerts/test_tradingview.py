"""TradingView ingestion: JSON and text bodies, de-duplication, bad input, secrets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

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
