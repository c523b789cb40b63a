"""Alerts of the strategies a caller may see: list, statistics, price series, read, and the
owner's changes (manual alerts, corrections, deletion), each change published on the feed.

A user sees the alerts of strategies they own or that are shared with them; admins and
services see everything. Only the owner may add or correct alerts; the owner or an admin may
delete them. Alerts of strategies the caller may not see are :class:`NotFound`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
from pydantic import (
    AfterValidator,
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from services.alerts import ingest
from services.alerts.body import JSON_TYPE, MAX_MESSAGE, MAX_NUMBER, AlertFields, ParsedBody
from services.alerts.feed import AlertOut, IsoTime, deleted_event, updated_event
from services.auth.principal import Principal
from services.channels import names
from services.errors import Forbidden, Invalid
from services.outbox.relay import OutboxRelay
from storage import alerts, outbox, strategies
from storage.errors import NotFound

MAX_BUCKETS = 2000
BUCKETS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14400, "1d": 86400}
MAX_SERIES_PAGE = 2000
MAX_PLACES = 20


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class StatsPoint(BaseModel):
    t: IsoTime = Field(description="bucket start")
    count: int
    buy_volume: float = Field(description="sum of quantity of buy alerts")
    sell_volume: float = Field(description="sum of quantity of sell alerts")


class StatsOut(BaseModel):
    since: IsoTime
    until: IsoTime
    bucket_seconds: int
    series: list[StatsPoint]


class SeriesPoint(BaseModel):
    """One priced alert: a point of the line, a marker when it has a side."""

    model_config = ConfigDict(from_attributes=True)

    id: UUID = Field(description="the alert")
    time: IsoTime = Field(validation_alias="received_at", description="when it was received")
    price: float
    action: Literal["buy", "sell"] | None


class SeriesOut(BaseModel):
    strategy_id: UUID
    ticker: str
    points: list[SeriesPoint] = Field(description="oldest first")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (newer) points")


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


class SeriesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy_id: UUID
    ticker: str = Field(min_length=1, max_length=64)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=500, ge=1, le=MAX_SERIES_PAGE)
    cursor: str | None = Field(default=None, max_length=200)

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
Ticker = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=_NO_CONTROL)
]
Message = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=MAX_MESSAGE, pattern=r"^[^\x00]*$")
]


def _places(value: Decimal) -> Decimal:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_PLACES:
        raise ValueError(f"at most {MAX_PLACES} decimal places")
    return value


#: A price or quantity: 0 <= x < 10^15, at most MAX_PLACES decimal places.
Number = Annotated[
    Decimal, Field(ge=0, lt=MAX_NUMBER, allow_inf_nan=False), AfterValidator(_places)
]


class _AlertFields(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ticker: Ticker | None = None
    action: Literal["buy", "sell"] | None = None
    quantity: Number | None = None
    price: Number | None = None
    message: Message | None = Field(
        default=None,
        validation_alias=AliasChoices("message", "note"),
        description="free text (also accepted as `note`)",
    )


class ManualAlert(_AlertFields):
    """An alert entered by the strategy's owner (``POST /api/v1/alerts``)."""

    strategy_id: UUID
    time: AwareDatetime | None = Field(default=None, description="when the signal happened")


class AlertPatch(_AlertFields):
    """A correction: only the fields given change; ``null`` clears one."""


def viewer(principal: Principal) -> str | None:
    """Whose alerts the caller sees: None for admins and services (everyone's)."""
    return None if principal.is_privileged else principal.user_id


def check_range(since: datetime | None, until: datetime | None) -> None:
    """``since`` must be before ``until``."""
    if since is not None and until is not None and since >= until:
        raise Invalid("since must be before until", {"since": ["must be < until"]})


async def check_strategy(pool: asyncpg.Pool, principal: Principal, strategy: UUID) -> None:
    """:class:`NotFound` unless the caller may read the strategy."""
    if principal.is_privileged:
        return
    async with pool.acquire() as conn:
        if not await strategies.can_read(conn, strategy, principal.user_id):
            raise NotFound("strategy")


async def list_alerts(
    pool: asyncpg.Pool,
    principal: Principal,
    query: ListQuery,
    after: tuple[datetime, UUID] | None,
) -> list[alerts.Alert]:
    """Up to ``query.limit + 1`` visible alerts after ``after``, newest first (the extra one
    tells the caller there is a next page)."""
    check_range(query.since, query.until)
    if query.strategy is not None:
        await check_strategy(pool, principal, query.strategy)
    async with pool.acquire() as conn:
        return await alerts.list_alerts(
            conn,
            viewer=viewer(principal),
            strategy_id=query.strategy,
            ticker=query.ticker,
            action=query.action,
            since=query.since,
            until=query.until,
            after=after,
            limit=query.limit + 1,
        )


def bucket_seconds(bucket: str) -> int:
    """The width of a named or numeric bucket, in seconds."""
    seconds = BUCKETS.get(bucket)
    if seconds is None:
        if not bucket.isdigit() or not 60 <= int(bucket) <= 31 * 86400:
            raise Invalid(
                "invalid bucket",
                {"bucket": [f"one of {', '.join(BUCKETS)} or seconds between 60 and 31d"]},
            )
        seconds = int(bucket)
    return seconds


