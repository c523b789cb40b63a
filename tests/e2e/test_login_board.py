"""Signing in with a magic link, and the requests & proposals board updating live."""

from __future__ import annotations

import uuid

import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import ConsoleLog, Server, screenshot_path
from tests.e2e.flows import api, sign_in, user_token

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]


def _email(who: str) -> str:
    return f"{who}-{uuid.uuid4().hex[:8]}@example.com"


async def test_page_is_served_with_a_strict_csp(page: Page, e2e_server: Server) -> None:
    response = await page.goto("/")
    assert response is not None
    assert response.status == 200
    assert response.headers["content-security-policy"] == "default-src 'self'"
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_text("Running locally? Where is my link?")).to_be_visible()
    await page.screenshot(path=screenshot_path("login"))


async def test_sign_in_with_magic_link_and_sign_out(page: Page, e2e_server: Server) -> None:
    email = _email("buyer")
    session = await sign_in(page, e2e_server, email)
    assert session["user"]["email"] == email
    assert session["user"]["role"] == "buyer"
    assert page.url.endswith("/#/board")
    # A reload keeps the session (tokens live in localStorage).
    await page.reload()
    await expect(page.locator("#who")).to_contain_text(email)

    # The link is single use: opening it again is refused with a clear message.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    stored = await page.evaluate("localStorage.getItem('arena.session')")
    assert stored is None
    # Signing out revoked the refresh token on the server.
    await api(
        e2e_server,
        session["access_token"],
        "POST",
        "/api/v1/auth/refresh",
        {"refresh_token": session["refresh_token"]},
        expect_status=401,
    )


async def test_used_magic_link_is_refused(
    page: Page, e2e_server: Server, console: ConsoleLog
) -> None:
    email = _email("twice")
    await sign_in(page, e2e_server, email)
    link = e2e_server.magic_link(email)
    await page.evaluate("localStorage.clear()")
    console.allowed.append("401")  # the refused verify is logged by the browser
    await page.goto(link)
    await expect(page.locator("#notice")).to_contain_text("invalid, expired or already used")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


async def test_refresh_rotation_keeps_the_session(page: Page, e2e_server: Server) -> None:
    await sign_in(page, e2e_server, _email("rotate"))
    before = await page.evaluate("JSON.parse(localStorage.getItem('arena.session'))")
    # Pretend the access token is about to expire: the next API call rotates first.
    await page.evaluate(
        """() => {
          const s = JSON.parse(localStorage.getItem('arena.session'));
          s.access_expires_at = Date.now();
          localStorage.setItem('arena.session', JSON.stringify(s));
        }"""
    )
    await page.reload()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    after = await page.evaluate("JSON.parse(localStorage.getItem('arena.session'))")
    assert after["refresh_token"] != before["refresh_token"]
    # The old refresh token is spent; the page still works with the new pair.
    await page.get_by_placeholder("e.g. CRM for the sales team").fill("After rotation")
    await page.get_by_role("button", name="Create request").click()
    await expect(page.locator("article.request h3")).to_have_text(["After rotation"])


