"""Webhook ingestion: ``POST /webhooks/tv/{secret}`` (TradingView) and
``POST /webhooks/alerts/{strategy_id}`` (Standard Webhooks signatures).

Both answer only after the alert is committed together with its outbox event; the fan-out to
``alerts:{strategy_id}`` happens afterwards in the outbox relay, so a reply is fast and an
acknowledged alert is never missing from the feed. A database outage is a 503 so senders
retry. TradingView retries 5xx without a message id, so identical TradingView bodies for the
same feed within ``WEBHOOK_DEDUP_WINDOW`` are stored once; signed messages are idempotent by
``webhook-id``. Duplicates answer 200 with the original alert's id and publish nothing.

The URL secret is only hashed and looked up; it never reaches a log line or a metric label
(those use the route template). Unknown and revoked secrets get the same 404.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from uuid import UUID

import asyncpg
from aiohttp import hdrs, web
from pydantic import BaseModel, Field

from handlers import keys
from handlers.alerts_api import FEED_RAW_LIMIT, alert_json
from handlers.client_ip import client_ip
from handlers.errors import ApiError, json_response
from handlers.openapi import describe
from handlers.paging import path_uuid
from services.alerts.body import BodyError, ParsedBody, parse
from services.alerts.signatures import (
    SecretBox,
    SignatureError,
    parse_headers,
    secret_key,
    url_secret_hash,
    verify,
)
from services.auth.ratelimit import Decision, RateLimiterUnavailable
from services.channels import names
from storage import alerts, outbox, strategies
from storage.errors import NotFound

log = logging.getLogger(__name__)

TAGS = ("webhooks",)


class WebhookAck(BaseModel):
    """201: a new alert was committed; 200: a duplicate, nothing stored or published."""

    id: UUID | None = Field(description="the alert (the original one for a duplicate)")
    duplicate: bool


_URL_SECRET_RE = re.compile(r"^[A-Za-z0-9_\-]{20,128}$")


secret_box_key = web.AppKey("webhook_secret_box", SecretBox)


async def webhook_allowed(request: web.Request) -> Decision:
    """Count this request against its client IP's webhook budget
    (``WEBHOOK_RATE_PER_IP`` per minute, shared across instances when Redis is used).

    Fails open when the shared limiter is unreachable: refusing alerts because Redis is down
    would lose more than an unthrottled minute costs.
    """
    config = request.app[keys.config]
    ip = client_ip(request, config.http.trusted_proxies)
    try:
        return await request.app[keys.rate_limiter].hit(
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


def _parse(request: web.Request, body: bytes) -> ParsedBody:
    mimetype = request.content_type if hdrs.CONTENT_TYPE in request.headers else None
    try:
        return parse(body, mimetype, request.charset)
    except BodyError as exc:
        raise ApiError(exc.status, exc.message) from None


async def _store(
    request: web.Request, conn: asyncpg.Connection, new: alerts.NewAlert, dedup_seconds: int
) -> web.Response:
    """Commit the alert and its outbox event together; 201 for a new alert, 200 for a
    duplicate (nothing stored, nothing published)."""
    async with conn.transaction():
        result = await alerts.insert(conn, new, dedup_seconds)
        if not result.duplicate:
            assert result.alert is not None
            await outbox.add_event(
                conn,
                [names.alerts(new.strategy_id)],
                {
                    "type": "alert.created",
                    "alert": alert_json(result.alert, raw_limit=FEED_RAW_LIMIT),
                },
            )
    if result.duplicate:
        log.info(
            "duplicate webhook ignored",
            extra={"strategy_id": str(new.strategy_id), "source": new.source},
        )
        original = str(result.alert.id) if result.alert else None
        return json_response({"id": original, "duplicate": True}, status=200)
    request.app[keys.relay].kick()
    assert result.alert is not None
    return json_response({"id": str(result.alert.id), "duplicate": False}, status=201)


def _new_alert(
    strategy_id: UUID, source: str, body: bytes, parsed: ParsedBody, webhook_id: str | None
) -> alerts.NewAlert:
    fields = parsed.fields
    return alerts.NewAlert(
        strategy_id=strategy_id,
        source=source,
        raw_body=parsed.text,
        content_type=parsed.content_type,
        body_sha256=hashlib.sha256(body).digest(),
        webhook_id=webhook_id,
        ticker=fields.ticker,
        action=fields.action,
        quantity=fields.quantity,
        price=fields.price,
        alert_time=fields.alert_time,
        message=fields.message,
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
    if not _URL_SECRET_RE.match(secret):
        raise NotFound("webhook")
    digest = url_secret_hash(secret)
    # The body (at most 64 KiB) is read before a pooled connection is taken, so a slow
    # sender never holds one.
    body = await read_body(request, config.max_body_bytes)
    async with request.app[keys.pool].acquire() as conn:
        match = await strategies.find_by_url_secret(conn, digest)
        # The index lookup compares bytes with memcmp; compare once more in constant time.
        if not hmac.compare_digest(match.url_secret_sha256, digest):
            raise NotFound("webhook")
        parsed = _parse(request, body)
        new = _new_alert(match.strategy_id, "tradingview", body, parsed, None)
        return await _store(request, conn, new, config.dedup_window)


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
    try:
        headers = parse_headers(
            request.headers.get("webhook-id"),
            request.headers.get("webhook-timestamp"),
            request.headers.get("webhook-signature"),
        )
        if abs(time.time() - headers.timestamp) > config.timestamp_tolerance:
            raise SignatureError(401, "webhook-timestamp is outside the tolerance window")
    except SignatureError as exc:
        raise ApiError(exc.status, exc.message) from None
    body = await read_body(request, config.max_body_bytes)
    async with request.app[keys.pool].acquire() as conn:
        sealed = await strategies.signing_secrets(conn, strategy_id)
        box = request.app[secret_box_key]
        secrets = [box.open(strategy_id, item) for item in sealed]
        try:
            verify(
                headers,
                body,
                [secret_key(secret) for secret in secrets if secret is not None],
                now=time.time(),
                tolerance=config.timestamp_tolerance,
            )
        except SignatureError as exc:
            raise ApiError(exc.status, exc.message) from None
        parsed = _parse(request, body)
        new = _new_alert(strategy_id, "signed", body, parsed, headers.msg_id)
        return await _store(request, conn, new, 0)


def ensure_secret_box(app: web.Application) -> SecretBox:
    """The app's :class:`SecretBox` (created on first use, before the app starts)."""
    box = app.get(secret_box_key)
    if box is None:
        box = SecretBox(app[keys.config].auth.service_secret)
        app[secret_box_key] = box
    return box


def setup_routes(app: web.Application) -> None:
    ensure_secret_box(app)
    app.router.add_post("/webhooks/tv/{secret}", tradingview)
    app.router.add_post("/webhooks/alerts/{strategy_id}", signed)
