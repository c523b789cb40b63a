"""Running the real ``arena-realtime`` command in tests: a clean environment, a free port, and a
service process whose stderr goes to a file."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import TEST_SECRET, TEST_SERVICE_SECRET
from tests.helpers import DEADLINE

STARTUP_DEADLINE = 90.0  # generous: the first embedded start runs initdb


def command() -> list[str]:
    script = Path(sys.executable).with_name("arena-realtime")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_env(data_dir: Path, **values: str) -> dict[str, str]:
    """A clean environment: nothing from the caller's settings leaks in."""
    env = {
        name: os.environ[name]
        for name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
        if name in os.environ
    }
    env.update(
        DATA_DIR=str(data_dir),
        JWT_SECRET=TEST_SECRET,
        SERVICE_SECRET=TEST_SERVICE_SECRET,
        LOG_LEVEL="INFO",
        HOST="127.0.0.1",
        # /ready checks answer slowly on a loaded machine; 503 there is not what is tested.
        READY_TIMEOUT=str(DEADLINE),
    )
    env.update(values)
    return env


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*command(), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


class Service:
    """One ``arena-realtime serve`` process; stderr goes to a file to avoid pipe stalls."""

    def __init__(self, env: dict[str, str], folder: Path, *args: str) -> None:
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self._stderr_path = folder / f"stderr-{self.port}.log"
        self._stderr = self._stderr_path.open("wb")
        self.process = subprocess.Popen(
            [*command(), "serve", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text()

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"service exited with {self.process.returncode}:\n{self.stderr}")
            try:
                async with session.get(f"{self.url}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        pytest.fail(f"service did not start:\n{self.stderr}")

    async def wait_exit(self) -> int:
        code = await asyncio.to_thread(self.process.wait, 60)
        self._stderr.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._stderr.close()
