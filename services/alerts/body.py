"""Decoding webhook bodies and extracting the known alert fields from them.

TradingView posts the alert message as ``application/json`` when it parses as JSON and as
``text/plain`` otherwise, so both are accepted. Known fields (ticker, action, quantity, price,
time, free text) are pulled out leniently: a value that does not fit its column is left out,
never an error, because the raw body is always kept. The body itself must be valid text:
unknown charsets, invalid bytes, NUL characters (PostgreSQL text cannot hold them) and JSON
that does not parse under a JSON content type are rejected with 400.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from services.errors import DomainError, Invalid, Unsupported

MAX_TICKER = 64
MAX_MESSAGE = 4096
MAX_NUMBER = Decimal("1e15")

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain"

# Key names senders use, first present wins. Besides the plain names: the Arrow template's
# ``contract`` / ``trade_type``, and keys named after TradingView's strategy placeholders
# (``{{strategy.order.action}}``, ``{{strategy.order.contracts}}``, ``{{strategy.order.price}}``,
# ``{{strategy.order.comment}}``), with dots or underscores. ``{{strategy.position_size}}`` and
# ``{{strategy.market_position}}`` describe the position after the order, not the order, and
# ``{{exchange}}`` / ``{{interval}}`` have no column: they stay in the raw body only.
_TICKER_KEYS = ("ticker", "symbol", "contract", "instrument")
_ACTION_KEYS = (
    "action",
    "side",
    "order_action",
    "trade_type",
    "signal",
    "strategy.order.action",
    "strategy_order_action",
)
_QUANTITY_KEYS = (
    "quantity",
    "qty",
    "contracts",
    "size",
    "amount",
    "order_contracts",
    "strategy.order.contracts",
    "strategy_order_contracts",
)
_PRICE_KEYS = (
    "price",
    "close",
    "order_price",
    "limit_price",
    "strategy.order.price",
    "strategy_order_price",
)
_TIME_KEYS = ("time", "timestamp", "timenow", "alert_time")
_MESSAGE_KEYS = (
    "message",
    "text",
    "comment",
    "note",
    "msg",
    "order_comment",
    "strategy.order.comment",
    "strategy_order_comment",
)

_PAIR_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*[=:]\s*(\"[^\"]*\"|[^\s,;]+)")
_SIDE_RE = re.compile(r"\b(buy|sell)\b", re.IGNORECASE)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class BodyError(DomainError):
    """The body cannot be accepted: :class:`MalformedBody` or :class:`UnsupportedBody`."""


class MalformedBody(BodyError, Invalid):
    """The body is of a supported type but cannot be read (bad JSON, bad encoding)."""


class UnsupportedBody(BodyError, Unsupported):
    """The body's media type is not one a webhook may use."""


@dataclass(frozen=True, slots=True)
class AlertFields:
    """Fields extracted from a body; None when absent or unusable."""

    ticker: str | None = None
    action: str | None = None
    quantity: Decimal | None = None
    price: Decimal | None = None
    alert_time: datetime | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedBody:
    text: str
    content_type: str  # JSON_TYPE or TEXT_TYPE
    fields: AlertFields


def _is_json_type(mimetype: str) -> bool:
    return mimetype == JSON_TYPE or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def decode(body: bytes, charset: str | None) -> str:
    """``body`` as text; raises :class:`BodyError` (400)."""
    if not body.strip():
        raise MalformedBody("request body is empty")
    try:
        text = body.decode(charset or "utf-8")
    except LookupError:
        raise MalformedBody("unknown or unsupported charset") from None
    except UnicodeDecodeError:
        raise MalformedBody(f"request body is not valid {charset or 'utf-8'} text") from None
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        raise MalformedBody("request body must not contain NUL characters")
    if not text.strip():
        raise MalformedBody("request body is empty")
    return text


def parse(body: bytes, mimetype: str | None, charset: str | None) -> ParsedBody:
    """Decode and classify a webhook body; ``mimetype`` None means no Content-Type was sent
    (treated as text). Raises :class:`BodyError`."""
    kind = (mimetype or TEXT_TYPE).lower()
    if _is_json_type(kind):
        text = decode(body, charset)
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"malformed JSON body: {exc.msg}") from None
        fields = from_mapping(data) if isinstance(data, dict) else AlertFields()
        return ParsedBody(text, JSON_TYPE, fields)
    if kind.startswith("text/"):
        text = decode(body, charset)
        return ParsedBody(text, TEXT_TYPE, from_text(text))
    raise UnsupportedBody("content type must be application/json or text/plain")


def _first(data: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in data and data[name] is not None:
            return data[name]
    return None


def clean_text(value: Any, limit: int) -> str | None:
    """A storable string: no NUL, encodable as UTF-8, trimmed, at most ``limit`` characters."""
    if not isinstance(value, str):
        return None
    text: str = value.strip()
    if not text or "\x00" in text:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text[:limit]


def _ticker(value: Any) -> str | None:
    text = clean_text(value, MAX_TICKER + 1)
    if text is None or len(text) > MAX_TICKER or _CONTROL_RE.search(text):
        return None
    return text


def _action(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    side = value.strip().lower()
    return side if side in ("buy", "sell") else None


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        number = (
            Decimal(str(value).strip().replace(",", ""))
            if isinstance(value, str)
            else (Decimal(str(value)))
        )
    except InvalidOperation:
        return None
    if not number.is_finite() or number < 0 or number >= MAX_NUMBER:
        return None
    return number


def _time(value: Any) -> datetime | None:
    parsed: datetime | None = None
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
            seconds = float(value)
            if seconds > 1e11:  # milliseconds, as TradingView's {{timenow}} sometimes is
                seconds /= 1000
            parsed = datetime.fromtimestamp(seconds, UTC)
        elif isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip())
            parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    # Far-off years overflow when converted to UTC for storage; before 1970 is a mistake.
    if parsed is None or not 1970 <= parsed.year <= 9998:
        return None
    return parsed


def from_mapping(data: dict[str, Any]) -> AlertFields:
    """Known fields of a JSON object (keys matched case-insensitively)."""
    lowered = {str(key).lower(): value for key, value in data.items()}
    return AlertFields(
        ticker=_ticker(_first(lowered, _TICKER_KEYS)),
        action=_action(_first(lowered, _ACTION_KEYS)),
        quantity=_number(_first(lowered, _QUANTITY_KEYS)),
        price=_number(_first(lowered, _PRICE_KEYS)),
        alert_time=_time(_first(lowered, _TIME_KEYS)),
        message=clean_text(_first(lowered, _MESSAGE_KEYS), MAX_MESSAGE),
    )


def from_text(text: str) -> AlertFields:
    """Known fields of a plain-text message: ``key=value`` / ``key: value`` pairs, else a lone
    ``buy`` or ``sell`` word; the text itself is the message."""
    pairs = {key.lower(): value.strip('"') for key, value in _PAIR_RE.findall(text)}
    fields = from_mapping(pairs)
    action = fields.action
    if action is None:
        sides = {side.lower() for side in _SIDE_RE.findall(text)}
        action = sides.pop() if len(sides) == 1 else None
    return AlertFields(
        ticker=fields.ticker,
        action=action,
        quantity=fields.quantity,
        price=fields.price,
        alert_time=fields.alert_time,
        message=fields.message or clean_text(text, MAX_MESSAGE),
    )
