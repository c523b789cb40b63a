"""Alerts REST API (HTTP only; the logic is in :mod:`services.alerts.alerts`).

* ``GET /api/v1/alerts``: filters ``strategy``, ``ticker``, ``action``, ``since``/``until``
  (on the time the alert was received), keyset pagination with ``cursor``;
* ``POST /api/v1/alerts``: a manual alert (strategy owner), published like a webhook's;
* ``GET /api/v1/alerts/stats``: per-bucket count and buy/sell volume, gaps filled with zeros;
* ``GET /api/v1/alerts/series``: prices of one ticker of one strategy, oldest first;
* ``GET`` / ``PATCH`` / ``DELETE /api/v1/alerts/{id}``.
"""

from __future__ import annotations

from aiohttp import web

from handlers import keys
from handlers.auth_context import require_principal
from handlers.errors import json_response
from handlers.openapi import describe
from handlers.paging import decode_cursor, page_body, path_uuid, split_page
from handlers.validation import parse_body, query_params
from services.alerts import alerts as service
from services.alerts.alerts import (
    AlertPage,
    AlertPatch,
    ListQuery,
    ManualAlert,
    SeriesOut,
    SeriesPoint,
    SeriesQuery,
    StatsOut,
    StatsQuery,
)
from services.alerts.feed import AlertOut, alert_json

TAGS = ("alerts",)


@describe(
    summary="List alerts", tags=TAGS, query=ListQuery, responses={200: AlertPage}, errors=(404,)
)
async def list_alerts(request: web.Request) -> web.Response:
    """Alerts visible to the caller, newest first; ``next_cursor`` is null on the last page."""
    principal = require_principal(request)
    query = query_params(request, ListQuery)
    after = decode_cursor(query.cursor)
    rows = await service.list_alerts(request.app[keys.pool], principal, query, after)
    body = page_body(
        rows,
        query.limit,
        lambda row: (row.received_at, row.id),
        lambda row: alert_json(row, raw_limit=0),  # the list leaves raw bodies out
    )
    return json_response(body)


@describe(
    summary="Add an alert by hand",
    tags=TAGS,
    body=ManualAlert,
    responses={201: AlertOut},
    errors=(403, 404),
)
async def create_alert(request: web.Request) -> web.Response:
    """A manual alert for a strategy you own (``source: manual``); committed, then published
    as ``alert.created`` on the feed like a webhook's."""
    principal = require_principal(request)
    body = await parse_body(request, ManualAlert)
    raw = await request.read()
    alert = await service.create_manual(
        request.app[keys.pool], request.app[keys.relay], principal, body, raw
    )
    return json_response(alert_json(alert), status=201)


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
    buy (or sell) alerts; alerts without a quantity count but add no volume. ``action`` counts
    only buy (or sell) alerts.
    """
    principal = require_principal(request)
    query = query_params(request, StatsQuery)
    out = await service.stats(request.app[keys.pool], principal, query)
    return json_response(out.model_dump(mode="json"))


@describe(
    summary="Price series of one ticker",
    tags=TAGS,
    query=SeriesQuery,
    responses={200: SeriesOut},
    errors=(404,),
)
async def alert_series(request: web.Request) -> web.Response:
    """Alerts of ``ticker`` in strategy ``strategy_id`` that carry a price, oldest first:
    ``{"points": [{"id", "time", "price", "action"}], "next_cursor"}``."""
    principal = require_principal(request)
    query = query_params(request, SeriesQuery)
    after = decode_cursor(query.cursor)
    rows = await service.series(request.app[keys.pool], principal, query, after)
    page, next_cursor = split_page(rows, query.limit, lambda row: (row.received_at, row.id))
    out = SeriesOut(
        strategy_id=query.strategy_id,
        ticker=query.ticker,
        points=[SeriesPoint.model_validate(row) for row in page],
        next_cursor=next_cursor,
    )
    return json_response(out.model_dump(mode="json"))


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
    alert = await service.get(request.app[keys.pool], principal, path_uuid(request, "alert_id"))
    return json_response(alert_json(alert))


@describe(
    summary="Correct an alert",
    tags=TAGS,
    body=AlertPatch,
    responses={200: AlertOut},
    errors=(403, 404),
    path_formats={"alert_id": "uuid"},
)
async def update_alert(request: web.Request) -> web.Response:
    """Correct ``ticker``, ``action``, ``price``, ``quantity`` or ``message`` (owner only);
    committed, then published as ``alert.updated``."""
    principal = require_principal(request)
    alert_id = path_uuid(request, "alert_id")
    patch = await parse_body(request, AlertPatch)
    alert = await service.update(
        request.app[keys.pool], request.app[keys.relay], principal, alert_id, patch
    )
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
    await service.delete(request.app[keys.pool], request.app[keys.relay], principal, alert_id)
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/alerts", list_alerts)
    app.router.add_post("/api/v1/alerts", create_alert)
    app.router.add_get("/api/v1/alerts/stats", alert_stats)
    app.router.add_get("/api/v1/alerts/series", alert_series)
    app.router.add_get("/api/v1/alerts/{alert_id}", get_alert)
    app.router.add_patch("/api/v1/alerts/{alert_id}", update_alert)
    app.router.add_delete("/api/v1/alerts/{alert_id}", delete_alert)
