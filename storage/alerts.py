"""Alerts received by a strategy's webhooks: insert (idempotent, de-duplicated), list, stats.

:func:`insert` must run inside the caller's transaction so that the caller can record the
outbox event in the same commit.
"""

# Queries are built only from constant column lists and numbered placeholders:
# ruff: noqa: S608

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from storage.errors import NotFound
from storage.outbox import OutboxEvent
from storage.query import Params, fetch_by_id, keyset_page

#: The columns of ``alerts`` that a :class:`NewAlert` fills, with their SQL types: the one list
#: every insert below is written from, in the order of :meth:`NewAlert.values` (the statements'
#: parameters follow it).
_NEW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("strategy_id", "uuid"),
    ("source", "text"),
    ("webhook_id", "text"),
    ("ticker", "text"),
    ("action", "text"),
    ("quantity", "numeric"),
    ("price", "numeric"),
    ("alert_time", "timestamptz"),
    ("message", "text"),
    ("raw_body", "text"),
    ("content_type", "text"),
    ("body_sha256", "bytea"),
)
_NEW_NAMES = ", ".join(name for name, _ in _NEW_COLUMNS)
_new_values = operator.attrgetter(*(name for name, _ in _NEW_COLUMNS))


def _placeholders(first: int, array: bool = False) -> str:
    """``$first::uuid, $<first + 1>::text, ...``: typed parameters for :data:`_NEW_COLUMNS`
    (arrays of those types with ``array``)."""
    suffix = "[]" if array else ""
    return ", ".join(
        f"${number}::{sql_type}{suffix}"
        for number, (_, sql_type) in enumerate(_NEW_COLUMNS, start=first)
    )


@dataclass(frozen=True, slots=True)
class NewAlert:
    """An alert to store; every extracted column is optional, the raw body is not."""

    strategy_id: UUID
    source: str  # "tradingview" | "signed" | "manual"
    raw_body: str
    content_type: str  # "application/json" | "text/plain"
    body_sha256: bytes
    webhook_id: str | None = None
    ticker: str | None = None
    action: str | None = None  # "buy" | "sell"
    quantity: Decimal | None = None
    price: Decimal | None = None
    alert_time: datetime | None = None
    message: str | None = None

    def values(self) -> tuple[Any, ...]:
        """The values of :data:`_NEW_COLUMNS`, in that order."""
        values: tuple[Any, ...] = _new_values(self)
        return values


@dataclass(frozen=True, slots=True)
class Alert:
    id: UUID
    strategy_id: UUID
    source: str
    webhook_id: str | None
    ticker: str | None
    action: str | None
    quantity: Decimal | None
    price: Decimal | None
    alert_time: datetime | None
    message: str | None
    raw_body: str
    content_type: str
    received_at: datetime
    edited_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class InsertResult:
    """``duplicate`` is True when nothing was inserted (a replayed webhook id, or an identical
    TradingView body inside the window); ``alert`` is then the original when it still exists."""

    alert: Alert | None
    duplicate: bool
    #: the ``alert.created`` outbox event written with a new alert (when the caller asked)
    event: OutboxEvent | None = None


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    count: int
    buy_volume: Decimal
    sell_volume: Decimal


_COLUMNS = (
    "id, strategy_id, source, webhook_id, ticker, action, quantity, price, alert_time, "
    "message, raw_body, content_type, received_at, edited_at"
)

