"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from handlers import keys
from handlers.errors import envelope, json_response

log = logging.getLogger(__name__)


async def health(request: web.Request) -> web.Response:
    """Liveness: the process serves requests."""
    return json_response({"status": "ok"})


async def _check(coro: Any, seconds: float) -> dict[str, Any]:
    try:
        await asyncio.wait_for(coro, seconds)
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True}


async def _db_ping(request: web.Request) -> None:
    async with request.app[keys.pool].acquire() as conn:
        await conn.fetchval("SELECT 1")


async def ready(request: web.Request) -> web.Response:
    """Readiness: database and broker answer.

    200 ``{"status": "ready", "database": {...}, "broker": {...}}``; otherwise 503 with the
    error envelope plus the same details, so load balancers and people both see what is down.
    """
    backends = request.app[keys.backends]
    timeout = request.app[keys.config].http.ready_timeout
    database, broker = await asyncio.gather(
        _check(_db_ping(request), timeout), _check(request.app[keys.hub].ping(), timeout)
    )
    database["backend"] = backends.get("database")
    broker["backend"] = backends.get("broker")
    details = {"database": database, "broker": broker}
    down = [name for name, check in details.items() if not check["ok"]]
    if not down:
        return json_response({"status": "ready", **details})
    body = envelope(
        503,
        f"not ready: {', '.join(down)} unavailable",
        {name: [details[name]["error"]] for name in down},
    )
    return json_response(
        {**body, "status": "unavailable", **details}, status=503, headers={"Retry-After": "1"}
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's metrics (every worker's under
    ``serve --workers``)."""
    body = request.app[keys.metrics_text]()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
