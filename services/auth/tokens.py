"""Issuing and checking JWTs (pyjwt).

Rules every token obeys:

* the algorithm is pinned by configuration (``JWT_ALGORITHM``); ``alg: none`` and every other
  algorithm are rejected;
* ``exp``, ``iat``, ``sub``, ``aud``, ``iss``, ``jti`` and ``typ`` are required; ``typ`` is
  ``access``, ``refresh`` or ``service`` and a token is only accepted where its type is expected;
* the header's ``kid`` picks the verification key, so several keys can be valid during a rotation;
* a small leeway (``JWT_LEEWAY``) absorbs clock skew.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cachetools import TLRUCache
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from services.auth.principal import SERVICE_ROLE, Principal
from services.config import AuthConfig

ACCESS = "access"
REFRESH = "refresh"
SERVICE = "service"

REQUIRED_CLAIMS = ["exp", "iat", "sub", "aud", "iss", "jti", "typ"]
ALGORITHMS = ("HS256", "RS256", "EdDSA")


class TokenError(Exception):
    """The token is not acceptable; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenExpiredError(TokenError):
    """A valid token past its expiry: the client should get a new one and retry."""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: int


SigningKey = str | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
VerifyingKey = str | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

MIN_HMAC_BYTES = 32
MIN_RSA_BITS = 2048


class KeyConfigError(ValueError):
    """A configured key is missing, unreadable, of the wrong type or too short."""


def _check_public(kid: str, key: object, algorithm: str) -> VerifyingKey:
    if algorithm == "RS256" and isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyConfigError(f"RSA key {kid!r} has {key.key_size} bits; at least 2048 needed")
        return key
    if algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise KeyConfigError(f"key {kid!r} is not a {algorithm} key")


