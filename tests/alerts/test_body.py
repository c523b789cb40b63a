"""Decoding webhook bodies and extracting alert fields (pure functions)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.alerts.body import BodyError, MalformedBody, UnsupportedBody, parse


def test_json_fields_are_extracted_case_insensitively() -> None:
    parsed = parse(
        b'{"Symbol": "ES1!", "side": "Sell", "qty": 2, "close": "4510.25", "timenow": 1700000000}',
        "application/json",
        None,
    )
    fields = parsed.fields
    assert parsed.content_type == "application/json"
    assert fields.ticker == "ES1!"
    assert fields.action == "sell"
    assert fields.quantity == Decimal(2)
    assert fields.price == Decimal("4510.25")
    assert fields.alert_time == datetime.fromtimestamp(1700000000, UTC)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # Arrow's template, substituted by TradingView.
        (
            b'{"contract": "NQ1!", "trade_type": "buy", "quantity": 1, "price": 18250.25}',
            ("NQ1!", "buy", Decimal(1), Decimal("18250.25")),
        ),
        (
            b'{"contract": "NQ1!", "trade_type": "SELL", "quantity": 2, "price": 18262.5}',
            ("NQ1!", "sell", Decimal(2), Decimal("18262.5")),
        ),
        # Keys named after TradingView's strategy placeholders, with dots or underscores.
        (
            b'{"ticker": "ES1!", "strategy.order.action": "buy", '
            b'"strategy.order.contracts": "4", "strategy.order.price": 5300.5}',
            ("ES1!", "buy", Decimal(4), Decimal("5300.5")),
        ),
        (
            b'{"symbol": "ES1!", "strategy_order_action": "sell", '
            b'"strategy_order_contracts": 1, "close": 5299}',
            ("ES1!", "sell", Decimal(1), Decimal(5299)),
        ),
        (
            b'{"ticker": "MNQ1!", "order_action": "buy", "order_contracts": 3, '
            b'"order_price": 18000}',
            ("MNQ1!", "buy", Decimal(3), Decimal(18000)),
        ),
        # The position after the order is not the order: no side, no quantity from it.
        (
            b'{"ticker": "NQ1!", "strategy.market_position": "short", '
            b'"strategy.position_size": -2, "close": 18000}',
            ("NQ1!", None, None, Decimal(18000)),
        ),
    ],
)
def test_arrow_and_tradingview_placeholder_keys(
    body: bytes, expected: tuple[str | None, str | None, Decimal | None, Decimal | None]
) -> None:
    fields = parse(body, "application/json", None).fields
    assert (fields.ticker, fields.action, fields.quantity, fields.price) == expected


def test_order_comment_is_the_message() -> None:
    parsed = parse(b'{"strategy.order.comment": "TP1 hit"}', "application/json", None)
    assert parsed.fields.message == "TP1 hit"


def test_unusable_values_are_left_out_not_rejected() -> None:
    parsed = parse(
        b'{"ticker": "' + b"X" * 100 + b'", "action": "hold", "quantity": -1, '
        b'"price": "NaN", "time": "yesterday", "message": 5, "nul": "\\u0000"}',
        "application/json",
        None,
    )
    fields = parsed.fields
    assert (fields.ticker, fields.action, fields.quantity, fields.price) == (None, None, None, None)
    assert (fields.alert_time, fields.message) == (None, None)


def test_json_that_is_not_an_object_is_kept_raw() -> None:
    parsed = parse(b"[1, 2, 3]", "application/json", "utf-8")
    assert parsed.text == "[1, 2, 3]"
    assert parsed.fields.ticker is None


def test_plain_text_pairs_and_lone_side_word() -> None:
    parsed = parse(b"ticker=AAPL qty: 10 price=189.5 BUY now", "text/plain", None)
    assert parsed.content_type == "text/plain"
    assert (parsed.fields.ticker, parsed.fields.action) == ("AAPL", "buy")
    assert parsed.fields.quantity == Decimal(10)
    assert parsed.fields.message == "ticker=AAPL qty: 10 price=189.5 BUY now"
    ambiguous = parse(b"buy the dip, sell the rip", None, None)
    assert ambiguous.fields.action is None


def test_other_charsets_are_decoded() -> None:
    parsed = parse("prix 10€ achat".encode("iso-8859-15"), "text/plain", "iso-8859-15")
    assert parsed.text == "prix 10€ achat"
    parsed = parse('{"ticker": "ÄÖ"}'.encode("utf-16"), "application/json", "utf-16")
    assert parsed.fields.ticker == "ÄÖ"


@pytest.mark.parametrize(
    ("body", "mimetype", "charset", "status"),
    [
        (b"", "application/json", None, 400),
        (b"  \n ", "text/plain", None, 400),
        (b"\xff\xfe\xfa", "text/plain", None, 400),
        (b"caf\xc3", "application/json", "utf-8", 400),
        (b"hello", "text/plain", "klingon-8", 400),
        (b"hello", "text/plain", "base64", 400),
        (b"hello\x00world", "text/plain", None, 400),
        (b'{"a": ', "application/json", None, 400),
        (b"not json", "application/json", None, 400),
        (b"hello", "application/octet-stream", None, 415),
        (b"hello", "image/png", None, 415),
    ],
)
def test_bad_bodies_are_rejected(
    body: bytes, mimetype: str, charset: str | None, status: int
) -> None:
    with pytest.raises(BodyError) as info:
        parse(body, mimetype, charset)
    assert isinstance(info.value, UnsupportedBody if status == 415 else MalformedBody)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
    mimetype=st.sampled_from([None, "application/json", "text/plain", "text/csv", "image/gif"]),
    charset=st.sampled_from([None, "utf-8", "latin-1", "utf-16", "ascii", "nope", "rot13"]),
)
def test_any_body_is_accepted_or_rejected_cleanly(
    body: bytes, mimetype: str | None, charset: str | None
) -> None:
    try:
        parsed = parse(body, mimetype, charset)
    except (MalformedBody, UnsupportedBody):
        return  # the two clean refusals (400, 415); any other exception fails the test
    assert "\x00" not in parsed.text
    parsed.text.encode("utf-8")  # storable
    fields = parsed.fields
    for value in (fields.ticker, fields.message):
        assert value is None or ("\x00" not in value and value.encode("utf-8"))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["ticker", "action", "qty", "price", "time", "message", "x"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=80),
    )
)
def test_extracted_fields_always_fit_their_columns(data: dict[str, object]) -> None:
    parsed = parse(json.dumps(data).encode(), "application/json", None)
    fields = parsed.fields
    assert fields.ticker is None or 1 <= len(fields.ticker) <= 64
    assert fields.action in (None, "buy", "sell")
    for number in (fields.quantity, fields.price):
        assert number is None or (number.is_finite() and 0 <= number < Decimal("1e15"))
    assert fields.alert_time is None or 1970 <= fields.alert_time.year <= 9998
