"""Standard Webhooks signatures (https://www.standardwebhooks.com) and signing-key storage.

A signed message carries three headers:

* ``webhook-id``: the message id, the idempotency key;
* ``webhook-timestamp``: integer Unix seconds;
* ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` entries, the MAC being
  over ``"{id}.{timestamp}.{raw body}"`` keyed with the base64-decoded part of the
  ``whsec_...`` secret. Several entries let a sender sign with old and new keys at once.

Verification is over the raw bytes, in constant time, against every valid key. The
``standardwebhooks`` package does the same but pulls in an HTTP client and a date library for
forty lines of logic; this module is checked against the specification's test vector instead.

Signing keys must stay usable for HMAC, so they cannot be stored as hashes: :class:`SecretBox`
encrypts them with AES-256-GCM under a key derived (HKDF-SHA256) from ``SERVICE_SECRET``, bound
to the strategy id as associated data. Rotating ``SERVICE_SECRET`` therefore invalidates
every stored signing key (rotate the strategies afterwards).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.alerts.key_cache import SigningKeyCache, UrlSecretCache
from services.errors import DomainError, Invalid, Unauthenticated

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
SIGNING_KEY_BYTES = 32
MAX_ID_LENGTH = 256
MAX_SIGNATURE_HEADER = 4096

_ID_RE = re.compile(r"^[\x21-\x7e]{1,256}$")  # visible ASCII: it is echoed into the MAC input
_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")


class SignatureError(DomainError):
    """Verification failed: :class:`MalformedSignature` or :class:`InvalidSignature`."""


class MalformedSignature(SignatureError, Invalid):
    """The signature headers are missing or malformed."""


class InvalidSignature(SignatureError, Unauthenticated):
    """The request is not authentic (wrong signature, or a timestamp outside the window)."""


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    """The parsed, well-formed Standard Webhooks headers."""

    msg_id: str
    timestamp: int
    signatures: list[bytes]


def new_signing_secret() -> str:
    """A fresh ``whsec_<base64>`` secret (32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SIGNING_KEY_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret (the prefix is optional, as in the spec)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(encoded, validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of a message (for senders, tests and benchmarks)."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def parse_headers(
    msg_id: str | None, timestamp: str | None, signature: str | None
) -> SignedHeaders:
    """Validate the header shapes; raises :class:`SignatureError` (400) on anything malformed.

    Entries of other versions (``v1a,...``) are ignored as the spec requires; a header with no
    usable ``v1`` entry is a 400.
    """
    if not msg_id or not timestamp or not signature:
        raise MalformedSignature(
            "webhook-id, webhook-timestamp and webhook-signature headers are required"
        )
    if not _ID_RE.match(msg_id):
        raise MalformedSignature("webhook-id must be 1-256 visible ASCII characters")
    if not _TIMESTAMP_RE.match(timestamp):
        raise MalformedSignature("webhook-timestamp must be integer Unix seconds")
    if len(signature) > MAX_SIGNATURE_HEADER:
        raise MalformedSignature("webhook-signature header is too long")
    found: list[bytes] = []
    for entry in signature.split():
        version, sep, value = entry.partition(",")
        if not sep or version != "v1":
            continue
        try:
            mac = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            mac = b""
        if len(mac) != hashlib.sha256().digest_size:
            raise MalformedSignature("webhook-signature has a malformed v1 entry")
        found.append(mac)
    if not found:
        raise MalformedSignature("webhook-signature has no v1 signature")
    return SignedHeaders(msg_id, int(timestamp), found)


def verify(
    headers: SignedHeaders, body: bytes, keys: list[bytes], *, now: float, tolerance: int
) -> None:
    """Check the timestamp window and that some signature matches some key.

    Raises :class:`SignatureError` (401). Every key/signature pair is compared in constant
    time and all are tried, so timing does not tell which key or entry was close.
    """
    if abs(now - headers.timestamp) > tolerance:
        raise InvalidSignature("webhook-timestamp is outside the tolerance window")
    signed = f"{headers.msg_id}.{headers.timestamp}.".encode() + body
    matched = False
    for key in keys:
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        for candidate in headers.signatures:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise InvalidSignature("no valid webhook signature")


def url_secret() -> str:
    """A fresh URL secret for the TradingView endpoint (256 bits)."""
    return secrets.token_urlsafe(32)


def url_secret_hash(secret: str) -> bytes:
    """SHA-256 of a URL secret: what is stored and looked up."""
    return hashlib.sha256(secret.encode()).digest()


class SecretBox:
    """AES-256-GCM encryption of signing secrets, bound to their strategy id; :attr:`keys`
    keeps recently opened keys and :attr:`urls` recently matched URL secrets (see
    :mod:`services.alerts.key_cache`)."""

    def __init__(self, service_secret: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"arena-realtime",
            info=b"alert signing secrets v1",
        ).derive(service_secret.encode())
        self._aead = AESGCM(key)
        #: keys opened for recent webhooks, per strategy (forget a strategy on rotation)
        self.keys = SigningKeyCache()
        #: strategies of URL secrets used by recent webhooks (forget a strategy on rotation)
        self.urls = UrlSecretCache()

    def seal(self, strategy_id: UUID, secret: str) -> bytes:
        """``nonce || ciphertext`` of ``secret``."""
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, secret.encode(), strategy_id.bytes)

    def open(self, strategy_id: UUID, sealed: bytes) -> str | None:
        """The secret, or None when it cannot be decrypted (wrong key or strategy)."""
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], strategy_id.bytes).decode()
        except (InvalidTag, ValueError):
            return None
