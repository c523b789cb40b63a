"""An analysis streams into the page and resumes after a reload without repeated or lost text."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from playwright.async_api import Page, WebSocket, expect

from tests.e2e.conftest import Server, screenshot_path
from tests.e2e.flows import api, sign_in, user_token

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]


async def _request_with_proposals(server: Server, buyer_token: str) -> dict[str, Any]:
    request = await api(
        server,
        buyer_token,
        "POST",
        "/api/v1/requests",
        {
            "title": "CRM for the sales team",
            "description": "Pipeline, quotes and reporting for 40 sales people.",
            "budget": "13000",
            "requirements": [
                {"name": "SSO", "priority": "must", "description": "SAML single sign-on"},
                {"name": "Audit log", "priority": "should"},
                {"name": "Dark mode", "priority": "nice"},
            ],
        },
        expect_status=201,
    )
    offers = [("12000", "full"), ("9500", "partial"), ("15000", "full")]
    for index, (price, sso) in enumerate(offers):
        vendor = await user_token(server, f"v{index}-{uuid.uuid4().hex[:6]}@example.com", "vendor")
        await api(
            server,
            vendor,
            "POST",
            f"/api/v1/requests/{request['id']}/proposals",
            {
                "price": price,
                "summary": f"Offer {index + 1}: hosted CRM with onboarding",
                "answers": [
                    {"requirement": "SSO", "compliance": sso, "response": "SAML 2.0"},
                    {"requirement": "Audit log", "compliance": "full"},
                ],
            },
            expect_status=201,
        )
    return request


def _subscribe_frames(frames: list[dict[str, Any]], channel: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("type") == "subscribe" and f.get("channel") == channel]


async def test_analysis_streams_and_resumes_after_reload(page: Page, e2e_server: Server) -> None:
    session = await sign_in(page, e2e_server, f"analyst-{uuid.uuid4().hex[:8]}@example.com")
    request = await _request_with_proposals(e2e_server, session["access_token"])

    await page.goto(f"/#/analysis?request={request['id']}")
    await expect(page.locator("select[name=request]")).to_have_value(request["id"])
    await page.get_by_role("button", name="Start analysis").click()
    await page.wait_for_url("**/#/analysis/*")
    analysis_id = page.url.rsplit("/", 1)[-1]
    text = page.get_by_test_id("analysis-text")
    status = page.get_by_test_id("analysis-status")

    # The text streams in: it grows while the analysis runs.
    await expect(status).to_have_text("running")
    await expect(text).to_contain_text("Price ranking")
    await page.screenshot(path=screenshot_path("analysis-streaming"))
    saved = await page.evaluate(
        f"JSON.parse(sessionStorage.getItem('arena.analysis.{analysis_id}'))"
    )
    assert saved["offset"] >= 2, saved
    assert saved["text"]

    # Reload in the middle of the stream; watch what the new page asks the server for.
    frames: list[dict[str, Any]] = []

    def on_websocket(ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: frames.append(orjson.loads(payload)))

    page.on("websocket", on_websocket)
    await page.reload()
    shown_at_reload = await text.text_content()
    info = await api(e2e_server, session["access_token"], "GET", f"/api/v1/analyses/{analysis_id}")
    assert info["status"] == "running", "the analysis finished before the reload; slow it down"

    await expect(status).to_have_text("done", timeout=60_000)
    final = await api(e2e_server, session["access_token"], "GET", f"/api/v1/analyses/{analysis_id}")
    assert final["status"] == "done"
    # No repeated and no missing text: exactly the stored text.
    assert await text.text_content() == final["text"]
    assert shown_at_reload
    assert final["text"].startswith(shown_at_reload)
    await expect(page.get_by_test_id("analysis-resumed")).to_contain_text("resumed at")

    # The reloaded page resumed from its saved position instead of replaying from the start.
    (subscribe,) = _subscribe_frames(frames, f"analysis:{analysis_id}")
    assert subscribe["since"]["offset"] > 0
    assert subscribe["since"]["offset"] >= saved["offset"]
    await page.screenshot(path=screenshot_path("analysis"), full_page=True)


async def test_finished_analysis_opens_from_rest_in_a_new_tab(
    page: Page, e2e_server: Server
) -> None:
    session = await sign_in(page, e2e_server, f"late-{uuid.uuid4().hex[:8]}@example.com")
    request = await _request_with_proposals(e2e_server, session["access_token"])
    started = await api(
        e2e_server,
        session["access_token"],
        "POST",
        f"/api/v1/requests/{request['id']}/analyses",
        {"kind": "summarize_request"},
        expect_status=202,
    )
    # A late joiner with no saved position replays the stream from its first publication.
    await page.goto(f"/#/analysis/{started['id']}")
    status = page.get_by_test_id("analysis-status")
    await expect(status).to_have_text("done", timeout=60_000)
    final = await api(
        e2e_server, session["access_token"], "GET", f"/api/v1/analyses/{started['id']}"
    )
    assert await page.get_by_test_id("analysis-text").text_content() == final["text"]
    await expect(page.get_by_test_id("analysis-resumed")).to_have_text("")
