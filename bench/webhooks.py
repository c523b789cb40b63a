"""Webhook ingestion benchmark: sustained accepted webhooks/s with durable writes, and
webhook-to-subscriber latency.

One command, loopback only, bounded (about a minute with the defaults)::

    .venv/bin/python -m bench.webhooks
    .venv/bin/python -m bench.webhooks --count 1000 --rate 50 --seconds 5   # quick check
    .venv/bin/python -m bench.webhooks --redis redis://127.0.0.1:6379/0      # Redis broker
    .venv/bin/python -m bench.webhooks --server-root /tmp/base   # A/B: a baseline's server

It starts the real server (``python -m server.cli serve``, memory broker unless ``--redis``,
uvloop) on a fresh PostgreSQL database, creates a user and a strategy over the REST API,
subscribes one WebSocket client to ``alerts:{strategy}``, then runs three phases from one
client process:

* ``signed``: ``--count`` Standard Webhooks messages (unique ids, valid signatures) sent by
  ``--concurrency`` concurrent senders as fast as the server acknowledges them;
* ``tradingview``: the same with unique TradingView JSON bodies on the URL-secret endpoint;
* ``latency``: signed messages at a fixed ``--rate`` for ``--seconds``; for each, the time from
  starting the POST to the subscriber receiving the publication (through PostgreSQL commit,
  the transactional outbox, the relay and the hub), and the time to the 2xx.

Every 2xx means the alert was committed; each phase also checks that every acknowledged alert
reached the subscriber exactly once and that the database holds exactly that many alerts.
Writes ``bench/results/webhooks-<UTC date-time>.json`` and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench.common import DATABASE_URL, ROOT, free_port, save_json, wait_ready
from server.settings import load_settings
from services.alerts.signatures import sign
from storage import users

JWT_SECRET = "bench-jwt-secret-that-is-long-enough-0123456789abcdef"  # noqa: S105
SERVICE_SECRET = "bench-service-secret-that-is-long-enough-0123456789"  # noqa: S105


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(ordered[-1] * 1000, 2)}


@contextlib.asynccontextmanager
async def bench_database(admin_url: str) -> AsyncIterator[str]:
    name = f"arena_bench_webhooks_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base, _, _ = admin_url.rpartition("/")
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def server_env(database_url: str, port: int, redis_url: str | None) -> dict[str, str]:
    broker = {"REDIS_URL": redis_url, "REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"}
    return {
        **(broker if redis_url else {}),
        **os.environ,
        "ENV": "development",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "JWT_SECRET": JWT_SECRET,
        "SERVICE_SECRET": SERVICE_SECRET,
        "LOG_LEVEL": "WARNING",
        "UVLOOP": "true",
        # Every request comes from 127.0.0.1: the per-IP limit would measure itself.
        "WEBHOOK_RATE_PER_IP": "100000000",
        "WS_MAX_UNAUTHENTICATED_PER_IP": "100000",
    }


async def user_token(database_url: str, env: dict[str, str]) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        owner = await users.get_or_create(conn, f"bench-{uuid.uuid4().hex[:6]}@example.com")
    finally:
        await conn.close()
    from services.auth.tokens import TokenService

    tokens = TokenService(load_settings(env).handlers.auth)
    return tokens.issue_access(str(owner.id), owner.role, owner.email).token


class Subscriber:
    """One WebSocket client on the feed; records when each alert's message arrives."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.duplicates = 0
        self._task: asyncio.Task[None] | None = None

    async def start(
        self, session: aiohttp.ClientSession, url: str, token: str, channel: str
    ) -> None:
        ws = await session.ws_connect(url)
        await ws.send_str(orjson.dumps({"id": 1, "type": "authenticate", "token": token}).decode())
        await ws.send_str(orjson.dumps({"id": 2, "type": "subscribe", "channel": channel}).decode())
        while True:
            reply = orjson.loads((await ws.receive()).data)
            if reply.get("id") == 2:
                assert "result" in reply, reply
                break
        self._task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            now = time.perf_counter()
            data = orjson.loads(msg.data)
            if data.get("type") != "pub":
                continue
            key = data["data"]["alert"]["message"]
            if key in self.arrivals:
                self.duplicates += 1
            else:
                self.arrivals[key] = now

    async def wait_for(self, keys: set[str], timeout: float = 60.0) -> float:
        """Seconds until every key has arrived (or the timeout passed)."""
        started = time.perf_counter()
        while not keys <= self.arrivals.keys():
            if time.perf_counter() - started > timeout:
                break
            await asyncio.sleep(0.01)
        return time.perf_counter() - started


def signed_request(
    base: str, strategy: dict[str, Any], key: str
) -> tuple[str, bytes, dict[str, str]]:
    body = orjson.dumps({"ticker": "BENCH", "action": "buy", "quantity": 1, "message": key})
    msg_id = f"msg_{uuid.uuid4().hex}"
    now = int(time.time())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(now),
        "webhook-signature": sign(strategy["secrets"]["signing_secret"], msg_id, now, body),
        "Content-Type": "application/json",
    }
    return f"{base}/webhooks/alerts/{strategy['id']}", body, headers


def tv_request(base: str, strategy: dict[str, Any], key: str) -> tuple[str, bytes, dict[str, str]]:
    body = orjson.dumps({"ticker": "BENCH", "action": "sell", "quantity": 2, "message": key})
    url = f"{base}/webhooks/tv/{strategy['secrets']['url_secret']}"
    return url, body, {"Content-Type": "application/json"}


