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

With ``--rounds R`` the latency phase runs R times; with ``--naive`` each round also runs it
against :mod:`bench.raw_webhooks` (the naive pipeline: signature check, one autocommitted
``INSERT`` of alert + outbox row, ``PUBLISH``, ``send_str``) on the same PostgreSQL and Redis,
interleaved, so that the project's latency has a same-run floor. ``--count 0`` skips the burst
phases, ``--warmup S`` sends S seconds at the rate before the first round (not counted). Each
project round also reads the server's own histograms before and after (``/metrics``) and reports
their p50/p99 for the webhook's HTTP request, its wait for a group-commit slot and its group's
commit (``server_ms``)::

    .venv/bin/python -m bench.webhooks --count 0 --rate 500 --seconds 10 --rounds 3 --warmup 2 \
        --naive --redis redis://127.0.0.1:6379/0

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
import statistics
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

from bench.common import DATABASE_URL, REDIS_URL, ROOT, free_port, save_json, wait_ready
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
    prefix: str = "latency",
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
        tasks.append(asyncio.create_task(one(f"{prefix}:{n}")))
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


#: the server-side parts of the acknowledgement, from the server's own histograms
STAGES = {
    "http_request": ("arena_http_request_seconds", {"route": "/webhooks/alerts/{strategy_id}"}),
    "commit_wait": ("arena_alert_commit_wait_seconds", {}),
    "commit": ("arena_alert_commit_seconds", {}),
}


async def histograms(session: aiohttp.ClientSession, base: str) -> dict[str, dict[float, float]]:
    """The cumulative bucket counts of :data:`STAGES` on the server's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    found: dict[str, dict[float, float]] = {stage: {} for stage in STAGES}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for stage, (name, labels) in STAGES.items():
                if sample.name == f"{name}_bucket" and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    le = float(sample.labels["le"])
                    found[stage][le] = found[stage].get(le, 0.0) + sample.value
    return found


def bucket_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """p50/p99 in ms of what was observed between two scrapes, interpolated inside buckets
    (as PromQL's ``histogram_quantile``), with the count."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0

    def at(q: float) -> float | None:
        if not total:
            return None
        rank, lower, below = q * total, 0.0, 0.0
        for bound, count in zip(bounds, counts, strict=True):
            if count >= rank:
                if bound == float("inf"):
                    return round(lower * 1000, 2)
                share = (rank - below) / (count - below) if count > below else 1.0
                return round((lower + (bound - lower) * share) * 1000, 2)
            lower, below = bound, count
        return None

    return {"p50": at(0.5), "p99": at(0.99), "count": int(total)}


@contextlib.asynccontextmanager
async def naive_server(database_url: str, redis_url: str) -> AsyncIterator[tuple[str, Any]]:
    """:mod:`bench.raw_webhooks` on a free port: its base URL and its strategy."""
    from services.alerts.signatures import new_signing_secret

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    strategy_id = uuid.uuid4()
    strategy = {
        "id": str(strategy_id),
        "channel": f"alerts:{strategy_id}",
        "secrets": {"signing_secret": new_signing_secret()},
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.raw_webhooks",
            "--port",
            str(port),
            "--database",
            database_url,
            "--redis",
            redis_url,
            "--secret",
            strategy["secrets"]["signing_secret"],
        ],
        cwd=ROOT,
    )
    try:
        await wait_ready(base, process)
        yield base, strategy
    finally:
        process.terminate()
        process.wait(15)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with contextlib.AsyncExitStack() as stack:
        database_url = await stack.enter_async_context(bench_database(args.database))
        env = server_env(database_url, port, args.redis)
        server_root = Path(args.server_root).resolve() if args.server_root else ROOT
        if args.server_root:
            env["PYTHONPATH"] = str(server_root)
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"], env=env, cwd=server_root
        )
        stack.callback(process.wait, 15)
        stack.callback(process.terminate)
        await wait_ready(base, process)
        token = await user_token(database_url, env)
        connector = aiohttp.TCPConnector(limit=args.concurrency + 8)
        session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
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
        if args.count > 0:
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
        targets: dict[str, tuple[str, Any, Subscriber]] = {"arena": (base, strategy, subscriber)}
        if args.naive:
            naive_db = await stack.enter_async_context(bench_database(args.database))
            naive_base, naive_strategy = await stack.enter_async_context(
                naive_server(naive_db, args.redis or REDIS_URL)
            )
            naive_subscriber = Subscriber()
            await naive_subscriber.start(
                session, f"{naive_base}/ws", "any", naive_strategy["channel"]
            )
            targets["naive"] = (naive_base, naive_strategy, naive_subscriber)
        rounds: list[dict[str, Any]] = []
        for number in range(args.rounds):
            for target, (target_base, target_strategy, target_subscriber) in targets.items():

                def make(k: str, b: str = target_base, s: Any = target_strategy) -> Any:
                    return signed_request(b, s, k)

                if number == 0 and args.warmup > 0:  # connections, caches, the JIT-less warm-up
                    await steady(session, target_subscriber, make, args.rate, args.warmup, "warmup")
                before = await histograms(session, base) if target == "arena" else {}
                measured = await steady(
                    session,
                    target_subscriber,
                    make,
                    args.rate,
                    args.seconds,
                    f"latency{number}",
                )
                measured["target"] = target
                measured["round"] = number + 1
                if target == "arena":
                    after = await histograms(session, base)
                    measured["server_ms"] = {
                        stage: bucket_quantiles(before[stage], after[stage]) for stage in STAGES
                    }
                rounds.append(measured)
        results["latency"] = rounds[0]
        if args.rounds > 1 or args.naive:
            results["latency_rounds"] = rounds
            results["latency_p99_median_ms"] = {
                target: statistics.median(
                    r["webhook_to_subscriber_ms"]["p99"] for r in rounds if r["target"] == target
                )
                for target in targets
            }
        results["duplicate_publications"] = subscriber.duplicates
        conn = await asyncpg.connect(database_url)
        try:
            results["alerts_in_database"] = await conn.fetchval("SELECT count(*) FROM alerts")
        finally:
            await conn.close()
        return results
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="webhooks per burst phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=100.0, help="latency phase webhooks/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency phase length")
    parser.add_argument("--redis", default=None, help="a Redis URL: use the Redis broker")
    parser.add_argument(
        "--rounds", type=int, default=1, help="latency phases (per target, interleaved)"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.0, help="seconds at --rate before the first round"
    )
    parser.add_argument(
        "--naive",
        action="store_true",
        help="also measure bench.raw_webhooks (the naive pipeline) in the same rounds",
    )
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
        "rounds": args.rounds,
        "warmup": args.warmup,
        "naive": args.naive,
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
