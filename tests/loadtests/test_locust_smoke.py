"""A short headless Locust run against a real server on loopback (PostgreSQL + Redis).

Starts ``arena-realtime serve`` as a subprocess with the Redis broker, mints tokens with the
CLI, runs ``loadtests/locustfile.py`` for 15 s with a few dozen users of every kind and fails
on any failed request or lost publication.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from tests.conftest import TEST_SECRET, TEST_SERVICE_SECRET

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
USERS = 30
RUN_TIME = "15s"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_env(database_url: str, redis_url: str, redis_prefix: str, data: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    env.update(
        ENV="development",
        HOST="127.0.0.1",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        DATA_DIR=str(data),
        JWT_SECRET=TEST_SECRET,
        SERVICE_SECRET=TEST_SERVICE_SECRET,
        LOG_LEVEL="WARNING",
        # Every Locust user shares one account and one client IP: lift the per-user and
        # per-IP budgets that would otherwise (correctly) throttle the run.
        WS_MAX_CONNECTIONS_PER_USER="1000",
        WS_USER_COMMAND_RATE="10000",
        WS_USER_COMMAND_BURST="10000",
        WEBHOOK_RATE_PER_IP="100000",
    )
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "arena-realtime"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def server(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """A running server; yields its URL and the environment it was started with."""
    env = _server_env(database_url, redis_url, redis_prefix, tmp_path / "data")
    env["PORT"] = str(_free_port())
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "arena-realtime"), "serve"], env=env, stdout=log, stderr=log, cwd=ROOT
        )
    url = f"http://127.0.0.1:{env['PORT']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"server exited: {log_path.read_text()[-3000:]}"
            try:
                socket.create_connection(("127.0.0.1", int(env["PORT"])), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start listening"
                time.sleep(0.1)
        yield url, env
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _stats(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as rows:
        return {f"{row['Type']} {row['Name']}".strip(): row for row in csv.DictReader(rows)}


def _locust_args(url: str, tmp_path: Path, users: int, run_time: str) -> list[str]:
    return [
        str(BIN / "locust"),
        "-f",
        str(ROOT / "loadtests" / "locustfile.py"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        run_time,
        "--stop-timeout",
        "5",
        "--host",
        url,
        "--csv",
        str(tmp_path / "lt"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]


def _base_env() -> dict[str, str]:
    return {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}


@pytest.mark.slow
async def test_locust_smoke_run_has_no_failures_and_no_lost_publications(
    server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = server
    token = _cli(env, "token", "--email", "locust@example.com", "--role", "admin")
    service_token = _cli(env, "service-token", "--name", "locust")
    summary_path = tmp_path / "summary.json"
    locust_env = _base_env()
    locust_env.update(
        ARENA_TOKEN=token,
        ARENA_SERVICE_TOKEN=service_token,
        LT_SUMMARY_FILE=str(summary_path),
        LT_SUBSCRIBER_WEIGHT="6",
        LT_PUBLISHER_WEIGHT="2",
        LT_WEBHOOK_WEIGHT="1",
        LT_API_WEIGHT="1",
        LT_PUBLISH_RATE="5",
        LT_WEBHOOK_RATE="2",
        LT_API_RATE="1",
    )
    args = _locust_args(url, tmp_path, USERS, RUN_TIME)
    done = await asyncio.to_thread(
        subprocess.run,
        args,
        env=locust_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    output = f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output

    summary = json.loads(summary_path.read_text())
    assert summary["lost"] == 0, summary
    assert summary["gaps"] == 0, summary
    assert summary["received"] > 0, summary
    assert summary["subscribers"] >= USERS // 2, summary

    stats = _stats(tmp_path / "lt_stats.csv")
    assert int(stats["Aggregated"]["Failure Count"]) == 0, output
    for name in (
        "WS publish->receive",
        "WS subscribe",
        "POST /api/v1/channels/[channel]/publish",
        "POST /webhooks/tv/[secret]",
        "POST /webhooks/alerts/[strategy_id]",
        "POST /api/v1/requests",
        "PUT /api/v1/proposals/[id]/status",
    ):
        assert name in stats, f"{name} missing from {sorted(stats)}"
        assert int(stats[name]["Request Count"]) > 0, stats[name]


def _lossy_app(drop_every: int) -> web.Application:
    """A server speaking the subset of the protocol Locust uses that never sends an offset that
    is a multiple of ``drop_every``: every subscriber that sees a few publications sees a hole,
    however slowly a loaded machine runs the publishers (a single dropped offset might never be
    reached, or fall before the subscriber joined)."""
    subscribers: dict[str, list[web.WebSocketResponse]] = {}
    offsets: dict[str, int] = {}

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            cmd = json.loads(msg.data)
            result: dict[str, object] = {}
            if cmd["type"] == "subscribe":
                subscribers.setdefault(cmd["channel"], []).append(ws)
                result = {"channel": cmd["channel"], "offset": offsets.get(cmd["channel"], 0)}
            await ws.send_json({"type": "reply", "id": cmd["id"], "result": result})
        return ws

    async def publish(request: web.Request) -> web.Response:
        channel = request.match_info["channel"]
        offset = offsets[channel] = offsets.get(channel, 0) + 1
        data = (await request.json())["data"]
        if offset % drop_every:
            for ws in subscribers.get(channel, []):
                if not ws.closed:
                    await ws.send_json(
                        {"type": "pub", "channel": channel, "offset": offset, "data": data}
                    )
        return web.json_response({"channel": channel, "offset": offset})

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/api/v1/channels/{channel}/publish", publish)
    return app


async def test_locust_run_fails_when_a_publication_is_lost(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    server = await aiohttp_server(_lossy_app(drop_every=3))
    summary_path = tmp_path / "summary.json"
    env = _base_env()
    env.update(
        ARENA_TOKEN="any",
        ARENA_SERVICE_TOKEN="any",
        LT_SUMMARY_FILE=str(summary_path),
        LT_CHANNELS="1",
        LT_CHANNELS_PER_SUBSCRIBER="1",
        LT_SUBSCRIBER_WEIGHT="1",
        LT_PUBLISHER_WEIGHT="1",
        LT_PUBLISH_RATE="10",
    )
    args = [
        *_locust_args(str(server.make_url("")).rstrip("/"), tmp_path, 4, "4s"),
        "WebSocketSubscriber",
        "ChannelPublisher",
    ]
    done = await asyncio.to_thread(
        subprocess.run,
        args,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["lost"] > 0, summary
    assert summary["received"] > 0, summary
    stats = _stats(tmp_path / "lt_stats.csv")
    assert int(stats["WS lost"]["Failure Count"]) > 0