async def post(
    session: aiohttp.ClientSession, request: tuple[str, bytes, dict[str, str]]
) -> tuple[int, float]:
    url, body, headers = request
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as resp:
        await resp.read()
        return resp.status, started


async def burst(
    session: aiohttp.ClientSession,
    subscriber: Subscriber,
    make: Any,
    count: int,
    concurrency: int,
    phase: str,
    server_pid: int,
) -> dict[str, Any]:
    """``count`` webhooks by ``concurrency`` senders; accepted/s and ack latency."""
    keys = [f"{phase}:{n}" for n in range(count)]
    queue = iter(keys)
    statuses: dict[int, int] = {}
    acks: list[float] = []
    accepted: set[str] = set()

    async def sender() -> None:
        for key in queue:
            status, started = await post(session, make(key))
            acks.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if 200 <= status < 300:
                accepted.add(key)

    cpu_before = cpu_seconds(server_pid)
    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    drain = await subscriber.wait_for(accepted)
    cpu = cpu_seconds(server_pid) - cpu_before
    return {
        "count": count,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "accepted_per_second": round(len(accepted) / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "ack_ms": percentiles(acks),
        "delivered": len(accepted & subscriber.arrivals.keys()),
        "drain_after_last_ack_s": round(drain, 3),
        # Load-independent cost: server process CPU per accepted webhook (PostgreSQL's own
        # CPU not included).
        "server_cpu_ms_per_webhook": round(cpu * 1000 / max(1, len(accepted)), 3),
    }


async def steady(
    session: aiohttp.ClientSession,
    subscriber: Subscriber,
    make: Any,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """Webhooks at a fixed rate; webhook-to-subscriber and ack latency."""
    total = int(rate * seconds)
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}
    acks: list[float] = []
    statuses: dict[int, int] = {}

    async def one(key: str) -> None:
        status, started = await post(session, make(key))
        sent[key] = started
        acked[key] = time.perf_counter()
        acks.append(acked[key] - started)
        statuses[status] = statuses.get(status, 0) + 1

    tasks = []
    origin = time.perf_counter()
    for n in range(total):
        delay = origin + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(f"latency:{n}")))
    await asyncio.gather(*tasks)
    await subscriber.wait_for(set(sent))
    latencies = [subscriber.arrivals[k] - t for k, t in sent.items() if k in subscriber.arrivals]
    return {
        "rate": rate,
        "seconds": seconds,
        "sent": total,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "webhook_to_subscriber_ms": percentiles(latencies),
        "ack_ms": percentiles(acks),
        # From the sender having its 2xx to the subscriber having the publication (negative:
        # the publication came first); the part of the latency after the commit.
        "ack_to_subscriber_ms": percentiles(
            [subscriber.arrivals[k] - t for k, t in acked.items() if k in subscriber.arrivals]
        ),
        "delivered": len(latencies),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with bench_database(args.database) as database_url:
        env = server_env(database_url, port, args.redis)
        server_root = Path(args.server_root).resolve() if args.server_root else ROOT
        if args.server_root:
            env["PYTHONPATH"] = str(server_root)
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"], env=env, cwd=server_root
        )
        try:
            await wait_ready(base, process)
            token = await user_token(database_url, env)
            connector = aiohttp.TCPConnector(limit=args.concurrency + 8)
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.post(
                    f"{base}/api/v1/strategies",
                    json={"name": "bench"},
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp:
                    strategy = await resp.json()
                    assert resp.status == 201, strategy
                subscriber = Subscriber()
                await subscriber.start(session, f"{base}/ws", token, strategy["channel"])
                results: dict[str, Any] = {}
                results["signed"] = await burst(
                    session,
                    subscriber,
                    lambda k: signed_request(base, strategy, k),
                    args.count,
                    args.concurrency,
                    "signed",
                    process.pid,
                )
                results["tradingview"] = await burst(
                    session,
                    subscriber,
                    lambda k: tv_request(base, strategy, k),
                    args.count,
                    args.concurrency,
                    "tv",
                    process.pid,
                )
                results["latency"] = await steady(
                    session,
                    subscriber,
                    lambda k: signed_request(base, strategy, k),
                    args.rate,
                    args.seconds,
                )
                results["duplicate_publications"] = subscriber.duplicates
            conn = await asyncpg.connect(database_url)
            try:
                results["alerts_in_database"] = await conn.fetchval("SELECT count(*) FROM alerts")
            finally:
                await conn.close()
            return results
        finally:
            process.terminate()
            process.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="webhooks per burst phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=100.0, help="latency phase webhooks/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency phase length")
    parser.add_argument("--redis", default=None, help="a Redis URL: use the Redis broker")
    parser.add_argument(
        "--server-root",
        default=None,
        help="run the server from this checkout (e.g. a baseline worktree of main; same venv)",
    )
    parser.add_argument(
        "--database",
        default=DATABASE_URL,
        help="an admin URL; a fresh database is created and dropped",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    summary = asyncio.run(run(args))
    summary["config"] = {
        "count": args.count,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "seconds": args.seconds,
        "broker": "redis" if args.redis else "memory",
        "server_root": args.server_root,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        # The machine may be shared: high load averages mean noisy numbers.
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
    path = save_json("webhooks", summary)
    print(json.dumps(summary, indent=2))
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