async def stats(pool: asyncpg.Pool, principal: Principal, query: StatsQuery) -> StatsOut:
    """Per-bucket count and buy/sell volume, gaps filled with zeros; the last 24 hours in
    1-hour buckets by default; ``action`` counts only buy (or sell) alerts."""
    seconds = bucket_seconds(query.bucket)
    until = query.until or datetime.now(UTC)
    since = query.since or until - timedelta(days=1)
    check_range(since, until)
    if (until - since).total_seconds() / seconds > MAX_BUCKETS:
        raise Invalid(
            f"too many buckets (at most {MAX_BUCKETS}); widen the bucket or narrow the range",
            {"bucket": ["too small for this range"]},
        )
    if query.strategy is not None:
        await check_strategy(pool, principal, query.strategy)
    async with pool.acquire() as conn:
        buckets = await alerts.stats(
            conn,
            viewer=viewer(principal),
            since=since,
            until=until,
            bucket_seconds=seconds,
            strategy_id=query.strategy,
            ticker=query.ticker,
            action=query.action,
        )
    return StatsOut(
        since=since,
        until=until,
        bucket_seconds=seconds,
        series=[
            StatsPoint(
                t=bucket.start,
                count=bucket.count,
                buy_volume=float(bucket.buy_volume),
                sell_volume=float(bucket.sell_volume),
            )
            for bucket in buckets
        ],
    )


async def series(
    pool: asyncpg.Pool,
    principal: Principal,
    query: SeriesQuery,
    after: tuple[datetime, UUID] | None,
) -> list[alerts.SeriesPoint]:
    """Up to ``query.limit + 1`` priced alerts of one ticker, oldest first, after ``after``."""
    check_range(query.since, query.until)
    await check_strategy(pool, principal, query.strategy_id)
    async with pool.acquire() as conn:
        return await alerts.series(
            conn,
            strategy_id=query.strategy_id,
            ticker=query.ticker,
            since=query.since,
            until=query.until,
            after=after,
            limit=query.limit + 1,
        )


async def get(pool: asyncpg.Pool, principal: Principal, alert_id: UUID) -> alerts.Alert:
    """One visible alert."""
    async with pool.acquire() as conn:
        alert = await alerts.get(conn, alert_id)
        if not principal.is_privileged and not await strategies.can_read(
            conn, alert.strategy_id, principal.user_id
        ):
            raise NotFound("alert")
    return alert


async def _owned(
    conn: asyncpg.Connection, principal: Principal, strategy_id: UUID, action: str
) -> strategies.Strategy:
    """The strategy if the caller owns it; :class:`Forbidden` for those who can only read it,
    :class:`NotFound` for everyone else."""
    strategy = await strategies.get(conn, strategy_id)
    if str(strategy.owner_id) == principal.user_id:
        return strategy
    if principal.is_privileged or principal.user_id in {str(u) for u in strategy.shared_with}:
        raise Forbidden(f"only the strategy's owner may {action}")
    raise NotFound("strategy")


async def create_manual(
    pool: asyncpg.Pool, relay: OutboxRelay, principal: Principal, body: ManualAlert, raw: bytes
) -> alerts.Alert:
    """Store an alert the owner entered by hand and publish it like a webhook's
    (``alert.created``, through :func:`services.alerts.ingest.store`). ``raw`` is the request
    body as sent; it is kept as the alert's raw body."""
    fields = AlertFields(
        ticker=body.ticker,
        action=body.action,
        quantity=body.quantity,
        price=body.price,
        alert_time=body.time,
        message=body.message,
    )
    parsed = ParsedBody(raw.decode("utf-8"), JSON_TYPE, fields)
    new = ingest.new_alert(body.strategy_id, "manual", raw, parsed, None)
    async with pool.acquire() as conn:
        await _owned(conn, principal, body.strategy_id, "add alerts")
        result = await ingest.store(conn, relay, new, 0)
    assert result.alert is not None  # no de-duplication for manual alerts
    return result.alert


async def update(
    pool: asyncpg.Pool, relay: OutboxRelay, principal: Principal, alert_id: UUID, patch: AlertPatch
) -> alerts.Alert:
    """Correct fields of an alert (owner only); commits the change with an ``alert.updated``
    event. An empty patch changes nothing and publishes nothing."""
    changes: dict[str, Any] = {name: getattr(patch, name) for name in patch.model_fields_set}
    async with pool.acquire() as conn, conn.transaction():
        alert = await alerts.get_for_update(conn, alert_id)
        try:
            await _owned(conn, principal, alert.strategy_id, "correct its alerts")
        except NotFound:
            raise NotFound("alert") from None
        if not changes:
            return alert
        updated = await alerts.update(conn, alert_id, changes)
        await outbox.add_event(conn, [names.alerts(alert.strategy_id)], updated_event(updated))
    relay.kick()
    return updated


async def delete(
    pool: asyncpg.Pool, relay: OutboxRelay, principal: Principal, alert_id: UUID
) -> None:
    """Delete an alert (strategy owner or admin); subscribers get ``alert.deleted``."""
    async with pool.acquire() as conn, conn.transaction():
        alert = await alerts.get(conn, alert_id)
        strategy = await strategies.get(conn, alert.strategy_id)
        if not principal.is_privileged and str(strategy.owner_id) != principal.user_id:
            if principal.user_id in {str(user) for user in strategy.shared_with}:
                raise Forbidden("only the strategy's owner may delete its alerts")
            raise NotFound("alert")
        await alerts.delete(conn, alert_id)
        await outbox.add_event(conn, [names.alerts(alert.strategy_id)], deleted_event(alert_id))
    relay.kick()
