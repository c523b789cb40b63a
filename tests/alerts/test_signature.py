"""Standard Webhooks verification, checked against the specification's published test vector."""

from __future__ import annotations

import base64
import uuid

import pytest

from services.alerts.signatures import (
    InvalidSignature,
    MalformedSignature,
    SecretBox,
    SignatureError,
    new_signing_secret,
    parse_headers,
    secret_key,
    sign,
    url_secret,
    url_secret_hash,
    verify,
)

# The test vector published with the Standard Webhooks specification (and its libraries).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _verify(signature: str, *, now: float = VECTOR_TIMESTAMP, body: bytes = VECTOR_BODY) -> None:
    headers = parse_headers(VECTOR_ID, str(VECTOR_TIMESTAMP), signature)
    verify(headers, body, [secret_key(VECTOR_SECRET)], now=now, tolerance=300)


def test_spec_test_vector_signs_and_verifies() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    _verify(VECTOR_SIGNATURE)


def test_one_valid_signature_among_several_is_enough() -> None:
    other = "v1," + base64.b64encode(b"x" * 32).decode()
    _verify(f"v1a,whatever {other} {VECTOR_SIGNATURE}")


def test_tampered_body_or_wrong_key_is_401() -> None:
    with pytest.raises(SignatureError) as info:
        _verify(VECTOR_SIGNATURE, body=b'{"test": 2432232315}')
    assert isinstance(info.value, InvalidSignature)
    headers = parse_headers(VECTOR_ID, str(VECTOR_TIMESTAMP), VECTOR_SIGNATURE)
    with pytest.raises(SignatureError):
        verify(
            headers,
            VECTOR_BODY,
            [secret_key(new_signing_secret())],
            now=VECTOR_TIMESTAMP,
            tolerance=300,
        )


@pytest.mark.parametrize("skew", [-301, 301, -10_000, 10_000])
def test_timestamp_outside_tolerance_either_way_is_401(skew: int) -> None:
    with pytest.raises(SignatureError) as info:
        _verify(VECTOR_SIGNATURE, now=VECTOR_TIMESTAMP + skew)
    assert isinstance(info.value, InvalidSignature)


@pytest.mark.parametrize("skew", [-300, 300])
def test_timestamp_at_the_edge_is_accepted(skew: int) -> None:
    _verify(VECTOR_SIGNATURE, now=VECTOR_TIMESTAMP - skew)


@pytest.mark.parametrize(
    ("msg_id", "timestamp", "signature"),
    [
        (None, "1614265330", VECTOR_SIGNATURE),
        ("msg_1", None, VECTOR_SIGNATURE),
        ("msg_1", "1614265330", None),
        ("", "1614265330", VECTOR_SIGNATURE),
        ("msg 1", "1614265330", VECTOR_SIGNATURE),
        ("m" * 257, "1614265330", VECTOR_SIGNATURE),
        ("msg_1", "-5", VECTOR_SIGNATURE),
        ("msg_1", "1.5", VECTOR_SIGNATURE),
        ("msg_1", "9" * 40, VECTOR_SIGNATURE),
        ("msg_1", "abc", VECTOR_SIGNATURE),
        ("msg_1", "1614265330", "v1,"),
        ("msg_1", "1614265330", "v1,not base64!"),
        ("msg_1", "1614265330", "v2,abcd"),
        ("msg_1", "1614265330", "garbage"),
        ("msg_1", "1614265330", "v1," + "A" * 5000),
    ],
)
def test_malformed_headers_are_400(
    msg_id: str | None, timestamp: str | None, signature: str | None
) -> None:
    with pytest.raises(SignatureError) as info:
        parse_headers(msg_id, timestamp, signature)
    assert isinstance(info.value, MalformedSignature)


def test_signing_secrets_have_the_standard_format() -> None:
    secret = new_signing_secret()
    assert secret.startswith("whsec_")
    assert len(secret_key(secret)) == 32


def test_secret_box_binds_the_secret_to_its_strategy() -> None:
    box = SecretBox("a-service-secret-that-is-long-enough-0123456789")
    strategy = uuid.uuid4()
    secret = new_signing_secret()
    sealed = box.seal(strategy, secret)
    assert secret.encode() not in sealed
    assert box.open(strategy, sealed) == secret
    assert box.open(uuid.uuid4(), sealed) is None
    other = SecretBox("another-service-secret-that-is-long-enough-0123")
    assert other.open(strategy, sealed) is None


def test_url_secrets_are_random_and_only_their_hash_is_kept() -> None:
    first, second = url_secret(), url_secret()
    assert first != second
    assert len(first) >= 43
    assert len(url_secret_hash(first)) == 32
