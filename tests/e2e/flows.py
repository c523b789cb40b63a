"""Steps the browser tests share: signing in through the UI, calling the API as a test user."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg
from playwright.async_api import Page, expect

from server.settings import load_settings
from services.auth.tokens import TokenService
from storage import users
from tests.e2e.conftest import Server


async def sign_in(page: Page, server: Server, email: str) -> dict[str, Any]:
    """Sign in through the login form and the magic link; the stored session (user, tokens)."""
    await page.goto("/")
    await page.get_by_label("E-mail").fill(email)
    mark = server.log_size()
    await page.get_by_role("button", name="Send sign-in link").click()
    await expect(page.get_by_test_id("login-status")).to_contain_text("sign-in link is on its way")
    link = await asyncio.to_thread(server.magic_link, email, mark)
    assert link.startswith(f"{server.url}/login#token=")
    await page.goto(link)
    await expect(page.locator("#who")).to_contain_text(email)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    session: dict[str, Any] = await page.evaluate(
        "JSON.parse(localStorage.getItem('arena.session'))"
    )
    return session


async def user_token(server: Server, email: str, role: str) -> str:
    """An access token for ``email`` with ``role``, made like ``arena-realtime token`` does
    (the account is created if needed) but in-process, which is much faster than the CLI."""
    conn = await asyncpg.connect(server.env["DATABASE_URL"])
    try:
        user = await users.get_or_create(conn, email, role)
        if user.role != role:
            user = await users.set_role(conn, user.id, role)
    finally:
        await conn.close()
    tokens = TokenService(load_settings(server.env).handlers.auth)
    return tokens.issue_access(str(user.id), user.role, user.email).token


async def api(
    server: Server, token: str, method: str, path: str, body: Any = None, expect_status: int = 200
) -> Any:
    """Call the REST API; assert the status; the decoded JSON body (None for 204)."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            f"{server.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        text = await response.text()
        assert response.status == expect_status, text
        return None if response.status == 204 else await response.json()
