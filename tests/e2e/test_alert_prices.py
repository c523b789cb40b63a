"""The price line of an alert feed: Arrow-style webhooks draw a line with buy/sell markers, and a
new webhook extends it live (issue 15)."""

from __future__ import annotations

import uuid

import aiohttp
import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import Server, screenshot_path
from tests.e2e.flows import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]


async def _post_arrow(url: str, contract: str, price: float, trade_type: str | None) -> None:
    """Post what TradingView sends for Arrow's template (placeholders substituted)."""
    side = f', "trade_type": "{trade_type}"' if trade_type else ""
    body = f'{{"contract": "{contract}"{side}, "quantity": 1, "price": {price}}}'
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as reply:
        assert reply.status == 201, await reply.text()


async def test_price_line_with_markers_updates_live(page: Page, e2e_server: Server) -> None:
    await sign_in(page, e2e_server, f"arrow-{uuid.uuid4().hex[:8]}@example.com")
    await page.goto("/#/alerts")
    await page.get_by_placeholder("Feed name").fill("NQ scalper")
    await page.get_by_role("button", name="Create feed").click()
    await expect(page.get_by_role("heading", name="NQ scalper")).to_be_visible()
    webhook_url = await page.get_by_test_id("webhook-url").input_value()
    chart = page.locator("[data-testid='price-chart'] svg")
    await expect(chart).to_have_attribute("data-points", "0")

    await _post_arrow(webhook_url, "NQ1!", 18250.25, "buy")
    await _post_arrow(webhook_url, "NQ1!", 18262.5, "sell")
    await _post_arrow(webhook_url, "NQ1!", 18240, "buy")
    await expect(chart).to_have_attribute("data-points", "3")
    await expect(chart.locator(".price-line")).to_have_count(1)
    await expect(chart.locator(".marker-buy")).to_have_count(2)
    await expect(chart.locator(".marker-sell")).to_have_count(1)
    await expect(page.get_by_test_id("price-ticker")).to_have_value("NQ1!")

    # From the REST series after a reload, then extended live by a new webhook.
    await page.reload()
    await expect(chart).to_have_attribute("data-points", "3")
    await expect(chart).to_have_attribute("data-markers", "3")
    await _post_arrow(webhook_url, "NQ1!", 18255.75, None)  # a price without a side
    await expect(chart).to_have_attribute("data-points", "4")
    await expect(chart.locator(".point")).to_have_count(1)
    await _post_arrow(webhook_url, "NQ1!", 18270, "sell")
    await expect(chart).to_have_attribute("data-points", "5")
    await expect(chart.locator(".marker-sell")).to_have_count(2)
    shot = screenshot_path("alert-prices")
    await page.screenshot(path=shot, full_page=True)

    # Another ticker's alerts stay off this line; picking it shows its own.
    await _post_arrow(webhook_url, "ES1!", 5301.5, "buy")
    rows = page.get_by_test_id("alerts-table").locator("tbody tr[data-alert-id]")
    await expect(rows).to_have_count(6)
    await expect(chart).to_have_attribute("data-points", "5")
    await page.get_by_test_id("price-ticker").select_option("ES1!")
    await expect(chart).to_have_attribute("data-points", "1")
    await expect(chart.locator(".marker-buy")).to_have_count(1)
