"""Vendor onboarding in the browser: a buyer invites a vendor from the board, the vendor
follows the e-mailed link, lands signed in as a vendor and sees the request; a vendor already
on the board sees a further invited request appear without a reload."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid

import orjson
import pytest
from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import ConsoleLog, Server, screenshot_path
from tests.e2e.flows import api, sign_in, user_token

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]

_INVITE_RE = re.compile(r"(https?://\S+/invite#token=[A-Za-z0-9_\-]+)")


def _email(who: str) -> str:
    return f"{who}-{uuid.uuid4().hex[:8]}@example.com"


def invite_link(server: Server, email: str, after: int, timeout: float = 15) -> str:
    """The newest invitation link mailed to ``email`` (console backend) in the server's log
    from byte ``after`` on."""
    deadline = time.monotonic() + timeout
    while True:
        with server.log_path.open("rb") as log:
            log.seek(after)
            lines = log.read().splitlines()
        for line in reversed(lines):
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                if isinstance(entry, dict) and entry.get("to") == email:
                    found = _INVITE_RE.search(str(entry.get("body", "")))
                    if found:
                        return found.group(1)
        assert time.monotonic() < deadline, f"no invitation for {email}: {server.log_tail()}"
        time.sleep(0.05)


async def test_invited_vendor_signs_in_and_sees_invited_requests_live(
    page: Page, browser: Browser, e2e_server: Server
) -> None:
    # The buyer, on the board, creates a request and invites a vendor by e-mail.
    buyer = await sign_in(page, e2e_server, _email("buyer"))
    title = f"Payroll system {uuid.uuid4().hex[:6]}"
    await page.get_by_placeholder("e.g. CRM for the sales team").fill(title)
    await page.get_by_role("button", name="Create request").click()
    card = page.locator("article.request", has_text=title)
    await expect(card).to_be_visible()
    first_id = await card.get_attribute("data-request-id")
    vendor_email = _email("vendor")
    mark = e2e_server.log_size()
    await card.get_by_placeholder("Vendor's e-mail").fill(vendor_email)
    await card.get_by_role("button", name="Invite vendor").click()
    await expect(card.get_by_test_id("invite-status")).to_have_text(
        f"Invitation sent to {vendor_email}"
    )
    link = await asyncio.to_thread(invite_link, e2e_server, vendor_email, mark)
    assert link.startswith(f"{e2e_server.url}/invite#token=")

    # The vendor (no account yet) follows the link in their own browser.
    context = await browser.new_context(
        base_url=e2e_server.url, viewport={"width": 1200, "height": 820}
    )
    vendor_console = ConsoleLog()
    try:
        vendor_page = await context.new_page()
        vendor_page.on("console", vendor_console.on_console)
        vendor_page.on("pageerror", vendor_console.on_page_error)
        vendor_page.set_default_timeout(15_000)
        await vendor_page.goto(link)
        await expect(vendor_page.locator("#who")).to_contain_text(f"{vendor_email} · vendor")
        assert vendor_page.url.endswith("/#/board")
        await expect(vendor_page.locator("#conn")).to_have_attribute("data-state", "connected")
        first = vendor_page.locator(f"article[data-request-id='{first_id}']")
        await expect(first.get_by_role("button", name="Submit proposal")).to_be_visible()

        # The buyer posts a second request and invites the same vendor; it is not on the
        # vendor's board (created after it loaded) until the invitation is accepted.
        second = await api(
            e2e_server,
            buyer["access_token"],
            "POST",
            "/api/v1/requests",
            {"title": f"Expenses app {uuid.uuid4().hex[:6]}"},
            expect_status=201,
        )
        mark = e2e_server.log_size()
        await api(
            e2e_server,
            buyer["access_token"],
            "POST",
            f"/api/v1/requests/{second['id']}/invites",
            {"email": vendor_email},
            expect_status=201,
        )
        later = vendor_page.locator(f"article[data-request-id='{second['id']}']")
        await expect(later).to_have_count(0)
        await vendor_page.evaluate("window.__notReloaded = true")

        # The vendor opens the new link in another tab: the first tab shows the request live.
        second_link = await asyncio.to_thread(invite_link, e2e_server, vendor_email, mark)
        other_tab = await context.new_page()
        other_tab.on("console", vendor_console.on_console)
        other_tab.on("pageerror", vendor_console.on_page_error)
        await other_tab.goto(second_link)
        await expect(other_tab.locator("#who")).to_contain_text(vendor_email)
        await expect(later.locator("h3")).to_have_text(second["title"])
        await expect(vendor_page.locator("#notice")).to_contain_text("You were invited to")
        assert await vendor_page.evaluate("window.__notReloaded === true")
        await vendor_page.screenshot(path=screenshot_path("vendor-invited"), full_page=True)

        # The invitation made the vendor a vendor: they can propose right away.
        await later.get_by_placeholder("Price").fill("4200")
        await later.get_by_placeholder("Your offer in one line").fill("Expenses, done")
        await later.get_by_role("button", name="Submit proposal").click()
        await expect(later.locator("tr .status .badge")).to_have_text("submitted")
    finally:
        await context.close()
    assert vendor_console.unexpected() == [], vendor_console.errors


async def test_used_invitation_link_is_refused(
    page: Page, e2e_server: Server, console: ConsoleLog
) -> None:
    buyer = await user_token(e2e_server, _email("buyer"), "buyer")
    request = await api(
        e2e_server, buyer, "POST", "/api/v1/requests", {"title": "Once"}, expect_status=201
    )
    vendor_email = _email("vendor")
    mark = e2e_server.log_size()
    await api(
        e2e_server,
        buyer,
        "POST",
        f"/api/v1/requests/{request['id']}/invites",
        {"email": vendor_email},
        expect_status=201,
    )
    link = await asyncio.to_thread(invite_link, e2e_server, vendor_email, mark)
    await page.goto(link)
    await expect(page.locator("#who")).to_contain_text(vendor_email)
    await page.evaluate("localStorage.clear()")
    console.allowed.append("401")  # the refused accept is logged by the browser
    await page.goto(link)
    await expect(page.locator("#notice")).to_contain_text("invalid, expired or already used")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
