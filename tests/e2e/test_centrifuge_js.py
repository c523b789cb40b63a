"""centrifuge-js's browser bundle in Chromium against ``/connection/websocket``.

The bundle comes from the npm package that ``tests/centrifuge_js`` installs (pinned there, never
copied into the repository) and is served to the page by Playwright. The page itself must be a
document of the real server: Chromium's Local Network Access checks block a WebSocket to a
loopback address from a page that Playwright fulfilled (it has no address, so it counts as
public) with ``net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS`` — the SDK then never connects.
So the test opens ``/health`` and loads the SDK with a ``<script src>`` on the same origin,
which the server's CSP (``default-src 'self'``) allows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import Page, Route, WebSocket

from server.settings import load_settings
from services.auth.tokens import TokenService
from tests import centrifuge_js
from tests.e2e.conftest import PAGE_TIMEOUT_MS, ConsoleLog, Server, _free_port
from tests.e2e.flows import api, user_token
from tests.helpers import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]

HARNESS = Path(__file__).with_name("centrifuge_harness.js")
PREFIX = "/__centrifuge_test__/"
#: While a node is down the browser logs the failed reconnects; that is expected.
DOWN_ERRORS = ("WebSocket connection to", "ERR_CONNECTION_REFUSED")


@pytest.fixture(scope="module")
def sdk_bundle() -> bytes:
    if centrifuge_js.NPM is None and not centrifuge_js.NODE_REQUIRED:
        pytest.skip("npm is not installed (CI requires it)")
    centrifuge_js.install()
    return centrifuge_js.BROWSER_BUNDLE.read_bytes()


@pytest.fixture
def second_node(e2e_server: Server, tmp_path: Path) -> Iterator[Server]:
    """Another ``arena-realtime serve`` on the same database and Redis (a second node)."""
    env = {**e2e_server.env, "PORT": str(_free_port())}
    node = Server(env, tmp_path / "node.log")
    node.start()
    try:
        yield node
    finally:
        node.stop()


class BrowserSDK:
    """The harness page: centrifuge-js clients in Chromium, their events and WebSocket frames."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self._seen: dict[str, int] = {}
        #: every WebSocket frame: ("sent" | "received", text)
        self.frames: list[tuple[str, str]] = []

    @classmethod
    async def open(cls, page: Page, origin: str, bundle: bytes) -> BrowserSDK:
        sdk = cls(page)
        harness = HARNESS.read_bytes()

        async def serve(route: Route) -> None:
            body = bundle if route.request.url.endswith("/centrifuge.js") else harness
            await route.fulfill(body=body, content_type="text/javascript")

        def watch(ws: WebSocket) -> None:
            ws.on("framesent", lambda text: sdk.frames.append(("sent", str(text))))
            ws.on("framereceived", lambda text: sdk.frames.append(("received", str(text))))

        page.on("websocket", watch)
        await page.route(f"**{PREFIX}*", serve)
        await page.goto(f"{origin}/health")
        await page.add_script_tag(url=f"{PREFIX}centrifuge.js")
        await page.add_script_tag(url=f"{PREFIX}harness.js")
        return sdk

    async def start(self, name: str, url: str, token: str) -> None:
        self._seen[name] = 0
        await self.page.evaluate("([n, u, t]) => window.sdk.start(n, u, t)", [name, url, token])

    async def call(self, name: str, op: str, **args: Any) -> dict[str, Any]:
        """``{"result": ...}`` or ``{"code": ..., "message": ...}`` of one SDK call."""
        outcome: dict[str, Any] = await self.page.evaluate(
            "([n, op, args]) => window.sdk.call(n, op, args)", [name, op, args]
        )
        return outcome

    async def next(self, name: str, event: str, **match: Any) -> dict[str, Any]:
        """The next event of client ``name`` called ``event`` with ``match``'s fields."""
        handle = await self.page.wait_for_function(
            "([from, m]) => window.sdk.find(from, m.event, m)",
            arg=[self._seen[name], {"name": name, "event": event, **match}],
            timeout=PAGE_TIMEOUT_MS,
        )
        found: dict[str, Any] = await handle.json_value()
        self._seen[name] = found["index"] + 1
        return found["event"]  # type: ignore[no-any-return]

    def commands(self, method: str) -> list[dict[str, Any]]:
        """Every command ``method`` the SDK sent (frames hold several, one a line)."""
        return [
            cmd[method]
            for kind, text in self.frames
            if kind == "sent"
            for line in text.split("\n")
            if line and method in (cmd := orjson.loads(line))
        ]

    def replies(self, method: str) -> list[dict[str, Any]]:
        return [
            reply[method]
            for kind, text in self.frames
            if kind == "received"
            for line in text.split("\n")
            if line and method in (reply := orjson.loads(line))
        ]


