"""Signed service requests: the canonical message, its HMAC, verification and the replay cache.

A trusted backend that holds ``SERVICE_SECRET`` may sign a request instead of sending a
service token. It sends ``x-timestamp`` (Unix milliseconds), ``x-signature`` (lower-case hex
HMAC-SHA256 with ``SERVICE_SECRET``) and optionally ``x-signature-version``:

* version 1 (the default, kept for existing backends): ``{METHOD}|{body}|{timestamp}``;
* version 2 (``x-signature-version: 2``, for new integrations):
  ``{METHOD}|{path with query}|{body}|{timestamp}`` — the path binds the signature to its
  route, so it cannot be sent to another channel or resource.

A signature is valid while the timestamp is within the tolerance of the server clock, and only
once: :class:`ReplayCache` remembers every accepted signature for twice the tolerance (a
timestamp may lie up to one tolerance in the future and is then valid for two). Version 1 does
not cover the path, so the replay cache is all that stops its signature being re-targeted.

This module knows nothing about HTTP frameworks (no aiohttp): the handler layer reads the
headers and calls :func:`verify`, then claims :attr:`VerifiedSignature.replay_key`. See
``docs/security.md`` for the worked example.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

SIGNATURE_HEADER = "x-signature"
TIMESTAMP_HEADER = "x-timestamp"
VERSION_HEADER = "x-signature-version"
#: every header that makes a request a signed one
HEADERS = (SIGNATURE_HEADER, TIMESTAMP_HEADER, VERSION_HEADER)
VERSIONS = (1, 2)
_HEX_LENGTH = 64
_MAX_TIMESTAMP_DIGITS = 16


class SignatureError(Exception):
    """The request's signature is missing, malformed, stale or wrong; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """A signature that matched; claim :attr:`replay_key` before acting on the request."""

    version: int
    timestamp_ms: int
    #: SHA-256 of the version and the (normalised) signature: the store never holds the
    #: signature itself
    replay_key: str


def canonical_message(version: int, method: str, target: str, body: bytes, timestamp: str) -> bytes:
    """The bytes that are signed. ``target`` is the request's path with its query string,
    exactly as sent (percent-encoding unchanged); version 1 leaves it out."""
    head = method.upper().encode()
    if version == 2:
        head += b"|" + target.encode()
    return head + b"|" + body + b"|" + timestamp.encode()


def sign(secret: str, message: bytes) -> str:
    """Lower-case hex HMAC-SHA256 of ``message`` with ``secret``."""
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _version(raw: str | None) -> int:
    if raw is None or not raw.strip():
        return 1
    value = raw.strip()
    if value not in ("1", "2"):
        raise SignatureError("x-signature-version must be 1 or 2")
    return int(value)


def verify(
    secret: str,
    *,
    signature: str | None,
    timestamp: str | None,
    version: str | None,
    method: str,
    target: str,
    body: bytes,
    now_ms: int,
    tolerance_ms: int,
) -> VerifiedSignature:
    """Check one request's signature headers against its method, target and body.

    Raises :class:`SignatureError`. Does not consult the replay cache: the caller claims
    :attr:`VerifiedSignature.replay_key` only after this succeeded, so an attacker without the
    secret can never fill the cache.
    """
    chosen = _version(version)
    supplied = (signature or "").strip().lower()
    stamp = (timestamp or "").strip()
    if not supplied or not stamp:
        raise SignatureError("x-signature and x-timestamp are both required")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > _MAX_TIMESTAMP_DIGITS:
        raise SignatureError("x-timestamp must be Unix milliseconds")
    stamp_ms = int(stamp)
    if abs(stamp_ms - now_ms) > tolerance_ms:
        raise SignatureError("x-timestamp is too far from the server clock")
    expected = sign(secret, canonical_message(chosen, method, target, body, stamp))
    if len(supplied) != _HEX_LENGTH or not hmac.compare_digest(expected, supplied):
        raise SignatureError("invalid request signature")
    key = hashlib.sha256(f"{chosen}:{expected}".encode()).hexdigest()
    return VerifiedSignature(chosen, stamp_ms, key)


def replay_ttl(tolerance_seconds: float) -> float:
    """How long an accepted signature must be remembered: a timestamp up to one tolerance in
    the future stays acceptable for two tolerances."""
    return 2 * tolerance_seconds


class ReplayCacheUnavailable(Exception):
    """The replay cache cannot answer (Redis down, or the memory cache full): fail closed."""


class ReplayCache(Protocol):
    """Remembers accepted signatures; ``name`` is ``memory`` or ``redis``."""

    name: str

    async def claim(self, key: str, ttl: float) -> bool:
        """``True`` the first time ``key`` is claimed within ``ttl`` seconds, ``False`` after.

        Raises :class:`ReplayCacheUnavailable`.
        """
        ...


class MemoryReplayCache:
    """One process's replay cache (no ``REDIS_URL``): bounded, entries expire after their ttl.

    When it is full of live entries it refuses new claims (:class:`ReplayCacheUnavailable`)
    rather than forget one, which would let that signature be replayed. Only signatures that
    verified are claimed, so only a holder of ``SERVICE_SECRET`` can fill it.
    """

    name = "memory"

    def __init__(
        self, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._max_entries = max_entries
        self._clock = clock

    async def claim(self, key: str, ttl: float) -> bool:
        now = self._clock()
        self._expire(now)
        if key in self._expiry:
            return False
        if len(self._expiry) >= self._max_entries:
            raise ReplayCacheUnavailable("replay cache is full")
        expires = now + ttl
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key))
        return True

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            if self._expiry.get(key) == expires:
                del self._expiry[key]


class RedisReplayCache:
    """The replay cache shared by every instance using the same Redis and prefix:
    ``SET {prefix}:sig:{key} 1 NX PX {ttl}``."""

    name = "redis"

    def __init__(self, client: Redis | RedisCluster, prefix: str) -> None:
        self._client = client
        self._prefix = f"{prefix}:sig:"

    async def claim(self, key: str, ttl: float) -> bool:
        try:
            created = await self._client.set(
                self._prefix + key, b"1", nx=True, px=max(1, round(ttl * 1000))
            )
        except (RedisError, RedisClusterException, OSError) as exc:
            raise ReplayCacheUnavailable(str(exc)) from exc
        return bool(created)