async def test_proposal_status_change_through_the_api_appears_live(
    page: Page, e2e_server: Server
) -> None:
    session = await sign_in(page, e2e_server, _email("buyer"))
    buyer_token = session["access_token"]

    # The buyer creates a request in the page.
    await page.get_by_placeholder("e.g. CRM for the sales team").fill("CRM for the sales team")
    await page.get_by_placeholder("Budget (USD)").fill("13000")
    await page.get_by_placeholder("Requirements, one per line").fill("SSO\nAudit log\nDark mode")
    await page.get_by_role("button", name="Create request").click()
    card = page.locator("article.request", has_text="CRM for the sales team")
    await expect(card).to_be_visible()
    request_id = await card.get_attribute("data-request-id")
    assert request_id

    # A vendor answers through the API: the proposal appears without a reload.
    vendor_token = await user_token(e2e_server, _email("vendor"), "vendor")
    proposal = await api(
        e2e_server,
        vendor_token,
        "POST",
        f"/api/v1/requests/{request_id}/proposals",
        {"price": "12000", "summary": "Acme CRM, SSO included"},
        expect_status=201,
    )
    row = card.locator(f"tr[data-proposal-id='{proposal['id']}']")
    await expect(row.locator(".status .badge")).to_have_text("submitted")

    # Someone else (here: the buyer's own API client) shortlists it: the page follows.
    await api(
        e2e_server,
        buyer_token,
        "PUT",
        f"/api/v1/proposals/{proposal['id']}/status",
        {"status": "shortlisted"},
    )
    await expect(row.locator(".status .badge")).to_have_text("shortlisted")
    await expect(row.get_by_role("button", name="Shortlist")).to_have_count(0)

    # The vendor withdraws it: the buyer's page shows that too.
    await api(
        e2e_server,
        vendor_token,
        "PUT",
        f"/api/v1/proposals/{proposal['id']}/status",
        {"status": "withdrawn"},
    )
    await expect(row.locator(".status .badge")).to_have_text("withdrawn")
    await expect(row.locator("button")).to_have_count(0)
    await page.screenshot(path=screenshot_path("board"), full_page=True)


async def test_buyer_moves_a_proposal_in_the_page_and_the_vendor_sees_it(
    page: Page, e2e_server: Server
) -> None:
    session = await sign_in(page, e2e_server, _email("buyer"))
    request = await api(
        e2e_server,
        session["access_token"],
        "POST",
        "/api/v1/requests",
        {"title": "Data warehouse"},
        expect_status=201,
    )
    vendor_token = await user_token(e2e_server, _email("vendor"), "vendor")
    proposal = await api(
        e2e_server,
        vendor_token,
        "POST",
        f"/api/v1/requests/{request['id']}/proposals",
        {"price": 5000, "summary": "Warehouse in a box"},
        expect_status=201,
    )
    row = page.locator(f"tr[data-proposal-id='{proposal['id']}']")
    await row.get_by_role("button", name="Accept").click()
    await expect(row.locator(".status .badge")).to_have_text("accepted")
    card = page.locator(f"article[data-request-id='{request['id']}']")
    await expect(card.locator("header .badge")).to_have_text("awarded")
    stored = await api(e2e_server, vendor_token, "GET", f"/api/v1/proposals/{proposal['id']}")
    assert stored["status"] == "accepted"


async def test_vendor_view_submits_a_proposal(page: Page, e2e_server: Server) -> None:
    buyer_token = await user_token(e2e_server, _email("buyer"), "buyer")
    title = f"Helpdesk {uuid.uuid4().hex[:6]}"
    request = await api(
        e2e_server, buyer_token, "POST", "/api/v1/requests", {"title": title}, expect_status=201
    )
    vendor_email = _email("vendor")
    await user_token(e2e_server, vendor_email, "vendor")  # the account exists as a vendor
    await sign_in(page, e2e_server, vendor_email)
    await expect(page.locator("#who")).to_contain_text("vendor")
    card = page.locator(f"article[data-request-id='{request['id']}']")
    await card.get_by_placeholder("Price").fill("800")
    await card.get_by_placeholder("Your offer in one line").fill("We do helpdesks")
    await card.get_by_role("button", name="Submit proposal").click()
    badge = card.locator("tr .status .badge")
    await expect(badge).to_have_text("submitted")

    proposals = await api(
        e2e_server, buyer_token, "GET", f"/api/v1/proposals?request_id={request['id']}"
    )
    (proposal,) = proposals["items"]
    assert proposal["price"] == "800.00"
    await api(
        e2e_server,
        buyer_token,
        "PUT",
        f"/api/v1/proposals/{proposal['id']}/status",
        {"status": "rejected"},
    )
    await expect(badge).to_have_text("rejected")
    await page.screenshot(path=screenshot_path("vendor"), full_page=True)
