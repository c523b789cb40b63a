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
from typing import Any

import jwt

from handlers.config import AuthConfig
from handlers.principal import SERVICE_ROLE, Principal

ACCESS = "access"
REFRESH = "refresh"
SERVICE = "service"

REQUIRED_CLAIMS = ["exp", "iat", "sub", "aud", "iss", "jti", "typ"]


class TokenError(Exception):
    """The token is not acceptable; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: int


class TokenService:
    """Signs and verifies the service's tokens with the configured keys."""

    def __init__(self, config: AuthConfig) -> None:
        if not config.jwt_keys:
            raise ValueError("at least one JWT key is required")
        self._config = config
        self._algorithm = config.jwt_algorithm
        self._signing_kid = next(iter(config.jwt_keys))
        self._keys = dict(config.jwt_keys)

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
            self._keys[self._signing_kid],
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
            raise TokenError("token expired") from None
        except jwt.PyJWTError:
            raise TokenError("invalid token") from None
        if claims.get("typ") not in expected:
            raise TokenError("wrong token type")
        return claims

    def principal(self, token: str) -> Principal:
        """The caller behind an access or service token."""
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
