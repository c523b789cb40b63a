"""Webhook ingestion: ``POST /webhooks/tv/{secret}`` (TradingView) and
``POST /webhooks/alerts/{strategy_id}`` (Standard Webhooks signatures).

HTTP only: the per-IP rate limit, the body size limit (413 while streaming), headers and the
reply. :mod:`services.alerts.ingest` verifies, stores (de-duplicated) and publishes. Both
answer only after the alert is committed with its outbox event: 201 for a new alert, 200 with
the original's id for a duplicate; a database outage is a 503 so senders retry.

The URL secret never reaches a log line or a metric label (those use the route template).
Unknown and revoked secrets get the same 404.
"""

from __future__ import annotations

import logging
from uuid import UUID

from aiohttp import hdrs, web
from pydantic import BaseModel, Field

from handlers import keys
from handlers.client_ip import client_ip
from handlers.errors import ApiError, json_response
from handlers.openapi import describe
from handlers.paging import path_uuid
from services.alerts import ingest
from services.auth.ratelimit import Decision, RateLimiterUnavailable
from storage.errors import NotFound

log = logging.getLogger(__name__)

TAGS = ("webhooks",)


class WebhookAck(BaseModel):
    """201: a new alert was committed; 200: a duplicate, nothing stored or published."""

    id: UUID | None = Field(description="the alert (the original one for a duplicate)")
    duplicate: bool


async def webhook_allowed(request: web.Request) -> Decision:
    """Count this request against its client IP's webhook budget
    (``WEBHOOK_RATE_PER_IP`` per minute, shared across instances when Redis is used; decided
    locally and synced in the background unless ``RATE_LIMIT_SYNC_SECONDS`` is 0, so that no
    Redis round trip stands in the acknowledgement's path).

    Fails open when the shared limiter is unreachable: refusing alerts because Redis is down
    would lose more than an unthrottled minute costs.
    """
    config = request.app[keys.config]
    ip = client_ip(request, config.http.trusted_proxies)
    try:
        return await request.app[keys.local_first_limiter].hit(
            f"webhook:ip:{ip}", config.webhook.rate_per_ip, 60.0
        )
    except RateLimiterUnavailable:
        log.warning("rate limiter unavailable; webhook not throttled", exc_info=True)
        return Decision(True)


async def _rate_limit(request: web.Request) -> None:
    decision = await webhook_allowed(request)
    if not decision.allowed:
        raise ApiError(
            429,
            "too many webhook requests",
            headers={"Retry-After": decision.retry_after_header},
        )


def _check_declared_length(request: web.Request, limit: int) -> None:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"webhook body larger than {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes; 413 beyond (checked while streaming)."""
    _check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"webhook body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _body(request: web.Request, raw: bytes) -> ingest.Body:
    mimetype = request.content_type if hdrs.CONTENT_TYPE in request.headers else None
    return ingest.Body(raw, mimetype, request.charset)


def _ack(result: ingest.Ingested) -> web.Response:
    """201 for a new alert, 200 for a duplicate (nothing stored, nothing published)."""
    alert_id = str(result.alert.id) if result.alert else None
    return json_response(
        {"id": alert_id, "duplicate": result.duplicate}, status=200 if result.duplicate else 201
    )


@describe(
    summary="TradingView alert webhook",
    tags=TAGS,
    responses={201: WebhookAck, 200: WebhookAck},
    errors=(400, 404, 413, 415, 429),
    auth=False,
)
async def tradingview(request: web.Request) -> web.Response:
    """Accept a TradingView alert for the feed whose URL secret is in the path."""
    await _rate_limit(request)
    config = request.app[keys.config].webhook
    _check_declared_length(request, config.max_body_bytes)
    secret = request.match_info["secret"]
    if not ingest.well_formed_url_secret(secret):
        raise NotFound("webhook")
    # The body (at most 64 KiB) is read before a pooled connection is taken, so a slow
    # sender never holds one.
    body = _body(request, await read_body(request, config.max_body_bytes))
    result = await ingest.tradingview(
        request.app[keys.pool],
        request.app[keys.relay],
        secret,
        body,
        dedup_seconds=config.dedup_window,
        cache=request.app[keys.secret_box].urls,
        group=request.app[keys.group_commit],
    )
    return _ack(result)


@describe(
    summary="Standard Webhooks signed alert",
    tags=TAGS,
    responses={201: WebhookAck, 200: WebhookAck},
    errors=(400, 401, 404, 413, 415, 429),
    headers={
        "webhook-id": "message id (idempotency key)",
        "webhook-timestamp": "Unix seconds",
        "webhook-signature": "v1,<base64 HMAC-SHA256 of id.timestamp.body> ...",
    },
    path_formats={"strategy_id": "uuid"},
    auth=False,
)
async def signed(request: web.Request) -> web.Response:
    """Accept a Standard Webhooks signed alert for ``strategy_id``."""
    await _rate_limit(request)
    config = request.app[keys.config].webhook
    _check_declared_length(request, config.max_body_bytes)
    strategy_id = path_uuid(request, "strategy_id")
    headers = ingest.signed_headers(
        request.headers.get("webhook-id"),
        request.headers.get("webhook-timestamp"),
        request.headers.get("webhook-signature"),
        tolerance=config.timestamp_tolerance,
    )
    body = _body(request, await read_body(request, config.max_body_bytes))
    result = await ingest.signed(
        request.app[keys.pool],
        request.app[keys.relay],
        request.app[keys.secret_box],
        strategy_id,
        headers,
        body,
        tolerance=config.timestamp_tolerance,
        group=request.app[keys.group_commit],
    )
    return _ack(result)


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/webhooks/tv/{secret}", tradingview)
    app.router.add_post("/webhooks/alerts/{strategy_id}", signed)
