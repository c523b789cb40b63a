"""storage.auth_tokens directly: consumption and purging."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from handlers import keys
from storage import auth_tokens, users
from storage.auth_tokens import RefreshOutcome
from storage.errors import NotFound


async def test_purge_removes_only_long_expired_rows(client: Any) -> None:
    async with client.server.app[keys.pool].acquire() as conn:
        user = await users.get_or_create(conn, "purge@example.com")
        for i, ttl in enumerate((600, 600)):
            await auth_tokens.create_magic_link(conn, bytes([i]) * 32, "purge@example.com", ttl)
        old_family = await auth_tokens.start_family(conn, user.id)
        await auth_tokens.add_refresh_token(conn, old_family, "old", 1)
        live_family = await auth_tokens.start_family(conn, user.id)
        await auth_tokens.add_refresh_token(conn, live_family, "live", 2_000_000_000)
        await conn.execute(
            "UPDATE magic_links SET expires_at = now() - interval '2 days' WHERE token_hash = $1",
            bytes([0]) * 32,
        )
        await conn.execute("UPDATE refresh_families SET created_at = now() - interval '30 days'")
        assert await auth_tokens.purge_expired(conn) == 3
        assert await conn.fetchval("SELECT count(*) FROM magic_links") == 1
        assert await conn.fetchval("SELECT jti FROM refresh_tokens") == "live"
        assert await auth_tokens.is_family_active(conn, live_family)
        assert not await auth_tokens.is_family_active(conn, old_family)


async def test_consume_and_refresh_outcomes(client: Any) -> None:
    digest = hashlib.sha256(b"t").digest()
    async with client.server.app[keys.pool].acquire() as conn:
        await auth_tokens.create_magic_link(conn, digest, "Mixed@Example.com", 600)
        assert await auth_tokens.consume_magic_link(conn, digest) == "mixed@example.com"
        with pytest.raises(NotFound):
            await auth_tokens.consume_magic_link(conn, digest)
        user = await users.get_or_create(conn, "mixed@example.com")
        family = await auth_tokens.start_family(conn, user.id)
        await auth_tokens.add_refresh_token(conn, family, "a", 2_000_000_000)
        await auth_tokens.add_refresh_token(conn, family, "expired", 1)
        unknown = "00000000-0000-0000-0000-000000000000"
        assert (await auth_tokens.use_refresh_token(conn, "a", unknown)).outcome is (
            RefreshOutcome.UNKNOWN
        )
        expired = await auth_tokens.use_refresh_token(conn, "expired", str(family))
        assert expired.outcome is RefreshOutcome.EXPIRED
        ok = await auth_tokens.use_refresh_token(conn, "a", str(family))
        assert ok.outcome is RefreshOutcome.OK
        assert ok.user_id == user.id
        reused = await auth_tokens.use_refresh_token(conn, "a", str(family))
        assert reused.outcome is RefreshOutcome.REUSED
        assert not await auth_tokens.is_family_active(conn, family)
        assert (await auth_tokens.use_refresh_token(conn, "a", str(family))).outcome is (
            RefreshOutcome.REVOKED
        )
        with pytest.raises(NotFound):
            await auth_tokens.revoke_family(conn, unknown, "logout")
