"""Alerts REST API and the ``alerts:{strategy_id}`` channel permission.

* ``GET /api/v1/alerts``: filters ``strategy``, ``ticker``, ``action``, ``since``/``until``
  (on the time the alert was received), keyset pagination with ``cursor``;
* ``GET /api/v1/alerts/stats``: per-bucket count and buy/sell volume, gaps filled with zeros;
* ``GET`` / ``DELETE /api/v1/alerts/{id}``.

A user sees the alerts of strategies they own or that are shared with them; only the owner
(or an admin) may delete. Admins and services see everything.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from handlers import keys
from handlers.auth_context import require_principal
from handlers.errors import ApiError, json_response
from handlers.openapi import describe
from handlers.paging import decode_cursor, path_uuid, split_page
from handlers.validation import query_params
from services.auth.principal import Principal
from services.channels import names
from storage import alerts, outbox, strategies
from storage.errors import NotFound

#: Alerts published on the feed carry the raw body only up to this size (full: GET by id).
FEED_RAW_LIMIT = 4096
MAX_BUCKETS = 2000
TAGS = ("alerts",)
BUCKETS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14400, "1d": 86400}


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def alert_json(alert: alerts.Alert, *, raw_limit: int | None = None) -> dict[str, Any]:
    """The public representation of an alert (JSON-ready: no Decimals)."""
    data: dict[str, Any] = {
        "id": str(alert.id),
        "strategy_id": str(alert.strategy_id),
        "source": alert.source,
        "webhook_id": alert.webhook_id,
        "ticker": alert.ticker,
        "action": alert.action,
        "quantity": _float(alert.quantity),
        "price": _float(alert.price),
        "time": alert.alert_time.isoformat() if alert.alert_time else None,
        "message": alert.message,
        "content_type": alert.content_type,
        "received_at": alert.received_at.isoformat(),
    }
    if raw_limit is None or len(alert.raw_body) <= raw_limit:
        data["raw_body"] = alert.raw_body
    else:
        data["raw_body"] = None
        data["raw_body_omitted"] = True
    return data


class AlertOut(BaseModel):
    """An alert as the API and the feed show it."""

    id: UUID
    strategy_id: UUID
    source: Literal["tradingview", "signed"]
    webhook_id: str | None = Field(description="Standard Webhooks message id (signed only)")
    ticker: str | None
    action: Literal["buy", "sell"] | None
    quantity: float | None
    price: float | None
    time: datetime | None = Field(description="the time the sender put in the alert")
    message: str | None
    content_type: Literal["application/json", "text/plain"]
    received_at: datetime
    raw_body: str | None = Field(description="null in lists and for large bodies on the feed")
    raw_body_omitted: bool = False


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class StatsPoint(BaseModel):
    t: datetime = Field(description="bucket start")
    count: int
    buy_volume: float = Field(description="sum of quantity of buy alerts")
    sell_volume: float = Field(description="sum of quantity of sell alerts")


class StatsOut(BaseModel):
    since: datetime
    until: datetime
    bucket_seconds: int
    series: list[StatsPoint]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class _Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: UUID | None = None
    ticker: str | None = Field(default=None, min_length=1, max_length=64)
    action: Literal["buy", "sell"] | None = None
    since: datetime | None = None
    until: datetime | None = None

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


class ListQuery(_Filters):
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)


class StatsQuery(_Filters):
    bucket: str = Field(default="1h", description="1m, 5m, 15m, 1h, 4h, 1d or seconds (>= 60)")


def _viewer(principal: Principal) -> str | None:
    return None if principal.is_privileged else principal.user_id


async def _check_strategy(request: web.Request, principal: Principal, strategy: UUID) -> None:
    if principal.is_privileged:
        return
    async with request.app[keys.pool].acquire() as conn:
        if not await strategies.can_read(conn, strategy, principal.user_id):
            raise NotFound("strategy")


def _check_range(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and since >= until:
        raise ApiError(400, "since must be before until", errors={"since": ["must be < until"]})


@describe(
    summary="List alerts", tags=TAGS, query=ListQuery, responses={200: AlertPage}, errors=(404,)
)
async def list_alerts(request: web.Request) -> web.Response:
    """Alerts visible to the caller, newest first; ``next_cursor`` is null on the last page."""
    principal = require_principal(request)
    query = query_params(request, ListQuery)
    _check_range(query.since, query.until)
    after = decode_cursor(query.cursor)
    if query.strategy is not None:
        await _check_strategy(request, principal, query.strategy)
    async with request.app[keys.pool].acquire() as conn:
        rows = await alerts.list_alerts(
            conn,
            viewer=_viewer(principal),
            strategy_id=query.strategy,
            ticker=query.ticker,
            action=query.action,
            since=query.since,
            until=query.until,
            after=after,
            limit=query.limit + 1,
        )
    page, next_cursor = split_page(rows, query.limit, lambda row: (row.received_at, row.id))
    return json_response(
        {"items": [alert_json(a, raw_limit=0) for a in page], "next_cursor": next_cursor}
    )


def _bucket_seconds(bucket: str) -> int:
    seconds = BUCKETS.get(bucket)
    if seconds is None:
        if not bucket.isdigit() or not 60 <= int(bucket) <= 31 * 86400:
            raise ApiError(
                400,
                "invalid bucket",
                errors={"bucket": [f"one of {', '.join(BUCKETS)} or seconds between 60 and 31d"]},
            )
        seconds = int(bucket)
    return seconds


@describe(
    summary="Alert statistics per time bucket",
    tags=TAGS,
    query=StatsQuery,
    responses={200: StatsOut},
    errors=(404,),
)
async def alert_stats(request: web.Request) -> web.Response:
    """Time-bucketed series: ``{"series": [{"t", "count", "buy_volume", "sell_volume"}]}``.

    Defaults to the last 24 hours in 1-hour buckets. Volume is the sum of ``quantity`` of
    buy (or sell) alerts; alerts without a quantity count but add no volume.
    """
    principal = require_principal(request)
    query = query_params(request, StatsQuery)
    if query.action is not None:
        raise ApiError(400, "stats do not filter by action", errors={"action": ["not allowed"]})
    seconds = _bucket_seconds(query.bucket)
    until = query.until or datetime.now(UTC)
    since = query.since or until - timedelta(days=1)
    _check_range(since, until)
    if (until - since).total_seconds() / seconds > MAX_BUCKETS:
        raise ApiError(
            400,
            f"too many buckets (at most {MAX_BUCKETS}); widen the bucket or narrow the range",
            errors={"bucket": ["too small for this range"]},
        )
    if query.strategy is not None:
        await _check_strategy(request, principal, query.strategy)
    async with request.app[keys.pool].acquire() as conn:
        buckets = await alerts.stats(
            conn,
            viewer=_viewer(principal),
            since=since,
            until=until,
            bucket_seconds=seconds,
            strategy_id=query.strategy,
            ticker=query.ticker,
        )
    return json_response(
        {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "bucket_seconds": seconds,
            "series": [
                {
                    "t": bucket.start.isoformat(),
                    "count": bucket.count,
                    "buy_volume": float(bucket.buy_volume),
                    "sell_volume": float(bucket.sell_volume),
                }
                for bucket in buckets
            ],
        }
    )


@describe(
    summary="Read an alert",
    tags=TAGS,
    responses={200: AlertOut},
    errors=(404,),
    path_formats={"alert_id": "uuid"},
)
async def get_alert(request: web.Request) -> web.Response:
    """One alert with its full raw body; 404 when missing or not visible."""
    principal = require_principal(request)
    alert_id = path_uuid(request, "alert_id")
    async with request.app[keys.pool].acquire() as conn:
        alert = await alerts.get(conn, alert_id)
        if not principal.is_privileged and not await strategies.can_read(
            conn, alert.strategy_id, principal.user_id
        ):
            raise NotFound("alert")
    return json_response(alert_json(alert))


@describe(
    summary="Delete an alert",
    tags=TAGS,
    responses={204: None},
    errors=(403, 404),
    path_formats={"alert_id": "uuid"},
)
async def delete_alert(request: web.Request) -> web.Response:
    """Delete an alert (strategy owner or admin); subscribers get ``alert.deleted``."""
    principal = require_principal(request)
    alert_id = path_uuid(request, "alert_id")
    async with request.app[keys.pool].acquire() as conn, conn.transaction():
        alert = await alerts.get(conn, alert_id)
        strategy = await strategies.get(conn, alert.strategy_id)
        if not principal.is_privileged and str(strategy.owner_id) != principal.user_id:
            if principal.user_id in {str(user) for user in strategy.shared_with}:
                raise ApiError(403, "only the strategy's owner may delete its alerts")
            raise NotFound("alert")
        await alerts.delete(conn, alert_id)
        await outbox.add_event(
            conn,
            [names.alerts(alert.strategy_id)],
            {"type": "alert.deleted", "alert_id": str(alert_id)},
        )
    request.app[keys.relay].kick()
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/alerts", list_alerts)
    app.router.add_get("/api/v1/alerts/stats", alert_stats)
    app.router.add_get("/api/v1/alerts/{alert_id}", get_alert)
    app.router.add_delete("/api/v1/alerts/{alert_id}", delete_alert)
