"""JWT rules: pinned algorithm, key rotation by kid, RS256/EdDSA keys, key-length checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from server.app import create_app
from server.settings import SettingsError
from services.auth.tokens import KeyConfigError, TokenError, TokenService
from services.config import AuthConfig
from tests.auth.flows import bearer
from tests.conftest import TEST_SECRET

OLD_SECRET = "an-old-secret-that-is-also-long-enough-0123456789"


def _pem_private(key: Any) -> bytes:
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem


def _pem_public(key: Any) -> bytes:
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "arena-realtime",
        "aud": "arena-realtime",
        "sub": "00000000-0000-0000-0000-000000000001",
        "iat": now,
        "exp": now + 60,
        "jti": "j1",
        "typ": "access",
        "role": "buyer",
    }
    claims.update(overrides)
    return claims


def test_old_hs256_keys_verify_during_a_rotation() -> None:
    old = TokenService(AuthConfig(jwt_keys={"k0": OLD_SECRET}))
    rotated = TokenService(AuthConfig(jwt_keys={"k1": TEST_SECRET, "k0": OLD_SECRET}))
    token = old.issue_access("u1", "buyer", None).token
    assert rotated.principal(token).user_id == "u1"
    # new tokens are signed with the new key only
    new = rotated.issue_access("u2", "buyer", None).token
    assert jwt.get_unverified_header(new)["kid"] == "k1"
    with pytest.raises(TokenError, match="unknown signing key"):
        old.principal(new)


def test_short_hmac_key_is_refused() -> None:
    with pytest.raises(KeyConfigError):
        TokenService(AuthConfig(jwt_keys={"k1": "short"}))


@pytest.mark.parametrize("algorithm", ["RS256", "EdDSA"])
def test_asymmetric_keys_sign_and_old_public_keys_verify(tmp_path: Path, algorithm: str) -> None:
    def generate() -> Any:
        if algorithm == "RS256":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ed25519.Ed25519PrivateKey.generate()

    current, previous = generate(), generate()
    (tmp_path / "current.pem").write_bytes(_pem_private(current))
    public_dir = tmp_path / "public"
    public_dir.mkdir()
    (public_dir / "old.pem").write_bytes(_pem_public(previous))
    service = TokenService(
        AuthConfig(
            jwt_algorithm=algorithm,
            jwt_keys={"new": "unused-for-asymmetric-algorithms-0123456789"},
            jwt_private_key_file=str(tmp_path / "current.pem"),
            jwt_public_keys_dir=str(public_dir),
        )
    )
    token = service.issue_access("u1", "vendor", "v@example.com").token
    assert jwt.get_unverified_header(token) == {"alg": algorithm, "kid": "new", "typ": "JWT"}
    assert service.principal(token).role == "vendor"
    old_token = jwt.encode(_claims(), previous, algorithm=algorithm, headers={"kid": "old"})
    assert service.principal(old_token).user_id == _claims()["sub"]
    # HS256 signed with the public key as the "secret" (algorithm confusion) is refused
    confused = jwt.encode(_claims(), "x" * 64, algorithm="HS256", headers={"kid": "new"})
    with pytest.raises(TokenError, match="algorithm not accepted"):
        service.principal(confused)
    stranger = jwt.encode(_claims(), generate(), algorithm=algorithm, headers={"kid": "new"})
    with pytest.raises(TokenError, match="invalid token"):
        service.principal(stranger)


def test_short_rsa_key_is_a_settings_error(tmp_path: Path, make_settings: Any) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    (tmp_path / "weak.pem").write_bytes(_pem_private(weak))
    with pytest.raises(SettingsError, match="at least 2048"):
        make_settings(JWT_ALGORITHM="RS256", JWT_PRIVATE_KEY_FILE=str(tmp_path / "weak.pem"))
    with pytest.raises(SettingsError, match="JWT_PRIVATE_KEY_FILE is required"):
        make_settings(JWT_ALGORITHM="EdDSA")
    ed = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.pem").write_bytes(_pem_private(ed))
    with pytest.raises(SettingsError, match="not a RS256 key"):
        make_settings(JWT_ALGORITHM="RS256", JWT_PRIVATE_KEY_FILE=str(tmp_path / "ed.pem"))


async def test_eddsa_end_to_end(tmp_path: Path, make_settings: Any, aiohttp_client: Any) -> None:
    from tests.auth.flows import sign_in

    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.pem").write_bytes(_pem_private(key))
    settings = make_settings(JWT_ALGORITHM="EdDSA", JWT_PRIVATE_KEY_FILE=str(tmp_path / "ed.pem"))
    client = await aiohttp_client(create_app(settings))
    session = await sign_in(client, "ed@example.com")
    assert jwt.get_unverified_header(session["access_token"])["alg"] == "EdDSA"
    resp = await client.get("/api/v1/auth/me", headers=bearer(session["access_token"]))
    assert resp.status == 200
    resp = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert resp.status == 200


def test_malformed_trusted_proxy_is_a_settings_error(make_settings: Any) -> None:
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES"):
        make_settings(TRUSTED_PROXIES="10.0.0.0/8,not-an-ip")
    assert make_settings(TRUSTED_PROXIES="10.0.0.0/8, ::1").handlers.http.trusted_proxies


def test_verified_tokens_are_reused_only_until_they_expire() -> None:
    """The verification cache never outlives a token, and only the exact token hits it."""
    # 2 s, not 1: ``exp`` counts from the whole second of issue, so a 1 s token issued late in
    # a second could already be expired by the next call on a busy machine.
    service = TokenService(AuthConfig(jwt_keys={"k1": TEST_SECRET}, access_ttl=2, leeway=0))
    issued = service.issue_access("u1", "buyer", None)
    assert service.principal(issued.token).user_id == "u1"
    assert service.principal(issued.token).user_id == "u1"  # from the cache
    head, _, signature = issued.token.rpartition(".")
    forged = f"{head}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    with pytest.raises(TokenError, match="invalid token"):
        service.principal(forged)
    with pytest.raises(TokenError, match="malformed token"):
        service.principal({"token": issued.token})  # type: ignore[arg-type]
    time.sleep(max(0.0, issued.expires_at - time.time()) + 1.05)
    with pytest.raises(TokenError, match="token expired"):
        service.principal(issued.token)