def load_asymmetric_keys(
    config: AuthConfig, signing_kid: str
) -> tuple[SigningKey, dict[str, VerifyingKey]]:
    """The private key of ``JWT_PRIVATE_KEY_FILE`` and the verification keys: its own public
    key under ``signing_kid`` plus every ``<kid>.pem`` in ``JWT_PUBLIC_KEYS_DIR``."""
    if not config.jwt_private_key_file:
        raise KeyConfigError(f"JWT_PRIVATE_KEY_FILE is required for {config.jwt_algorithm}")
    try:
        pem = Path(config.jwt_private_key_file).read_bytes()
        private = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyConfigError(f"cannot read JWT_PRIVATE_KEY_FILE: {exc}") from None
    if not isinstance(private, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise KeyConfigError(f"JWT_PRIVATE_KEY_FILE is not a {config.jwt_algorithm} key")
    public = {signing_kid: _check_public(signing_kid, private.public_key(), config.jwt_algorithm)}
    if config.jwt_public_keys_dir:
        folder = Path(config.jwt_public_keys_dir)
        if not folder.is_dir():
            raise KeyConfigError("JWT_PUBLIC_KEYS_DIR is not a directory")
        for path in sorted(folder.glob("*.pem")):
            try:
                key = serialization.load_pem_public_key(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise KeyConfigError(f"cannot read public key {path.name}: {exc}") from None
            public.setdefault(path.stem, _check_public(path.stem, key, config.jwt_algorithm))
    return private, public


#: verified access and service tokens kept, so that a publisher or API client sending the same
#: token again skips the signature check (PyJWT's decode is about half of a publish request)
PRINCIPAL_CACHE_SIZE = 4096
#: longest a verified token is reused without verifying it again (never past its ``exp``)
PRINCIPAL_CACHE_SECONDS = 60.0


def _cached_until(_token: str, principal: Principal, now: float) -> float:
    return min(principal.expires_at, now + PRINCIPAL_CACHE_SECONDS)


class TokenService:
    """Signs and verifies the service's tokens with the configured keys.

    HS256: ``jwt_keys`` maps kid to secret; the first signs, all verify. RS256/EdDSA: the
    private key file signs (kid = first ``jwt_keys`` kid, i.e. ``JWT_KID``) and the public keys
    verify. Raises :class:`KeyConfigError` when a key is unusable.
    """

    def __init__(self, config: AuthConfig) -> None:
        if not config.jwt_keys:
            raise KeyConfigError("at least one JWT key is required")
        if config.jwt_algorithm not in ALGORITHMS:
            raise KeyConfigError(f"JWT algorithm {config.jwt_algorithm!r} is not supported")
        self._config = config
        self._algorithm = config.jwt_algorithm
        self._signing_kid = next(iter(config.jwt_keys))
        self._signing_key: SigningKey
        self._keys: dict[str, VerifyingKey]
        if self._algorithm == "HS256":
            for kid, secret in config.jwt_keys.items():
                if len(secret.encode()) < MIN_HMAC_BYTES:
                    raise KeyConfigError(f"HS256 key {kid!r} is shorter than 32 bytes")
            self._keys = dict(config.jwt_keys)
            self._signing_key = config.jwt_keys[self._signing_kid]
        else:
            self._signing_key, self._keys = load_asymmetric_keys(config, self._signing_kid)
        # Keyed by the whole token (signature included), so only the exact token that was
        # verified hits; entries end at the token's expiry. Keys only change with a restart.
        self._principals: TLRUCache[str, Principal, float] = TLRUCache(
            PRINCIPAL_CACHE_SIZE, _cached_until, timer=time.time
        )
        #: lookups of :meth:`principal` answered from the cache / that verified the token
        #: (plain counters, exported by ``handlers.metrics.TokenCacheCollector``)
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def config(self) -> AuthConfig:
        return self._config

    def _issue(self, subject: str, typ: str, ttl: int, extra: dict[str, Any]) -> IssuedToken:
        now = int(time.time())
        jti = uuid.uuid4().hex
        claims = {
            "iss": self._config.jwt_issuer,
            "aud": self._config.jwt_audience,
            "sub": subject,
            "iat": now,
            "exp": now + ttl,
            "jti": jti,
            "typ": typ,
            **extra,
        }
        token = jwt.encode(
            claims,
            self._signing_key,
            algorithm=self._algorithm,
            headers={"kid": self._signing_kid},
        )
        return IssuedToken(token, jti, now + ttl)

    def issue_access(self, user_id: str, role: str, email: str | None) -> IssuedToken:
        """An access token for a user (``ACCESS_TOKEN_TTL``)."""
        return self._issue(user_id, ACCESS, self._config.access_ttl, {"role": role, "email": email})

    def issue_refresh(self, user_id: str, family: str, jti: str | None = None) -> IssuedToken:
        """A refresh token in rotation family ``family`` (``REFRESH_TOKEN_TTL``)."""
        issued = self._issue(user_id, REFRESH, self._config.refresh_ttl, {"fam": family})
        return issued

    def issue_service(self, name: str, ttl: int = 365 * 24 * 3600) -> IssuedToken:
        """A token for a trusted backend (publishes to channels, reads every channel)."""
        return self._issue(f"service:{name}", SERVICE, ttl, {"role": SERVICE_ROLE})

    def decode(self, token: str, expected: tuple[str, ...]) -> dict[str, Any]:
        """Verify ``token`` and return its claims; its ``typ`` must be one of ``expected``.

        Raises :class:`TokenError` for anything wrong: bad signature, unknown ``kid``, wrong
        algorithm, expired, wrong audience or issuer, missing claims, wrong type.
        """
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise TokenError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        if header.get("alg") != self._algorithm:
            raise TokenError("token algorithm not accepted")
        key = self._keys.get(str(header.get("kid")))
        if key is None:
            raise TokenError("unknown signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self._algorithm],
                audience=self._config.jwt_audience,
                issuer=self._config.jwt_issuer,
                leeway=self._config.leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpiredError("token expired") from None
        except jwt.PyJWTError:
            raise TokenError("invalid token") from None
        if claims.get("typ") not in expected:
            raise TokenError("wrong token type")
        return claims

    def principal(self, token: str) -> Principal:
        """The caller behind an access or service token (verified tokens are cached until they
        expire, for at most :data:`PRINCIPAL_CACHE_SECONDS`)."""
        # (``decode`` refuses anything that is not a string; it may not even be hashable)
        cached = self._principals.get(token) if isinstance(token, str) else None
        if cached is not None:
            self.cache_hits += 1
            return cached
        self.cache_misses += 1
        principal = self._principal(token)
        self._principals[token] = principal
        return principal

    def _principal(self, token: str) -> Principal:
        claims = self.decode(token, (ACCESS, SERVICE))
        role = claims.get("role")
        if not isinstance(role, str):
            raise TokenError("invalid token")
        if claims["typ"] == SERVICE and role != SERVICE_ROLE:
            raise TokenError("invalid token")
        if claims["typ"] == ACCESS and role == SERVICE_ROLE:
            raise TokenError("invalid token")
        email = claims.get("email")
        return Principal(
            user_id=str(claims["sub"]),
            role=role,
            email=email if isinstance(email, str) else None,
            token_id=str(claims["jti"]),
            expires_at=float(claims["exp"]),
        )
