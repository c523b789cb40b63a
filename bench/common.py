"""Helpers shared by the benchmarks that start the real server as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess

import aiohttp


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
