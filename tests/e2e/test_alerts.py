"""Alert feeds: the webhook URL, and alerts posted by webhook appearing in the table and chart."""

from __future__ import annotations

import asyncio
import re
import uuid

import aiohttp
import pytest
from playwright.async_api import Page, Route, expect

from tests.e2e.conftest import Server, copy_to_docs, screenshot_path
from tests.e2e.flows import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]


async def _post(url: str, body: object) -> int:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        return response.status


async def test_alert_posted_by_webhook_appears_in_table_and_chart(
    page: Page, e2e_server: Server
) -> None:
    await sign_in(page, e2e_server, f"trader-{uuid.uuid4().hex[:8]}@example.com")
    await page.get_by_role("link", name="Alerts").click()
    await page.get_by_placeholder("Feed name").fill("BTC breakout")
    await page.get_by_role("button", name="Create feed").click()
    await page.wait_for_url("**/#/alerts/*")
    await expect(page.get_by_role("heading", name="BTC breakout")).to_be_visible()
    url_box = page.get_by_test_id("webhook-url")
    webhook_url = await url_box.input_value()
    assert webhook_url.startswith(f"{e2e_server.url}/webhooks/tv/")
    await page.context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=e2e_server.url
    )
    copy = page.get_by_test_id("webhook").locator("button")
    await expect(copy).to_have_text("Copy")
    await copy.click()
    await expect(copy).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == webhook_url
    table = page.get_by_test_id("alerts-table")
    chart = page.locator("[data-testid='alerts-chart'] svg")
    await expect(table).to_contain_text("No alerts yet")
    await expect(chart).to_have_attribute("data-total", "0")

    body = {"ticker": "BTCUSD", "action": "buy", "quantity": 2, "price": 65000.5}
    assert await _post(webhook_url, body) == 201
    rows = table.locator("tbody tr[data-alert-id]")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("BTCUSD")
    await expect(rows.first).to_contain_text("buy")
    await expect(rows.first).to_contain_text("65,000.50")
    await expect(chart).to_have_attribute("data-total", "1")

    # A TradingView plain-text alert, then a duplicate that must not appear twice.
    text_alert = {"ticker": "ETHUSD", "action": "sell", "quantity": 1, "message": "take profit"}
    assert await _post(webhook_url, text_alert) == 201
    assert await _post(webhook_url, text_alert) == 200
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("ETHUSD")
    await expect(rows.first).to_contain_text("take profit")
    await expect(chart).to_have_attribute("data-total", "2")
    shot = screenshot_path("alerts")
    await page.screenshot(path=shot, full_page=True)
    copy_to_docs(shot)

    # After a reload the secret URL is no longer shown, but the alerts and chart are.
    await page.reload()
    await expect(rows).to_have_count(2)
    await expect(page.get_by_test_id("webhook-url")).to_have_count(0)
    await expect(page.get_by_role("button", name="Rotate secrets")).to_be_visible()
    await expect(chart).to_have_attribute("data-total", "2")


async def test_wrong_webhook_secret_adds_nothing(page: Page, e2e_server: Server) -> None:
    await sign_in(page, e2e_server, f"trader-{uuid.uuid4().hex[:8]}@example.com")
    await page.goto("/#/alerts")
    await page.get_by_placeholder("Feed name").fill("Guarded feed")
    await page.get_by_role("button", name="Create feed").click()
    webhook_url = await page.get_by_test_id("webhook-url").input_value()
    forged = webhook_url[:-4] + ("aaaa" if not webhook_url.endswith("aaaa") else "bbbb")
    assert await _post(forged, {"ticker": "BTCUSD", "action": "buy"}) == 404
    assert await _post(webhook_url, {"ticker": "SOLUSD", "action": "buy"}) == 201
    rows = page.get_by_test_id("alerts-table").locator("tbody tr[data-alert-id]")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("SOLUSD")


async def test_alert_arriving_while_the_table_loads_is_kept(page: Page, e2e_server: Server) -> None:
    """The live push can beat the REST snapshot it is missing from; the snapshot must not
    wipe it out (held here: the list is fetched before the alert, delivered after it)."""
    held: asyncio.Queue[Route] = asyncio.Queue()
    release = asyncio.Event()

    async def hold_alert_list(route: Route) -> None:
        response = await route.fetch()  # the server's answer now: no alerts yet
        await held.put(route)
        await release.wait()
        await route.fulfill(response=response)

    await page.route(re.compile(r"/api/v1/alerts\?strategy="), hold_alert_list)
    await sign_in(page, e2e_server, f"trader-{uuid.uuid4().hex[:8]}@example.com")
    await page.goto("/#/alerts")
    await page.get_by_placeholder("Feed name").fill("Race feed")
    await page.get_by_role("button", name="Create feed").click()
    webhook_url = await page.get_by_test_id("webhook-url").input_value()
    await asyncio.wait_for(held.get(), 30)  # the feed's first load is in flight
    assert await _post(webhook_url, {"ticker": "XRPUSD", "action": "sell"}) == 201
    rows = page.get_by_test_id("alerts-table").locator("tbody tr[data-alert-id]")
    await expect(rows).to_have_count(1)  # from the live push
    async with page.expect_response(re.compile(r"/api/v1/alerts\?strategy=")) as answered:
        release.set()
    await answered.value
    await page.wait_for_timeout(500)  # the snapshot (without the alert) has been applied
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("XRPUSD")