#: Columns an owner may correct with :func:`update`.
EDITABLE = frozenset({"ticker", "action", "quantity", "price", "message"})


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One alert of a price series: when it arrived, its price and side."""

    id: UUID
    received_at: datetime
    price: Decimal
    action: str | None


def _alert(row: asyncpg.Record) -> Alert:
    return Alert(**dict(row.items()))


def _dedup_lock_key(strategy_id: UUID, body_sha256: bytes) -> int:
    digest = hashlib.sha256(b"alert-dedup:" + strategy_id.bytes + body_sha256).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def insert(conn: asyncpg.Connection, new: NewAlert, dedup_seconds: int = 0) -> InsertResult:
    """Insert ``new`` unless it repeats an earlier alert. Call inside a transaction.

    * With ``webhook_id``: the unique ``(strategy_id, webhook_id)`` key makes concurrent
      replays wait for the first insert and then insert nothing.
    * Without it and ``dedup_seconds > 0``: an identical body for the same strategy received
      within the window is a duplicate. A transaction-scoped advisory lock on
      (strategy, body hash) serialises concurrent retries, so exactly one of them inserts.

    Raises :class:`NotFound` when the strategy does not exist (deleted meanwhile).
    """
    if new.webhook_id is None and dedup_seconds > 0:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1)", _dedup_lock_key(new.strategy_id, new.body_sha256)
        )
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM alerts WHERE strategy_id = $1 AND body_sha256 = $2 "
            "AND received_at > clock_timestamp() - make_interval(secs => $3) "
            "ORDER BY received_at DESC LIMIT 1",
            new.strategy_id,
            new.body_sha256,
            float(dedup_seconds),
        )
        if row is not None:
            return InsertResult(_alert(row), True)
    try:
        row = await conn.fetchrow(
            f"""
            INSERT INTO alerts ({_NEW_NAMES})
            VALUES ({_placeholders(1)})
            ON CONFLICT (strategy_id, webhook_id) DO NOTHING
            RETURNING {_COLUMNS}
            """,
            *new.values(),
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("strategy") from None
    if row is not None:
        return InsertResult(_alert(row), False)
    original = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM alerts WHERE strategy_id = $1 AND webhook_id = $2",
        new.strategy_id,
        new.webhook_id,
    )
    return InsertResult(_alert(original) if original else None, True)


# The single statement behind :func:`insert_with_event`. Its parameters: $1 the alert's id,
# $2 to $13 the :data:`_NEW_COLUMNS` (so $2 is strategy_id, $4 webhook_id, $13 body_sha256),
# $14 the de-duplication window, $15 to $17 the event's channels, payload and received_at path.
# ``dup`` finds an identical body inside the de-duplication window (only when $14 > 0; the
# caller holds the advisory lock already), ``ins`` inserts unless ``dup`` found one or the
# webhook id exists, ``ev`` writes the outbox event only for a row ``ins`` inserted, with the
# database's ``received_at`` put into the payload in ``datetime.isoformat()`` form (what the
# Python side writes). The last branch returns the original of a replayed webhook id.
_INSERT_WITH_EVENT = f"""
WITH dup AS (
    SELECT {_COLUMNS} FROM alerts
    WHERE $14::float8 > 0 AND strategy_id = $2::uuid AND body_sha256 = $13::bytea
      AND received_at > clock_timestamp() - make_interval(secs => $14::float8)
    ORDER BY received_at DESC LIMIT 1
), ins AS (
    INSERT INTO alerts (id, {_NEW_NAMES})
    SELECT $1::uuid, {_placeholders(2)}
    WHERE NOT EXISTS (SELECT 1 FROM dup)
    ON CONFLICT (strategy_id, webhook_id) DO NOTHING
    RETURNING {_COLUMNS}
), ev AS (
    INSERT INTO outbox (channels, payload)
    SELECT $15::text[], jsonb_set($16::jsonb, $17::text[], to_jsonb(
        to_char(ins.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN date_part('microseconds', ins.received_at)::bigint % 1000000 = 0 THEN ''
                ELSE to_char(ins.received_at AT TIME ZONE 'UTC', '.US') END
        || '+00:00'))
    FROM ins
    RETURNING id
)
SELECT true AS inserted, {_COLUMNS} FROM ins
UNION ALL
SELECT false, {_COLUMNS} FROM dup
UNION ALL
SELECT false, {_COLUMNS} FROM alerts
WHERE $4::text IS NOT NULL AND strategy_id = $2 AND webhook_id = $4
  AND NOT EXISTS (SELECT 1 FROM ins)
LIMIT 1
"""


async def insert_with_event(
    conn: asyncpg.Connection,
    new: NewAlert,
    alert_id: UUID,
    channels: Sequence[str],
    payload: dict[str, Any],
    received_at_path: Sequence[str],
    dedup_seconds: int = 0,
) -> InsertResult:
    """:func:`insert` plus, for a new alert only, an outbox event for ``channels`` — in one
    statement, so one round trip and (outside a transaction) one commit.

    The alert gets ``alert_id``. ``payload`` is the event as the caller built it for that id;
    the database's ``received_at`` is written at ``received_at_path`` inside it. With
    ``dedup_seconds > 0`` and no ``webhook_id`` the call must run in a transaction that holds
    :func:`lock_dedup` first (a statement's snapshot predates any lock it would take itself).

    Raises :class:`NotFound` when the strategy does not exist (deleted meanwhile).
    """
    args = (
        alert_id,
        *new.values(),
        float(dedup_seconds) if new.webhook_id is None else 0.0,
        list(channels),
        payload,
        list(received_at_path),
    )
    try:
        row = await conn.fetchrow(_INSERT_WITH_EVENT, *args)
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("strategy") from None
    if row is not None:
        fields = dict(row.items())
        inserted = fields.pop("inserted")
        return InsertResult(Alert(**fields), not inserted)
    # A replay racing the first insert of its webhook id: ON CONFLICT waited for that commit,
    # which this statement's snapshot cannot see; a new statement can.
    original = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM alerts WHERE strategy_id = $1 AND webhook_id = $2",
        new.strategy_id,
        new.webhook_id,
    )
    return InsertResult(_alert(original) if original else None, True)


@dataclass(frozen=True, slots=True)
class NewAlertWithEvent:
    """One alert of :func:`insert_many_with_events`: the row, the id it gets, and its
    ``alert.created`` event (one channel; ``received_at`` filled in)."""

    new: NewAlert
    alert_id: UUID
    channel: str
    payload: dict[str, Any]


def _aliased(alias: str) -> str:
    return ", ".join(f"{alias}.{column.strip()}" for column in _COLUMNS.split(","))


#: How many unpublished outbox events :func:`insert_many_with_events` reports at most.
_PENDING_LIMIT = 512


@dataclass(frozen=True, slots=True)
class InsertedMany:
    """What :func:`insert_many_with_events` did: one result per item (a new alert's carries
    its outbox event) and, when something was inserted, the ids of the outbox events that
    were unpublished in the statement's snapshot (committed before it started), in id order;
    None when there were more than 512 (or nothing was inserted)."""

    results: list[InsertResult]
    pending: list[int] | None


# The statement behind :func:`insert_many_with_events`. Its parameters: arrays of the alerts'
# ids ($1), of the :data:`_NEW_COLUMNS` ($2 to $13), of the events' channels and payloads ($14,
# $15); $16 the received_at path, $17 the de-duplication window, $18 'on' for a quiet commit
# (no NOTIFY). ``input`` unnests the arrays (in the callers' order), ``dup`` finds for each row
# without a webhook id the newest identical body inside the de-duplication window (only when
# $17 > 0; the caller holds the advisory locks),
# ``ins`` inserts the others in order unless the webhook id is stored already, ``ev`` writes
# one outbox event per inserted row in the same order (so the feed publishes them in order).
# ``pending`` lists the unpublished outbox events the statement's snapshot sees (not its own:
# a data-modifying CTE's rows are invisible to the rest of the statement), so the caller can
# tell whether publishing its events at once would overtake an event committed before them
# (on the first event's row only).
# The result names each row by its position: inserted, a duplicate body, or the stored
# original of a replayed webhook id as the statement's snapshot sees it (one committed by a
# concurrent transaction while this one waited for it is missing: the caller reads it again).
_INSERT_MANY_WITH_EVENTS = f"""
WITH input AS (
    SELECT * FROM unnest($1::uuid[], {_placeholders(2, array=True)}, $14::text[], $15::jsonb[])
        WITH ORDINALITY AS i(id, {_NEW_NAMES}, channel, payload, ord)
    -- 'on': the caller hands the events to the relay itself; the outbox trigger skips its
    -- NOTIFY (for this transaction only; evaluated here, as every group reads its input)
    WHERE set_config('arena.outbox_quiet', $18::text, true) IS NOT NULL
), dup AS (
    SELECT DISTINCT ON (input.ord) input.ord, {_aliased("a")}
    FROM input JOIN alerts a
      ON $17::float8 > 0 AND input.webhook_id IS NULL AND a.strategy_id = input.strategy_id
     AND a.body_sha256 = input.body_sha256
     AND a.received_at > clock_timestamp() - make_interval(secs => $17::float8)
    ORDER BY input.ord, a.received_at DESC
), ins AS (
    INSERT INTO alerts (id, {_NEW_NAMES})
    SELECT id, {_NEW_NAMES}
    FROM input WHERE NOT EXISTS (SELECT 1 FROM dup WHERE dup.ord = input.ord)
    ORDER BY ord
    ON CONFLICT (strategy_id, webhook_id) DO NOTHING
    RETURNING {_COLUMNS}
), ev AS (
    INSERT INTO outbox (channels, payload)
    SELECT ARRAY[input.channel], jsonb_set(input.payload, $16::text[], to_jsonb(
        to_char(ins.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN date_part('microseconds', ins.received_at)::bigint % 1000000 = 0 THEN ''
                ELSE to_char(ins.received_at AT TIME ZONE 'UTC', '.US') END
        || '+00:00'))
    FROM ins JOIN input ON input.id = ins.id
    ORDER BY input.ord
    RETURNING id, payload
), pending AS (
    SELECT ARRAY(
        SELECT id FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT {_PENDING_LIMIT + 1}
    ) AS ids
)
SELECT true AS inserted, input.ord, ev.id AS event_id, ev.payload AS event_payload,
       CASE WHEN ev.id = (SELECT min(id) FROM ev) THEN pending.ids END AS pending,
       {_aliased("ins")}
FROM ins JOIN input ON input.id = ins.id JOIN ev ON ev.payload #>> '{{alert,id}}' = ins.id::text
CROSS JOIN pending
UNION ALL
SELECT false, dup.ord, NULL, NULL, NULL, {_aliased("dup")} FROM dup
UNION ALL
SELECT false, input.ord, NULL, NULL, NULL, {_aliased("a")} FROM alerts a
JOIN input ON a.strategy_id = input.strategy_id AND a.webhook_id = input.webhook_id
WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.id = input.id)
"""


async def insert_many_with_events(
    conn: asyncpg.Connection,
    items: Sequence[NewAlertWithEvent],
    received_at_path: Sequence[str],
    dedup_seconds: int = 0,
    *,
    quiet: bool = False,
) -> InsertedMany:
    """:func:`insert_with_event` for several alerts in one statement (one round trip, and
    outside a transaction one commit). Returns one result per item, in order (a new alert's
    with its outbox event), and the unpublished events that were committed before it.
    ``quiet``: the caller hands the events to the relay in-process, so the outbox's ``NOTIFY``
    is skipped (migration ``0009_outbox_quiet``).

    Each alert is inserted with its outbox event unless it repeats an earlier one: a stored
    ``(strategy_id, webhook_id)``, or (no webhook id, ``dedup_seconds > 0``) an identical body
    of the strategy inside the window — for those the caller's transaction must hold
    :func:`lock_dedup_many_statement`'s locks first. A repeat inside ``items`` (the same
    webhook id, or the same body when de-duplicating) is inserted once, for its first item;
    the later ones are duplicates of it.

    The statement is all or nothing: it raises :class:`NotFound` when a strategy does not
    exist, and the database's error for any other row it refuses (the caller can then insert
    the items one by one to find the bad one).
    """
    keys: dict[tuple[Any, ...], int] = {}
    first: list[int] = []  # for each item, the index of the item that is sent for it
    sent: list[int] = []  # indexes of the items sent
    for index, item in enumerate(items):
        key = _repeat_key(item.new, index, dedup_seconds)
        if key not in keys:
            keys[key] = index
            sent.append(index)
        first.append(keys[key])
    # One array per parameter $1 to $15 (see _INSERT_MANY_WITH_EVENTS).
    columns: list[list[Any]] = [[] for _ in range(len(_NEW_COLUMNS) + 3)]
    for index in sent:
        item = items[index]
        values = (item.alert_id, *item.new.values(), item.channel, item.payload)
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    try:
        rows = await conn.fetch(
            _INSERT_MANY_WITH_EVENTS,
            *columns,
            list(received_at_path),
            float(dedup_seconds),
            "on" if quiet else "off",
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("strategy") from None
    found: dict[int, InsertResult] = {}  # index of a sent item -> its result
    pending: list[int] | None = None
    for row in rows:
        fields = dict(row.items())
        inserted = fields.pop("inserted")
        ordinal = fields.pop("ord")
        event_id = fields.pop("event_id")
        event_payload = fields.pop("event_payload")
        row_pending = fields.pop("pending")
        event = None
        if inserted:
            event = OutboxEvent(event_id, [items[sent[ordinal - 1]].channel], event_payload)
        if row_pending is not None:  # on one row only
            pending = list(row_pending) if len(row_pending) <= _PENDING_LIMIT else None
        found[sent[ordinal - 1]] = InsertResult(Alert(**fields), not inserted, event)
    missing = [index for index in sent if index not in found]
    if missing:
        # Replays racing the first insert of their webhook id (see insert_with_event).
        stored = {
            (alert.strategy_id, alert.webhook_id): alert
            for alert in map(
                _alert,
                await conn.fetch(
                    f"SELECT {_COLUMNS} FROM alerts a JOIN unnest($1::uuid[], $2::text[]) "
                    "AS k(s, w) ON a.strategy_id = k.s AND a.webhook_id = k.w",
                    [items[index].new.strategy_id for index in missing],
                    [items[index].new.webhook_id for index in missing],
                ),
            )
        }
        for index in missing:
            new = items[index].new
            found[index] = InsertResult(stored.get((new.strategy_id, new.webhook_id)), True)
    results: list[InsertResult] = []
    for index in range(len(items)):
        result = found[first[index]]
        # A repeat inside ``items`` of an alert inserted here is a duplicate of it.
        results.append(result if first[index] == index else InsertResult(result.alert, True))
    return InsertedMany(results, pending)


def _repeat_key(new: NewAlert, index: int, dedup_seconds: int) -> tuple[Any, ...]:
    """What makes two alerts of one :func:`insert_many_with_events` call the same one."""
    if new.webhook_id is not None:
        return ("webhook", new.strategy_id, new.webhook_id)
    if dedup_seconds > 0:
        return ("body", new.strategy_id, new.body_sha256)
    return ("row", index)


def lock_dedup_many_statement(news: Sequence[NewAlert]) -> str:
    """:func:`lock_dedup_statement` for the bodies of ``news`` (those without a webhook id),
    one lock per distinct body, taken in key order so that two transactions locking
    overlapping sets cannot deadlock (one statement per lock: a single statement would not
    promise the order). Empty when there is nothing to lock."""
    locks = sorted(
        {_dedup_lock_key(new.strategy_id, new.body_sha256) for new in news if not new.webhook_id}
    )
    return "; ".join(f"SELECT pg_advisory_xact_lock({key})" for key in locks)


def lock_dedup_statement(strategy_id: UUID, body_sha256: bytes) -> str:
    """``SELECT pg_advisory_xact_lock(<key>)`` for the de-duplication of an identical body
    (the key is an integer, so the text is safe to send as a simple query, e.g. after
    ``BEGIN;`` in the same round trip)."""
    return f"SELECT pg_advisory_xact_lock({_dedup_lock_key(strategy_id, body_sha256)})"


async def get(conn: asyncpg.Connection, alert_id: UUID | str) -> Alert:
    """The alert; raises :class:`NotFound`."""
    return _alert(await fetch_by_id(conn, f"SELECT {_COLUMNS} FROM alerts", alert_id, "alert"))


async def get_for_update(conn: asyncpg.Connection, alert_id: UUID | str) -> Alert:
    """The alert, locked until the end of the caller's transaction; raises :class:`NotFound`."""
    select = f"SELECT {_COLUMNS} FROM alerts"
    return _alert(await fetch_by_id(conn, select, alert_id, "alert", for_update=True))


