"""A browser's own ``EventSource`` on ``/sse/{channel}``: publications made through the REST API
arrive; when the server ends the stream mid-way, the browser reconnects by itself with
``Last-Event-ID`` and receives exactly the events it missed, in order, without duplicates."""

from __future__ import annotations

import base64
import re
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from playwright.async_api import ConsoleMessage, Page

from server.settings import load_settings
from services.auth.tokens import TokenService
from tests.e2e.conftest import Server
from tests.e2e.flows import api, user_token
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]

#: opens an EventSource and records what the page's script sees
LISTEN = """([url]) => {
  window.sse = { messages: [], subscribed: [], disconnects: [], opens: 0 };
  const source = new EventSource(url);
  window.sse.source = source;
  source.onopen = () => { window.sse.opens += 1; };
  source.onmessage = (e) => {
    window.sse.messages.push({ id: e.lastEventId, body: JSON.parse(e.data) });
  };
  source.addEventListener('subscribed', (e) => {
    window.sse.subscribed.push({ id: e.lastEventId, body: JSON.parse(e.data) });
  });
  source.addEventListener('disconnect', (e) => window.sse.disconnects.push(JSON.parse(e.data)));
}"""


async def _publish(server: Server, service: str, channel: str, n: int) -> None:
    await api(server, service, "POST", f"/api/v1/channels/{channel}/publish", {"data": {"n": n}})


async def _count(page: Page, what: str, count: int) -> Any:
    # functions, not expressions: the page's CSP forbids eval
    await page.wait_for_function(
        "([what, count]) => window.sse[what].length >= count", arg=[what, count]
    )
    return await page.evaluate("([what]) => window.sse[what]", [what])


async def test_event_source_resumes_with_last_event_id(page: Page, e2e_server: Server) -> None:
    token = await user_token(e2e_server, f"sse-{uuid.uuid4().hex[:8]}@example.com", "admin")
    service = TokenService(load_settings(e2e_server.env).handlers.auth).issue_service("e2e").token
    channel = f"alerts:sse-{uuid.uuid4().hex[:8]}"
    await page.goto("/")
    await page.evaluate(LISTEN, [f"/sse/{channel}?token={token}"])
    first = (await _count(page, "subscribed", 1))[0]
    assert "recovered" not in first["body"]
    for n in range(1, 4):
        await _publish(e2e_server, service, channel, n)
    await _count(page, "messages", 3)

    # The server ends the stream (Centrifugo's server API, a "reconnect" code): the browser
    # waits the stream's retry delay and reconnects by itself.
    async with aiohttp.ClientSession() as http:
        body = {"user": _user_id(token), "disconnect": {"code": 3001, "reason": "stream moved"}}
        async with http.post(
            f"{e2e_server.url}/api/disconnect", json=body, headers={"X-API-Key": service}
        ) as resp:
            assert resp.status == 200, await resp.text()
    (disconnect,) = await _count(page, "disconnects", 1)
    assert disconnect == {
        "type": "disconnect",
        "code": 3001,
        "reason": "stream moved",
        "reconnect": True,
    }
    for n in range(4, 7):  # published while the browser is away (retry: 2 s)
        await _publish(e2e_server, service, channel, n)
    second = (await _count(page, "subscribed", 2))[1]
    assert second["body"]["recovered"] is True  # it sent Last-Event-ID
    for n in range(7, 9):
        await _publish(e2e_server, service, channel, n)
    messages = await _count(page, "messages", 8)
    epoch = first["body"]["epoch"]
    assert [(m["id"], m["body"]["offset"], m["body"]["data"]) for m in messages] == [
        (f"{n}:{epoch}", n, {"n": n}) for n in range(1, 9)
    ]
    assert await page.evaluate("() => window.sse.opens") == 2
    await page.evaluate("() => window.sse.source.close()")


def _user_id(token: str) -> str:
    """The user id in an access token (its ``sub``)."""
    payload = token.split(".")[1]
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"])


async def test_the_documented_console_snippet_prints_publications(
    page: Page, e2e_server: Server
) -> None:
    """docs/clients.md's EventSource snippet, pasted as written (only the token filled in) into
    the page's console: it logs `offset:epoch` and the data of a publication made exactly as the
    document's curl line makes it."""
    doc = (ROOT / "docs" / "clients.md").read_text()
    section = doc[doc.index("## Server-Sent Events") :]
    snippet = section[
        section.index("```js\n") + 6 : section.index("```", section.index("```js\n") + 6)
    ]
    curl = re.search(r"curl -X POST \S+/api/v1/channels/(\S+)/publish.*?-d '(.*?)'", doc, re.DOTALL)
    assert curl, "no curl publish in docs/clients.md"
    channel, body = curl.group(1), orjson.loads(curl.group(2))
    assert f"/sse/{channel}?token=" in snippet
    token = await user_token(e2e_server, f"doc-{uuid.uuid4().hex[:8]}@example.com", "admin")
    service = TokenService(load_settings(e2e_server.env).handlers.auth).issue_service("e2e").token
    logged: list[list[Any]] = []

    async def on_console(message: ConsoleMessage) -> None:
        logged.append([await arg.json_value() for arg in message.args])

    page.on("console", on_console)
    await page.goto("/")
    # A fresh channel name keeps reruns apart; the snippet is otherwise run verbatim, the way
    # the console runs it (DevTools evaluation, which the page's CSP allows).
    fresh = f"{channel}-{uuid.uuid4().hex[:8]}"
    code = snippet.replace("<access token>", token).replace(f"/sse/{channel}?", f"/sse/{fresh}?")
    await page.evaluate(f"{{ {code} }}")
    await eventually(lambda: any(entry and entry[0] == "from" for entry in logged))
    start = next(entry[1] for entry in logged if entry and entry[0] == "from")
    await api(e2e_server, service, "POST", f"/api/v1/channels/{fresh}/publish", body)
    await eventually(lambda: [f"1:{start['epoch']}", body["data"]] in logged, what=str(logged))
