"""Login timing: does ``POST /api/v1/auth/login`` take as long for a known address as for an
unknown one? (It should: both paths store a link and queue a mail.)

Runs the real app in-process against ``DATABASE_URL`` (a scratch database is created and
dropped on the server of ``BENCH_DATABASE_URL``, default the test server)::

    .venv/bin/python -m bench.login_timing [--rounds 300]

Prints median and p90 per path and their difference. Requests alternate known/unknown so that
drift (cache warm-up, autovacuum) hits both equally.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from bench.common import DATABASE_URL
from handlers import keys
from server.app import create_app
from server.settings import load_settings

SECRET = secrets.token_urlsafe(48)


def _url(base: str, name: str) -> str:
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}"


async def _measure(client: TestClient, email: str) -> float:
    started = time.perf_counter()
    resp = await client.post("/api/v1/auth/login", json={"email": email})
    await resp.read()
    elapsed = time.perf_counter() - started
    assert resp.status == 202, resp.status
    return elapsed * 1000


async def main(rounds: int) -> None:
    admin_url = DATABASE_URL
    name = f"arena_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {
            "DATABASE_URL": _url(admin_url, name),
            "DATA_DIR": tempfile.mkdtemp(prefix="arena-bench-"),
            "JWT_SECRET": SECRET,
            "SERVICE_SECRET": SECRET,
            "LOG_LEVEL": "ERROR",
            "LOGIN_RATE_PER_IP": "1000000",
            "LOGIN_RATE_PER_EMAIL": "1000000",
        }
        client = TestClient(TestServer(create_app(load_settings(env))))
        await client.start_server()
        try:
            known = "known@example.com"
            async with client.server.app[keys.pool].acquire() as conn:
                await conn.execute("INSERT INTO users (email) VALUES ($1)", known)
            for _ in range(20):  # warm-up
                await _measure(client, known)
                await _measure(client, f"warm-{uuid.uuid4().hex[:8]}@example.com")
            times: dict[str, list[float]] = {"known": [], "unknown": []}
            for _ in range(rounds):
                times["known"].append(await _measure(client, known))
                unknown = f"u-{uuid.uuid4().hex[:10]}@example.com"
                times["unknown"].append(await _measure(client, unknown))
        finally:
            await client.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        Path(env["DATA_DIR"]).joinpath("secrets.json").unlink(missing_ok=True)
    print(f"rounds per path: {rounds}")
    for path, values in times.items():
        values.sort()
        p90 = values[int(len(values) * 0.9)]
        print(f"{path:8s} median {statistics.median(values):6.2f} ms   p90 {p90:6.2f} ms")
    diff = statistics.median(times["known"]) - statistics.median(times["unknown"])
    print(f"median difference (known - unknown): {diff:+.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    asyncio.run(main(parser.parse_args().rounds))