async def update(conn: asyncpg.Connection, alert_id: UUID | str, changes: dict[str, Any]) -> Alert:
    """Set the :data:`EDITABLE` columns in ``changes`` (None clears one) and ``edited_at``;
    raises :class:`NotFound`."""
    unknown = set(changes) - EDITABLE
    if unknown:
        raise ValueError(f"not editable: {sorted(unknown)}")
    names = sorted(changes)
    sets = ", ".join(f"{name} = ${index}" for index, name in enumerate(names, start=2))
    row = await conn.fetchrow(
        f"UPDATE alerts SET {sets}{', ' if sets else ''}edited_at = clock_timestamp() "
        f"WHERE id = $1::uuid RETURNING {_COLUMNS}",
        str(alert_id),
        *(changes[name] for name in names),
    )
    if row is None:
        raise NotFound("alert")
    return _alert(row)


async def delete(conn: asyncpg.Connection, alert_id: UUID | str) -> None:
    """Delete the alert; raises :class:`NotFound`."""
    result: str = await conn.execute("DELETE FROM alerts WHERE id = $1::uuid", str(alert_id))
    if result.split()[-1] == "0":
        raise NotFound("alert")


def _filters(
    viewer: UUID | str | None,
    strategy_id: UUID | str | None,
    ticker: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
) -> tuple[list[str], Params]:
    clauses: list[str] = []
    arg = Params()
    if viewer is not None:
        ref = arg(str(viewer))
        clauses.append(
            f"a.strategy_id IN (SELECT id FROM strategies WHERE owner_id = {ref}::uuid "
            f"UNION ALL SELECT strategy_id FROM strategy_shares WHERE user_id = {ref}::uuid)"
        )
    if strategy_id is not None:
        clauses.append(f"a.strategy_id = {arg(str(strategy_id))}::uuid")
    if ticker is not None:
        clauses.append(f"a.ticker = {arg(ticker)}")
    if action is not None:
        clauses.append(f"a.action = {arg(action)}")
    if since is not None:
        clauses.append(f"a.received_at >= {arg(since)}")
    if until is not None:
        clauses.append(f"a.received_at < {arg(until)}")
    return clauses, arg


