"""Browser tests: the real service as a subprocess, driven by headless Chromium.

One server for the package's tests (``arena-realtime serve`` on a free loopback port) with its own
PostgreSQL database (copied from the migrated template), the Redis broker under a private key
prefix, the console e-mail backend (magic links are read from its log) and the offline
analyser. Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright; screenshots go to
``tests/e2e/artifacts/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from tests.conftest import (
    CI,
    TEST_SECRET,
    TEST_SERVICE_SECRET,
    delete_redis_keys,
    with_database,
)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Offline analyser speed: slow enough that a test can reload the page mid-stream.
ANALYSIS_TPS = "30"
#: Milliseconds Playwright waits for a page action or an ``expect`` to come true. Its defaults
#: (30 s for actions, 5 s for ``expect``) are not enough on a loaded machine for the latter;
#: waiting longer costs time only when the test fails.
PAGE_TIMEOUT_MS = 30_000
expect.set_options(timeout=PAGE_TIMEOUT_MS)
_LINK_RE = re.compile(r"(https?://\S+/login#token=[A-Za-z0-9_\-]+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """``arena-realtime serve`` in a subprocess; can be stopped and started on the same port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "arena-realtime"), "serve"],
                env=self.env,
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"server exited: {self.log_tail()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "server did not start listening"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def magic_link(self, email: str, after: int = 0, timeout: float = 30) -> str:
        """The newest sign-in link mailed to ``email`` (console backend) among the log lines
        from byte ``after`` on."""
        deadline = time.monotonic() + timeout
        while True:
            with self.log_path.open("rb") as log:
                log.seek(after)
                lines = log.read().splitlines()
            for line in reversed(lines):
                with contextlib.suppress(orjson.JSONDecodeError):
                    entry = orjson.loads(line)
                    if isinstance(entry, dict) and entry.get("to") == email:
                        found = _LINK_RE.search(str(entry.get("body", "")))
                        if found:
                            return found.group(1)
            assert time.monotonic() < deadline, f"no sign-in link for {email}: {self.log_tail()}"
            time.sleep(0.05)

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def cli(self, *args: str) -> str:
        """Run the CLI against this server's database; its last output line."""
        done = subprocess.run(
            [str(BIN / "arena-realtime"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]


async def _create_database(admin_url: str, name: str, template: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()


async def _drop_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the Chromium binary (Debian package ``chromium``)."""
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="package")
def e2e_server(
    chromium: str, pg_admin_url: str, pg_template: str, redis_url: str, tmp_path_factory: Any
) -> Iterator[Server]:
    """One running service for the browser tests (every test uses its own users); stopped
    when the package's tests are done, so the rest of the suite does not carry it."""
    name = f"arena_e2e_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_database(pg_admin_url, name, pg_template))
    prefix = f"e2e-{uuid.uuid4().hex[:12]}"
    folder = tmp_path_factory.mktemp("e2e")
    port = _free_port()
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env.update(
        ENV="development",
        HOST="127.0.0.1",
        PORT=str(port),
        DATABASE_URL=with_database(pg_admin_url, name),
        REDIS_URL=redis_url,
        REDIS_PREFIX=prefix,
        DATA_DIR=str(folder / "data"),
        JWT_SECRET=TEST_SECRET,
        SERVICE_SECRET=TEST_SERVICE_SECRET,
        LOG_LEVEL="INFO",  # the console e-mail backend logs magic links at INFO
        EMAIL_BACKEND="console",
        ANALYSIS_OFFLINE_TPS=ANALYSIS_TPS,
        LOGIN_RATE_PER_IP="1000",
        SHUTDOWN_TIMEOUT="2",
    )
    env.pop("ANTHROPIC_API_KEY", None)
    server = Server(env, folder / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        asyncio.run(_drop_database(pg_admin_url, name))
        delete_redis_keys(redis_url, prefix)


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """One headless Chromium for these tests; each test gets its own context."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class ConsoleLog:
    """Errors the page reported (console errors, uncaught exceptions, CSP violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[str] = []

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def on_page_error(self, error: Exception) -> None:
        self.errors.append(f"uncaught: {error}")

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(part in e for part in self.allowed)]


@pytest.fixture
def console() -> ConsoleLog:
    return ConsoleLog()


@pytest_asyncio.fixture(loop_scope="package")
async def page(browser: Browser, e2e_server: Server, console: ConsoleLog) -> AsyncIterator[Page]:
    """A fresh browser context (its own storage) on the dashboard's origin. The test fails if
    the page logged an error it did not expect (a CSP violation would be one)."""
    context = await browser.new_context(
        base_url=e2e_server.url, viewport={"width": 1200, "height": 820}
    )
    opened = await context.new_page()
    opened.on("console", console.on_console)
    opened.on("pageerror", console.on_page_error)
    opened.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield opened
    finally:
        await context.close()
    assert console.unexpected() == [], console.errors


def screenshot_path(name: str) -> Path:
    """Where a view's screenshot goes (``tests/e2e/artifacts/``, git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / f"{name}.png"


def copy_to_docs(path: Path) -> None:
    """Refresh ``docs/dashboard.png`` from a screenshot (set ``UPDATE_DOCS_SCREENSHOT=1``)."""
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(path, ROOT / "docs" / "dashboard.png")
