"""Helpers shared by the benchmarks: where the services and the results are, the machine's
description, and starting the real server as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
#: admin URL of the PostgreSQL server the benchmarks create (and drop) their databases on
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
#: the Redis server of the Redis-broker cases
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def machine() -> dict[str, Any]:
    """What a result was measured on (the load average is added by each benchmark)."""
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def save_json(prefix: str, data: dict[str, Any], out: Path = RESULTS) -> Path:
    """Write ``data`` to ``out/<prefix>-<UTC date and time>.json``; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{prefix}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_ready(base_url: str, process: subprocess.Popen[bytes]) -> None:
    """Wait (30 s at most) until the server at ``base_url`` answers ``/ready`` with 200;
    fail early if ``process`` exits."""
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError("server exited during startup")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base_url}/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not become ready")
