"""The connection indicator, and the page recovering by itself when the server restarts."""

from __future__ import annotations

import asyncio
import re
import uuid

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Page, expect

from tests.e2e.conftest import ConsoleLog, Server, screenshot_path
from tests.e2e.flows import api, sign_in, user_token

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]

#: While the server is down the browser logs failed WebSocket handshakes; that is expected.
DOWN_ERRORS = ("WebSocket connection to", "ERR_CONNECTION_REFUSED")


async def _board_with_proposal(page: Page, server: Server) -> tuple[str, str, str]:
    """Signed-in buyer with one request and one proposal on the board:
    (buyer token, vendor token, proposal id)."""
    session = await sign_in(page, server, f"buyer-{uuid.uuid4().hex[:8]}@example.com")
    buyer = session["access_token"]
    request = await api(
        server, buyer, "POST", "/api/v1/requests", {"title": "Payroll"}, expect_status=201
    )
    vendor = await user_token(server, f"vendor-{uuid.uuid4().hex[:8]}@example.com", "vendor")
    proposal = await api(
        server,
        vendor,
        "POST",
        f"/api/v1/requests/{request['id']}/proposals",
        {"price": 100, "summary": "Payroll as a service"},
        expect_status=201,
    )
    row = page.locator(f"tr[data-proposal-id='{proposal['id']}']")
    await expect(row.locator(".status .badge")).to_have_text("submitted")
    return buyer, vendor, proposal["id"]


async def test_page_reconnects_and_recovers_after_a_server_restart(
    page: Page, e2e_server: Server, console: ConsoleLog
) -> None:
    console.allowed.extend(DOWN_ERRORS)
    buyer, _, proposal_id = await _board_with_proposal(page, e2e_server)
    badge = page.locator("#conn")

    await asyncio.to_thread(e2e_server.stop)
    await expect(badge).to_have_attribute("data-state", "reconnecting")
    await page.screenshot(path=screenshot_path("reconnecting"))
    await asyncio.to_thread(e2e_server.start)
    # Redis kept the channel's history: every channel resumes without a gap.
    await expect(badge).to_have_attribute("data-state", "recovered", timeout=30_000)

    await api(
        e2e_server,
        buyer,
        "PUT",
        f"/api/v1/proposals/{proposal_id}/status",
        {"status": "shortlisted"},
    )
    row = page.locator(f"tr[data-proposal-id='{proposal_id}']")
    await expect(row.locator(".status .badge")).to_have_text("shortlisted")


async def test_lost_history_is_shown_and_the_board_reloads_over_rest(
    page: Page, e2e_server: Server, console: ConsoleLog
) -> None:
    console.allowed.extend(DOWN_ERRORS)
    _, _, proposal_id = await _board_with_proposal(page, e2e_server)
    badge = page.locator("#conn")

    await asyncio.to_thread(e2e_server.stop)
    await expect(badge).to_have_attribute("data-state", "reconnecting")
    # While the service is down: Redis loses every channel's history (a flush), and a change
    # lands in PostgreSQL whose event the page will therefore never receive.
    client = aioredis.Redis.from_url(e2e_server.env["REDIS_URL"])
    try:
        keys = [key async for key in client.scan_iter(match=f"{e2e_server.env['REDIS_PREFIX']}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    conn = await asyncpg.connect(e2e_server.env["DATABASE_URL"])
    try:
        await conn.execute(
            "UPDATE proposals SET status = 'rejected', version = version + 1,"
            " updated_at = now() WHERE id = $1",
            uuid.UUID(proposal_id),
        )
    finally:
        await conn.close()
    await asyncio.to_thread(e2e_server.start)

    await expect(badge).to_have_attribute("data-state", "lost", timeout=30_000)
    await expect(badge).to_contain_text("lost history")
    row = page.locator(f"tr[data-proposal-id='{proposal_id}']")
    await expect(row.locator(".status .badge")).to_have_text("rejected")
    await page.screenshot(path=screenshot_path("lost-history"))


async def test_the_page_does_not_reconnect_after_its_session_is_logged_out(
    page: Page, e2e_server: Server
) -> None:
    """Logging out (here: from another device, with the same session's refresh token) closes the
    page's WebSocket with 4003, and the real JavaScript client stays closed: its access token is
    still valid for minutes, so reconnecting would quietly resume the revoked session."""
    session = await sign_in(page, e2e_server, f"leaver-{uuid.uuid4().hex[:8]}@example.com")
    badge = page.locator("#conn")
    await expect(badge).to_have_attribute("data-state", "connected")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{e2e_server.url}/api/v1/auth/logout",
            json={"refresh_token": session["refresh_token"]},
        ) as response,
    ):
        assert response.status == 204, await response.text()
    await expect(badge).to_have_attribute("data-state", "closed", timeout=15_000)
    await expect(badge).to_have_attribute("title", re.compile(r"closed with 4003 logged out"))
    # "closed" is final in the client (no reconnect timer is armed); the server agrees: the
    # user has no WebSocket left, and the access token still works on REST, so nothing but
    # the close code kept the client from reconnecting.
    me = await api(e2e_server, session["access_token"], "GET", "/api/v1/auth/me")
    assert me["email"] == session["user"]["email"]
    await expect(badge).to_have_attribute("data-state", "closed")