def _ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/connection/websocket"


def _service_token(server: Server, ttl: int = 3600) -> str:
    return TokenService(load_settings(server.env).handlers.auth).issue_service("e2e", ttl).token


async def _publish(server: Server, channel: str, data: Any) -> int:
    body = await api(
        server,
        _service_token(server),
        "POST",
        f"/api/v1/channels/{channel}/publish",
        {"data": data},
    )
    return int(body["offset"])


async def test_centrifuge_js_in_chromium_recovers_what_it_missed_while_its_node_was_down(
    page: Page, e2e_server: Server, second_node: Server, sdk_bundle: bytes, console: ConsoleLog
) -> None:
    console.allowed.extend(DOWN_ERRORS)
    sdk = await BrowserSDK.open(page, second_node.url, sdk_bundle)
    token = await user_token(e2e_server, f"admin-{uuid.uuid4().hex[:8]}@example.com", "admin")
    channel = f"alerts:browser-{uuid.uuid4().hex[:8]}"
    await sdk.start("a", _ws_url(second_node), token)
    await sdk.next("a", "connected")
    await sdk.call("a", "subscribe", channel=channel)
    first = await sdk.next("a", "subscribed", channel=channel)
    assert (first["recoverable"], first["wasRecovering"]) == (True, False)
    # Publications through the REST API of the *other* node reach this one through Redis.
    for i in range(3):
        assert await _publish(e2e_server, channel, {"i": i}) == i + 1
    for i in range(3):
        pub = await sdk.next("a", "publication", channel=channel)
        assert (pub["offset"], pub["data"]) == (i + 1, {"i": i})

    # The node goes away (it closes the socket with 3001 shutdown); five publications are made
    # while the browser cannot reach it; the node comes back and the SDK reconnects.
    await asyncio.to_thread(second_node.stop)
    assert (await sdk.next("a", "connecting"))["code"] == 3001
    for i in range(3, 8):
        await _publish(e2e_server, channel, {"i": i})
    await asyncio.to_thread(second_node.start)
    again = await sdk.next("a", "subscribed", channel=channel)
    assert (again["wasRecovering"], again["recovered"]) == (True, True)
    for i in range(3, 8):
        pub = await sdk.next("a", "publication", channel=channel)
        assert (pub["offset"], pub["data"]) == (i + 1, {"i": i})
    # On the wire: the SDK asked to recover from offset 3 of the stream's epoch and got the
    # five missed publications in the subscribe reply.
    recover = sdk.commands("subscribe")[-1]
    assert recover["recover"] is True
    assert (recover["offset"], recover["epoch"]) == (3, first["streamPosition"]["epoch"])
    reply = sdk.replies("subscribe")[-1]
    assert [p["offset"] for p in reply["publications"]] == [4, 5, 6, 7, 8]
    assert (reply["was_recovering"], reply["recovered"]) == (True, True)
    # Live again.
    await _publish(e2e_server, channel, {"i": 8})
    assert (await sdk.next("a", "publication", channel=channel))["offset"] == 9


