"""Where a webhook becomes an alert on a socket.

A verified body (TradingView secret URL, Standard Webhooks signature, or a manual alert from
the strategy's owner) is parsed (:mod:`services.alerts.body`), stored de-duplicated, and
committed together with an ``alert.created`` outbox event on ``alerts:{strategy_id}``; the
outbox relay publishes it after the commit, so an acknowledged alert is never missing from the
feed. Every source goes through :func:`store` or, for webhooks, the group commit
(:mod:`services.alerts.group_commit`), which hands the committed events straight to the relay
(:meth:`~services.outbox.relay.OutboxRelay.hand_off`).

TradingView retries 5xx without a message id, so identical TradingView bodies for the same feed
within the de-duplication window are stored once; signed messages are idempotent by
``webhook-id``. A duplicate stores and publishes nothing and answers with the original's id.

The URL secret is only hashed and looked up; it never reaches a log line. Unknown, malformed
and revoked secrets are all :class:`storage.errors.NotFound`.

:class:`~services.alerts.body.BodyError` (malformed: ``Invalid``; wrong media type:
``Unsupported``) and :class:`~services.alerts.signatures.SignatureError` (malformed headers:
``Invalid``; not authentic: ``Unauthenticated``) are domain errors: the caller maps them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import asyncpg

from services.alerts.body import ParsedBody, parse
from services.alerts.feed import created_event
from services.alerts.key_cache import UrlMatch as CachedUrl
from services.alerts.key_cache import UrlSecretCache, ValidKey
from services.alerts.signatures import (
    InvalidSignature,
    SecretBox,
    SignedHeaders,
    parse_headers,
    secret_key,
    url_secret_hash,
    verify,
)
from services.channels import names
from services.outbox.relay import OutboxRelay
from storage import alerts, strategies
from storage.errors import NotFound

if TYPE_CHECKING:
    from services.alerts.group_commit import GroupCommit

log = logging.getLogger(__name__)

_URL_SECRET_RE = re.compile(r"^[A-Za-z0-9_\-]{20,128}$")


@dataclass(frozen=True, slots=True)
class Ingested:
    """The stored alert (the original one for a duplicate; None if that was deleted)."""

    alert: alerts.Alert | None
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Body:
    """A request body as received: raw bytes and the declared media type (None: none sent)."""

    raw: bytes
    mimetype: str | None
    charset: str | None


def well_formed_url_secret(secret: str) -> bool:
    """Whether ``secret`` can be a URL secret at all (checked before any lookup)."""
    return bool(_URL_SECRET_RE.match(secret))


async def strategy_of_url_secret(
    conn: asyncpg.Connection, secret: str, cache: UrlSecretCache | None = None
) -> UUID:
    """The strategy a valid URL secret belongs to; :class:`NotFound` for malformed, unknown,
    expired and revoked secrets alike. With ``cache``, a recent match is used without a
    lookup (see :mod:`services.alerts.key_cache`) and a new one is remembered."""
    if not well_formed_url_secret(secret):
        raise NotFound("webhook")
    digest = url_secret_hash(secret)
    if cache is not None:
        # A hit compares the digest in full (not in constant time: like the index lookup,
        # timing could tell at most a prefix of a SHA-256, not of the secret).
        cached = cache.get(digest)
        if cached is not None:
            return cached
    match = await strategies.find_by_url_secret(conn, digest)
    # The index lookup compares bytes with memcmp; compare once more in constant time.
    if not hmac.compare_digest(match.url_secret_sha256, digest):
        raise NotFound("webhook")
    if cache is not None:
        cache.put(digest, CachedUrl(match.strategy_id, match.expires_at))
    return match.strategy_id


def new_alert(
    strategy_id: UUID, source: str, body: bytes, parsed: ParsedBody, webhook_id: str | None
) -> alerts.NewAlert:
    """The row to insert for a parsed body."""
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


#: Where the database's ``received_at`` goes in an ``alert.created`` payload.
_RECEIVED_AT_PATH = ("alert", "received_at")
#: A stand-in ``received_at`` for building the payload before the row exists (replaced).
_NOT_YET = datetime(1970, 1, 1, tzinfo=UTC)


def _event_template(alert_id: UUID, new: alerts.NewAlert) -> dict[str, Any]:
    """The ``alert.created`` event of the row ``new`` will become, built by the one feed
    representation (:func:`created_event`); only ``received_at`` is filled in by the insert."""
    row = alerts.Alert(
        id=alert_id,
        strategy_id=new.strategy_id,
        source=new.source,
        webhook_id=new.webhook_id,
        ticker=new.ticker,
        action=new.action,
        quantity=new.quantity,
        price=new.price,
        alert_time=new.alert_time,
        message=new.message,
        raw_body=new.raw_body,
        content_type=new.content_type,
        received_at=_NOT_YET,
    )
    return created_event(row)


async def insert_with_created_event(
    conn: asyncpg.Connection, new: alerts.NewAlert, dedup_seconds: int = 0
) -> alerts.InsertResult:
    """Insert ``new`` (unless it repeats an earlier alert) and, for a new alert, its
    ``alert.created`` outbox event on the strategy's channel, in one statement. Body
    de-duplication (``dedup_seconds > 0``, no webhook id) needs the caller's transaction to
    hold the advisory lock first (see :func:`store`)."""
    alert_id = uuid4()
    return await alerts.insert_with_event(
        conn,
        new,
        alert_id,
        [names.alerts(new.strategy_id)],
        _event_template(alert_id, new),
        _RECEIVED_AT_PATH,
        dedup_seconds,
    )


async def insert_many_with_created_events(
    conn: asyncpg.Connection,
    news: list[alerts.NewAlert],
    dedup_seconds: int = 0,
    *,
    quiet: bool = False,
) -> alerts.InsertedMany:
    """:func:`insert_with_created_event` for several alerts, in one statement (see
    :func:`storage.alerts.insert_many_with_events`: all or nothing; a webhook id, or with
    ``dedup_seconds > 0`` a body, repeated in ``news`` is stored once, for its first alert).
    Body de-duplication needs the caller's transaction to hold the locks of
    :func:`storage.alerts.lock_dedup_many_statement` first. ``quiet``: no ``NOTIFY`` (the
    caller hands the events to the relay itself)."""
    items = []
    for new in news:
        alert_id = uuid4()
        items.append(
            alerts.NewAlertWithEvent(
                new, alert_id, names.alerts(new.strategy_id), _event_template(alert_id, new)
            )
        )
    return await alerts.insert_many_with_events(
        conn, items, _RECEIVED_AT_PATH, dedup_seconds, quiet=quiet
    )


async def store(
    conn: asyncpg.Connection, relay: OutboxRelay, new: alerts.NewAlert, dedup_seconds: int
) -> Ingested:
    """Commit the alert and its ``alert.created`` outbox event together, then wake the relay;
    a duplicate stores and publishes nothing.

    One statement does the insert-or-find and the outbox write (one round trip, one commit).
    Body de-duplication (no webhook id, ``dedup_seconds > 0``) also needs the advisory lock
    taken in an earlier statement of the same transaction, sent with ``BEGIN`` in one round
    trip: ``BEGIN; lock`` / insert / ``COMMIT``.
    """
    return _ingested(new, await store_alone(conn, new, dedup_seconds), relay)


async def store_alone(
    conn: asyncpg.Connection, new: alerts.NewAlert, dedup_seconds: int
) -> alerts.InsertResult:
    """What :func:`store` commits, without waking the relay."""
    if new.webhook_id is None and dedup_seconds > 0:
        await conn.execute(
            "BEGIN; " + alerts.lock_dedup_statement(new.strategy_id, new.body_sha256)
        )
        try:
            result = await insert_with_created_event(conn, new, dedup_seconds)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")
        return result
    return await insert_with_created_event(conn, new)


def _ingested(
    new: alerts.NewAlert, result: alerts.InsertResult, relay: OutboxRelay | None
) -> Ingested:
    """Log a duplicate, or wake the relay for a new alert (None: the caller did: group
    commit hands its events to the relay)."""
    if result.duplicate:
        log.info(
            "duplicate webhook ignored",
            extra={"strategy_id": str(new.strategy_id), "source": new.source},
        )
        return Ingested(result.alert, True)
    if relay is not None:
        relay.kick()
    return Ingested(result.alert, False)


async def tradingview(
    pool: asyncpg.Pool,
    relay: OutboxRelay,
    secret: str,
    body: Body,
    *,
    dedup_seconds: int,
    cache: UrlSecretCache | None = None,
    group: GroupCommit | None = None,
) -> Ingested:
    """A TradingView alert for the feed whose URL secret is ``secret`` (looked up through
    ``cache`` when given); committed through ``group`` (together with concurrent ones) when
    given."""
    if not well_formed_url_secret(secret):
        raise NotFound("webhook")
    if group is not None:
        cached = cache.get(url_secret_hash(secret)) if cache is not None else None
        if cached is not None:
            strategy_id = cached
        else:
            async with pool.acquire() as conn:
                strategy_id = await strategy_of_url_secret(conn, secret, cache)
        parsed = parse(body.raw, body.mimetype, body.charset)
        new = new_alert(strategy_id, "tradingview", body.raw, parsed, None)
        return _ingested(new, await group.insert(new, dedup_seconds), None)
    async with pool.acquire() as conn:
        strategy_id = await strategy_of_url_secret(conn, secret, cache)
        parsed = parse(body.raw, body.mimetype, body.charset)
        new = new_alert(strategy_id, "tradingview", body.raw, parsed, None)
        return await store(conn, relay, new, dedup_seconds)


def signed_headers(
    msg_id: str | None, timestamp: str | None, signature: str | None, *, tolerance: int
) -> SignedHeaders:
    """Well-formed Standard Webhooks headers inside the timestamp window (checked before the
    body is read); raises :class:`~services.alerts.signatures.SignatureError`."""
    headers = parse_headers(msg_id, timestamp, signature)
    if abs(time.time() - headers.timestamp) > tolerance:
        raise InvalidSignature("webhook-timestamp is outside the tolerance window")
    return headers


async def signed(
    pool: asyncpg.Pool,
    relay: OutboxRelay,
    box: SecretBox,
    strategy_id: UUID,
    headers: SignedHeaders,
    body: Body,
    *,
    tolerance: int,
    group: GroupCommit | None = None,
) -> Ingested:
    """A Standard Webhooks signed alert for ``strategy_id``, verified against every valid
    signing key of the strategy (idempotent by ``webhook-id``); committed through ``group``
    (together with concurrent ones) when given.

    The keys come from ``box.keys`` when a cached one verifies; otherwise (not cached, or a
    key made since on another instance) they are read and decrypted again before deciding.
    """
    cached = box.keys.get(strategy_id)
    if cached is None or not _verifies(headers, body.raw, cached, tolerance):
        async with pool.acquire() as conn:
            keys = await _read_keys(conn, box, strategy_id)
        verify(headers, body.raw, keys, now=time.time(), tolerance=tolerance)
    parsed = parse(body.raw, body.mimetype, body.charset)
    new = new_alert(strategy_id, "signed", body.raw, parsed, headers.msg_id)
    if group is None:
        async with pool.acquire() as conn:
            return await store(conn, relay, new, 0)
    return _ingested(new, await group.insert(new), None)


def _verifies(headers: SignedHeaders, raw: bytes, keys: list[bytes], tolerance: int) -> bool:
    try:
        verify(headers, raw, keys, now=time.time(), tolerance=tolerance)
    except InvalidSignature:
        return False
    return True


async def _read_keys(conn: asyncpg.Connection, box: SecretBox, strategy_id: UUID) -> list[bytes]:
    """The strategy's valid keys from the database (remembered in ``box.keys``); raises
    :class:`NotFound` for an unknown strategy."""
    valid: list[ValidKey] = []
    for item in await strategies.signing_secrets(conn, strategy_id):
        secret = box.open(strategy_id, item.sealed)
        if secret is not None:
            valid.append(ValidKey(secret_key(secret), item.expires_at))
    box.keys.put(strategy_id, valid)
    return [item.key for item in valid]
