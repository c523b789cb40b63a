"""Recently opened signing keys, so a signed webhook costs no key lookup and no AES-GCM, and
recently matched URL secrets, so a TradingView webhook costs no secret lookup.

A strategy's keys are kept for :data:`KEY_TTL` seconds after they were read, with each key's
expiry, and a key is used only while its generation is valid. What may be stale, and for how
long:

* A rotation on this instance :meth:`~SigningKeyCache.forget`\\ s the strategy: the next webhook
  reads the keys again, so a revoked key stops working at once.
* A new key made on another instance is not in the cache: a signature that no cached key
  verifies reads the keys again before the 401, so the new key works at once everywhere.
* A key revoked early on another instance (rotation with a shorter grace) keeps verifying
  here for at most :data:`KEY_TTL` seconds.

URL secrets (:class:`UrlSecretCache`, keyed by the secret's SHA-256) follow the same rules: a
rotation on this instance forgets the strategy's, a new one is looked up on first use, an
early revocation elsewhere takes effect here within :data:`KEY_TTL` seconds, and a
generation's expiry is honoured while cached.

Unknown strategies and secrets are never cached, so every webhook for one still reads the
database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from cachetools import TTLCache

#: Seconds a strategy's keys are used without reading them again.
KEY_TTL = 5.0
#: Strategies whose keys are kept at most (least recently read ones are dropped first).
MAX_STRATEGIES = 10_000


@dataclass(frozen=True, slots=True)
class ValidKey:
    """An HMAC key and the end of its generation's validity (None: no end yet)."""

    key: bytes
    expires_at: datetime | None


class SigningKeyCache:
    """Decrypted signing keys per strategy, for ``ttl`` seconds, at most ``maxsize`` strategies."""

    def __init__(
        self,
        ttl: float = KEY_TTL,
        maxsize: int = MAX_STRATEGIES,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys: TTLCache[UUID, tuple[ValidKey, ...]] = TTLCache(maxsize, ttl, timer=timer)

    def get(self, strategy_id: UUID, now: datetime | None = None) -> list[bytes] | None:
        """The strategy's keys that are valid ``now``; None when not cached."""
        cached = self._keys.get(strategy_id)
        if cached is None:
            return None
        now = now or datetime.now(UTC)
        return [k.key for k in cached if k.expires_at is None or k.expires_at > now]

    def put(self, strategy_id: UUID, keys: Sequence[ValidKey]) -> None:
        """Remember the keys just read for ``strategy_id``."""
        self._keys[strategy_id] = tuple(keys)

    def forget(self, strategy_id: UUID) -> None:
        """Drop the strategy's keys (its secrets were rotated, or it was deleted)."""
        self._keys.pop(strategy_id, None)


@dataclass(frozen=True, slots=True)
class UrlMatch:
    """The strategy a URL secret belongs to and the end of its generation's validity."""

    strategy_id: UUID
    expires_at: datetime | None


class UrlSecretCache:
    """Strategy ids of recently used URL secrets (by SHA-256), for ``ttl`` seconds."""

    def __init__(
        self,
        ttl: float = KEY_TTL,
        maxsize: int = MAX_STRATEGIES,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._matches: TTLCache[bytes, UrlMatch] = TTLCache(maxsize, ttl, timer=timer)

    def get(self, digest: bytes, now: datetime | None = None) -> UUID | None:
        """The strategy of the secret with SHA-256 ``digest`` if cached and still valid."""
        match = self._matches.get(digest)
        if match is None:
            return None
        if match.expires_at is not None and match.expires_at <= (now or datetime.now(UTC)):
            return None
        return match.strategy_id

    def put(self, digest: bytes, match: UrlMatch) -> None:
        """Remember a secret just found in the database."""
        self._matches[digest] = match

    def forget(self, strategy_id: UUID) -> None:
        """Drop every cached secret of ``strategy_id`` (rotated or deleted)."""
        for digest in [d for d, m in self._matches.items() if m.strategy_id == strategy_id]:
            self._matches.pop(digest, None)