async def test_the_js_client_reports_a_revoked_subscription_and_does_not_resubscribe(
    page: Page, e2e_server: Server
) -> None:
    """The bundled client in the browser: when the server ends a subscription because access was
    revoked (here the buyer deletes the request behind ``proposals:{id}``), the subscription's
    ``unsubscribed`` handler and the client's ``unsubscribed`` event get code 4403 with the
    reason, the subscription is forgotten, and a reconnect does not subscribe to it again."""
    session = await sign_in(page, e2e_server, f"revoked-{uuid.uuid4().hex[:8]}@example.com")
    token = session["access_token"]
    request = await api(
        e2e_server, token, "POST", "/api/v1/requests", {"title": "Revoked"}, expect_status=201
    )
    channel = f"proposals:{request['id']}"
    await page.evaluate(
        """async ([channel, token]) => {
          const { ArenaClient } = await import("/static/arena-realtime.js");
          const url = location.origin.replace(/^http/, "ws") + "/ws";
          const client = new ArenaClient(url, { getToken: () => token, minDelay: 50 });
          window.revocation = { client, handler: [], event: [], subscribed: 0, connects: 0 };
          client.addEventListener("unsubscribed", (e) => window.revocation.event.push(e.detail));
          client.addEventListener("state", (e) => {
            if (e.detail.state === "connected") window.revocation.connects += 1;
          });
          client.subscribe(channel, {
            subscribed: () => { window.revocation.subscribed += 1; },
            unsubscribed: (info) => window.revocation.handler.push(info),
          });
          client.connect();
        }""",
        [channel, token],
    )
    await page.wait_for_function("() => window.revocation.subscribed === 1")
    await api(e2e_server, token, "DELETE", f"/api/v1/requests/{request['id']}", expect_status=204)
    await page.wait_for_function("() => window.revocation.handler.length === 1")
    got = await page.evaluate("window.revocation")
    expected = {"channel": channel, "code": 4403, "reason": "access to this channel was revoked"}
    assert got["handler"] == [expected]
    assert got["event"] == [expected]
    # Forgotten: a reconnect (the socket dropped) resubscribes nothing.
    assert await page.evaluate(f"window.revocation.client.subscriptions.has({channel!r})") is False
    assert await page.evaluate("window.revocation.connects") == 1
    await page.evaluate("window.revocation.client._ws.close()")
    await page.wait_for_function("() => window.revocation.connects === 2")
    # One round trip after the reconnect: a resubscribe would have been answered before it.
    await page.evaluate("window.revocation.client.ping()")
    assert await page.evaluate("window.revocation.subscribed") == 1