async def list_alerts(
    conn: asyncpg.Connection,
    *,
    viewer: UUID | str | None,
    strategy_id: UUID | str | None = None,
    ticker: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: tuple[datetime, UUID] | None = None,
    limit: int = 50,
) -> list[Alert]:
    """Alerts newest first, filtered; ``viewer`` None means every strategy (admins).

    ``after`` is the (received_at, id) of the last alert of the previous page (keyset paging:
    stable while new alerts arrive).
    """
    clauses, arg = _filters(viewer, strategy_id, ticker, action, since, until)
    select = f"SELECT {_COLUMNS} FROM alerts a"
    sql = keyset_page(select, "a", clauses, arg, after, limit, stamp="received_at")
    return [_alert(row) for row in await conn.fetch(sql, *arg.values)]


async def stats(
    conn: asyncpg.Connection,
    *,
    viewer: UUID | str | None,
    since: datetime,
    until: datetime,
    bucket_seconds: int,
    strategy_id: UUID | str | None = None,
    ticker: str | None = None,
    action: str | None = None,
) -> list[Bucket]:
    """Per-bucket alert count and buy/sell volume (sum of ``quantity``) over
    ``[since, until)``; buckets are aligned to the Unix epoch and empty ones are included, so
    the series plots directly. ``action`` keeps only buy (or sell) alerts."""
    clauses, arg = _filters(viewer, strategy_id, ticker, action, since, until)
    width, lo, hi = arg(float(bucket_seconds)), arg(since), arg(until)
    interval = f"make_interval(secs => {width})"
    rows = await conn.fetch(
        f"""
        WITH agg AS (
            SELECT date_bin({interval}, a.received_at, 'epoch') AS t,
                   count(*) AS count,
                   COALESCE(sum(a.quantity) FILTER (WHERE a.action = 'buy'), 0) AS buy,
                   COALESCE(sum(a.quantity) FILTER (WHERE a.action = 'sell'), 0) AS sell
            FROM alerts a WHERE {" AND ".join(clauses)} GROUP BY 1
        )
        SELECT s.t, COALESCE(agg.count, 0) AS count, COALESCE(agg.buy, 0) AS buy,
               COALESCE(agg.sell, 0) AS sell
        FROM generate_series(date_bin({interval}, {lo}::timestamptz, 'epoch'),
                             {hi}::timestamptz, {interval}) AS s (t)
        LEFT JOIN agg ON agg.t = s.t
        WHERE s.t < {hi}
        ORDER BY s.t
        """,
        *arg.values,
    )
    return [Bucket(row["t"], row["count"], row["buy"], row["sell"]) for row in rows]


async def series(
    conn: asyncpg.Connection,
    *,
    strategy_id: UUID | str,
    ticker: str,
    since: datetime | None = None,
    until: datetime | None = None,
    after: tuple[datetime, UUID] | None = None,
    limit: int = 500,
) -> list[SeriesPoint]:
    """Alerts of one ticker of one strategy that carry a price, oldest first (a chart's
    order), from ``after`` (the (received_at, id) of the previous page's last point) on."""
    clauses, arg = _filters(None, strategy_id, ticker, None, since, until)
    clauses.append("a.price IS NOT NULL")
    select = "SELECT a.id, a.received_at, a.price, a.action FROM alerts a"
    sql = keyset_page(
        select, "a", clauses, arg, after, limit, stamp="received_at", oldest_first=True
    )
    rows = await conn.fetch(sql, *arg.values)
    return [SeriesPoint(row["id"], row["received_at"], row["price"], row["action"]) for row in rows]
