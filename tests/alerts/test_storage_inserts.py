"""The three ways of storing an alert (one insert, one insert with its outbox event, many with
their events in one statement) write every field of a :class:`~storage.alerts.NewAlert` to its
own column, and agree on what a duplicate is (a replayed webhook id; an identical body inside
the de-duplication window)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from handlers import keys
from storage import alerts
from tests.alerts.util import create_strategy
from tests.helpers import make_user

Store = Callable[[asyncpg.Connection, alerts.NewAlert, int], Awaitable[alerts.InsertResult]]


async def _plain(conn: asyncpg.Connection, new: alerts.NewAlert, window: int) -> Any:
    async with conn.transaction():
        return await alerts.insert(conn, new, window)


async def _with_event(conn: asyncpg.Connection, new: alerts.NewAlert, window: int) -> Any:
    async with conn.transaction():
        if window and new.webhook_id is None:
            await conn.execute(alerts.lock_dedup_statement(new.strategy_id, new.body_sha256))
        alert_id = uuid.uuid4()
        payload = {"alert": {"id": str(alert_id), "received_at": None}}
        return await alerts.insert_with_event(
            conn, new, alert_id, ["feed"], payload, ["alert", "received_at"], window
        )


async def _many(conn: asyncpg.Connection, new: alerts.NewAlert, window: int) -> Any:
    async with conn.transaction():
        if window:
            statement = alerts.lock_dedup_many_statement([new])
            if statement:
                await conn.execute(statement)
        alert_id = uuid.uuid4()
        item = alerts.NewAlertWithEvent(
            new, alert_id, "feed", {"alert": {"id": str(alert_id), "received_at": None}}
        )
        done = await alerts.insert_many_with_events(conn, [item], ["alert", "received_at"], window)
        (result,) = done.results
        return result


STORES = pytest.mark.parametrize(
    "store", [_plain, _with_event, _many], ids=["one", "event", "many"]
)


def _new(strategy_id: uuid.UUID, body: str, webhook_id: str | None) -> alerts.NewAlert:
    """An alert with a distinct value in every column."""
    return alerts.NewAlert(
        strategy_id=strategy_id,
        source="signed" if webhook_id else "tradingview",
        raw_body=body,
        content_type="text/plain",
        body_sha256=hashlib.sha256(body.encode()).digest(),
        webhook_id=webhook_id,
        ticker="NVDA",
        action="sell",
        quantity=Decimal("2.5"),
        price=Decimal("131.25"),
        alert_time=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC),
        message="take profit",
    )


async def _strategy(client: Any) -> uuid.UUID:
    _, token = await make_user(client)
    return uuid.UUID((await create_strategy(client, token))["id"])


@STORES
async def test_every_field_is_stored_in_its_column(client: Any, store: Store) -> None:
    strategy_id = await _strategy(client)
    new = _new(strategy_id, "sell NVDA", webhook_id=f"msg_{uuid.uuid4().hex}")
    async with client.server.app[keys.pool].acquire() as conn:
        result = await store(conn, new, 0)
        row = await conn.fetchrow("SELECT * FROM alerts WHERE strategy_id = $1", strategy_id)
    assert not result.duplicate
    assert result.alert is not None
    assert row is not None
    assert row["id"] == result.alert.id
    for name in (
        "strategy_id",
        "source",
        "raw_body",
        "content_type",
        "body_sha256",
        "webhook_id",
        "ticker",
        "action",
        "quantity",
        "price",
        "alert_time",
        "message",
    ):
        assert row[name] == getattr(new, name), name
        if name != "body_sha256":  # not part of the returned alert
            assert getattr(result.alert, name) == row[name], name


@STORES
async def test_a_replayed_webhook_id_returns_the_original(client: Any, store: Store) -> None:
    strategy_id = await _strategy(client)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    async with client.server.app[keys.pool].acquire() as conn:
        first = await store(conn, _new(strategy_id, "first", webhook_id), 0)
        again = await store(conn, _new(strategy_id, "second", webhook_id), 0)
        count = await conn.fetchval(
            "SELECT count(*) FROM alerts WHERE strategy_id = $1", strategy_id
        )
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.alert is not None
    assert first.alert is not None
    assert (again.alert.id, again.alert.raw_body) == (first.alert.id, "first")
    assert count == 1


@STORES
async def test_an_identical_body_is_a_duplicate_only_inside_the_window(
    client: Any, store: Store
) -> None:
    strategy_id = await _strategy(client)
    async with client.server.app[keys.pool].acquire() as conn:
        first = await store(conn, _new(strategy_id, "buy the dip", None), 60)
        repeat = await store(conn, _new(strategy_id, "buy the dip", None), 60)
        other = await store(conn, _new(strategy_id, "sell the rip", None), 60)
        unwindowed = await store(conn, _new(strategy_id, "buy the dip", None), 0)
        count = await conn.fetchval(
            "SELECT count(*) FROM alerts WHERE strategy_id = $1", strategy_id
        )
    assert [r.duplicate for r in (first, repeat, other, unwindowed)] == [False, True, False, False]
    assert repeat.alert is not None
    assert first.alert is not None
    assert repeat.alert.id == first.alert.id
    assert count == 3


async def test_an_event_carries_the_stored_received_at(client: Any) -> None:
    strategy_id = await _strategy(client)
    async with client.server.app[keys.pool].acquire() as conn:
        result = await _with_event(conn, _new(strategy_id, "x", None), 0)
        payload = await conn.fetchval(
            "SELECT payload FROM outbox WHERE payload #>> '{alert,id}' = $1",
            str(result.alert.id),
        )
    assert payload["alert"]["received_at"] == result.alert.received_at.isoformat()
