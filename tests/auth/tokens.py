"""Forging tokens for negative tests (signed with the test key unless told otherwise)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

from tests.conftest import TEST_SECRET


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid access-token claims for a random user, with ``overrides`` applied (``None`` drops)."""
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": "arena-realtime",
        "aud": "arena-realtime",
        "sub": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "typ": "access",
        "role": "buyer",
        "email": None,
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def forge(
    key: str = TEST_SECRET, algorithm: str = "HS256", kid: str | None = "k1", **overrides: Any
) -> str:
    """A token with ``claims(**overrides)`` signed by ``key``."""
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=algorithm, headers=headers)


def alg_none(**overrides: Any) -> str:
    """An unsigned token (``alg: none``)."""
    return jwt.encode(claims(**overrides), None, algorithm="none", headers={"kid": "k1"})