async def test_centrifuge_js_in_chromium_presence_refresh_and_errors(
    page: Page, e2e_server: Server, sdk_bundle: bytes
) -> None:
    sdk = await BrowserSDK.open(page, e2e_server.url, sdk_bundle)
    email = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
    buyer = await user_token(e2e_server, email, "buyer")
    request = await api(
        e2e_server, buyer, "POST", "/api/v1/requests", {"title": "SDK"}, expect_status=201
    )
    channel = f"proposals:{request['id']}"
    url = _ws_url(e2e_server)

    await sdk.start("buyer", url, buyer)
    connected = await sdk.next("buyer", "connected")
    await sdk.call("buyer", "subscribe", channel=channel)
    await sdk.next("buyer", "subscribed", channel=channel)
    # Presence is registered right after the subscribe reply: ask until it shows.
    deadline = time.monotonic() + 20
    while True:
        presence = (await sdk.call("buyer", "presence", channel=channel))["result"]["clients"]
        if presence or time.monotonic() > deadline:
            break
    assert list(presence) == [connected["client"]]
    assert presence[connected["client"]]["connInfo"] == {"role": "buyer"}
    stats = (await sdk.call("buyer", "presenceStats", channel=channel))["result"]
    assert (stats["numClients"], stats["numUsers"]) == (1, 1)

    # Another user joins: the buyer's subscription sees the join.
    admin = await user_token(e2e_server, f"admin-{uuid.uuid4().hex[:8]}@example.com", "admin")
    await sdk.start("admin", url, admin)
    await sdk.call("admin", "subscribe", channel=channel)
    await sdk.next("admin", "subscribed", channel=channel)
    buyer_id = presence[connected["client"]]["user"]
    await sdk.next("buyer", "join", channel=channel, user=buyer_id)  # its own, first
    join = await sdk.next("buyer", "join", channel=channel)
    assert join["user"] != buyer_id
    stats = (await sdk.call("buyer", "presenceStats", channel=channel))["result"]
    assert (stats["numClients"], stats["numUsers"]) == (2, 2)
    await sdk.call("admin", "disconnect")
    assert (await sdk.next("buyer", "leave", channel=channel))["user"] == join["user"]

    # A channel the buyer may not read: the SDK's subscription ends with Centrifugo's 103.
    other = "alerts:00000000-0000-0000-0000-000000000000"
    await sdk.call("buyer", "subscribe", channel=other)
    assert (await sdk.next("buyer", "unsubscribed", channel=other))["code"] == 103
    # Presence where the namespace keeps none (the buyer's own channel): 108 not available.
    own = f"user:{buyer_id}"
    assert (await sdk.call("buyer", "presenceStats", channel=own))["code"] == 108
    # Client publications are refused (only trusted backends publish over HTTP): 103.
    outcome = await sdk.call("buyer", "subPublish", channel=channel, data={"x": 1})
    assert outcome["code"] == 103
    # Still connected through all of it, on the first connection.
    events = await page.evaluate("window.sdk.events.filter((e) => e.name === 'buyer')")
    assert [e["event"] for e in events if e["event"] in {"connected", "disconnected"}] == [
        "connected"
    ]


async def test_centrifuge_js_in_chromium_refreshes_its_token_through_get_token(
    page: Page, e2e_server: Server, sdk_bundle: bytes
) -> None:
    sdk = await BrowserSDK.open(page, e2e_server.url, sdk_bundle)
    short = TokenService(load_settings(e2e_server.env).handlers.auth).issue_service("e2e", 10)
    channel = f"alerts:refresh-{uuid.uuid4().hex[:8]}"
    await sdk.start("s", _ws_url(e2e_server), short.token)
    await sdk.next("s", "connected")
    await sdk.call("s", "subscribe", channel=channel)
    await sdk.next("s", "subscribed", channel=channel)
    # The connect reply said the token expires: before it does, the SDK calls getToken ...
    await sdk.next("s", "getToken")
    await sdk.call("s", "token", token=_service_token(e2e_server))
    # ... and sends it in a refresh command on the same connection.
    await eventually(lambda: bool(sdk.replies("refresh")), what="a refresh reply")
    assert sdk.replies("refresh")[0]["expires"] is True
    # Past the first token's expiry, still connected and receiving.
    while time.time() < short.expires_at + 2.5:
        offset = await _publish(e2e_server, channel, {"t": 1})
        assert (await sdk.next("s", "publication", channel=channel))["offset"] == offset
    assert len([text for kind, text in sdk.frames if kind == "sent" and '"connect"' in text]) == 1
