"""The JavaScript client (``/static/arena-realtime.js``) run by Node against the real server:
it reconnects after the server drops it and recovers every publication it missed, in order."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from handlers import keys
from handlers.static_files import STATIC_DIR
from services.realtime.errors import Disconnect
from tests.helpers import make_user

NODE = shutil.which("node")
PROBE = Path(__file__).with_name("client_probe.mjs")
#: Seconds to wait for the Node.js probe: starting Node on a loaded machine takes a while.
NODE_DEADLINE = 30.0

pytestmark = pytest.mark.skipif(
    NODE is None and os.environ.get("CI", "").lower() != "true",
    reason="Node.js is not installed (CI requires it)",
)


class Probe:
    """The Node process and the JSON events it prints."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            event = orjson.loads(line)
            self.events.append(event)
            await self.queue.put(event)

    async def next(self, kind: str) -> dict[str, Any]:
        while True:
            event = await asyncio.wait_for(self.queue.get(), NODE_DEADLINE)
            if event["event"] == kind:
                return event


async def test_js_client_recovers_after_server_drop(client: Any) -> None:
    assert NODE is not None, "CI requires Node.js for the JavaScript client test"
    _, token = await make_user(client, "admin")
    app = client.server.app
    hub, registry = app[keys.hub], app[keys.connections]
    channel = "alerts:js"
    proc = await asyncio.create_subprocess_exec(
        NODE,
        "--experimental-websocket",
        "--no-warnings",
        str(PROBE),
        (STATIC_DIR / "arena-realtime.js").as_uri(),
        f"ws://{client.host}:{client.port}/ws",
        token,
        channel,
        "30",
        stdout=asyncio.subprocess.PIPE,
    )
    probe = Probe(proc)
    try:
        first = await probe.next("subscribed")
        assert first["recovering"] is False
        for i in range(10):
            await hub.publish(channel, {"i": i})
        assert (await probe.next("pub"))["offset"] == 1
        # Drop the connection (as a node shutting down does) and publish while it is away.
        registry.close_all(Disconnect.SHUTDOWN, "test drop")
        registry.accepting = True
        for i in range(10, 20):
            await hub.publish(channel, {"i": i})
        again = await probe.next("subscribed")
        assert again["recovering"] is True
        for i in range(20, 30):
            await hub.publish(channel, {"i": i})
        assert await asyncio.wait_for(proc.wait(), NODE_DEADLINE) == 0
        await probe.reader
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    pubs = [event for event in probe.events if event["event"] == "pub"]
    assert [p["offset"] for p in pubs] == list(range(1, 31))
    assert [p["data"]["i"] for p in pubs] == list(range(30))
    states = [event["state"] for event in probe.events if event["event"] == "state"]
    assert "reconnecting" in states
    recoveries = [event for event in probe.events if event["event"] == "recovery"]
    assert recoveries, "the client must report its recovery"
    assert all(event["recovered"] for event in recoveries)
