"""centrifuge-js, the Centrifugo JavaScript SDK (pinned in package.json), run by Node against the
real server's ``/connection/websocket``."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).parent
NODE = shutil.which("node")
NPM = shutil.which("npm")
DRIVER = HERE / "driver.mjs"
NODE_MODULES = HERE / "node_modules"
#: the SDK's browser bundle (served to Chromium by the e2e test, never copied into the repo)
BROWSER_BUNDLE = NODE_MODULES / "centrifuge" / "dist" / "centrifuge.js"

NODE_REQUIRED = os.environ.get("CI", "").lower() == "true"


def install() -> None:
    """``npm ci`` (exact versions from package-lock.json) when node_modules is missing."""
    if (NODE_MODULES / "centrifuge" / "package.json").exists():
        return
    assert NPM is not None, "npm is needed to install centrifuge-js"
    subprocess.run(
        [NPM, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=HERE,
        check=True,
        timeout=300,
    )


class Driver:
    """One Node process running centrifuge-js: send it commands, read its JSON events."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._seen = 0
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str, token: str) -> Driver:
        assert NODE is not None
        proc = await asyncio.create_subprocess_exec(
            NODE,
            "--experimental-websocket",
            "--no-warnings",
            str(DRIVER),
            url,
            token,
            cwd=HERE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.events.append(orjson.loads(line))
            self._changed.set()

    def send(self, op: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps({"op": op, **fields}) + b"\n")

    async def next(self, event: str, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        """The next event named ``event`` (with ``match``'s fields) after the last one returned."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self._seen < len(self.events):
                item = self.events[self._seen]
                self._seen += 1
                if item["event"] == event and all(item.get(k) == v for k, v in match.items()):
                    return item
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {event!r} event; got {self.events[-10:]}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
