"""One analysis streamed to many watchers: delivered deltas per second and token-to-watcher delay.

::

    .venv/bin/python -m bench.analysis_fanout                     # 1,000 watchers, 40 ms flush
    .venv/bin/python -m bench.analysis_fanout --flush-ms 1        # (almost) no coalescing
    .venv/bin/python -m bench.analysis_fanout --watchers 200 --tokens 300   # quick check

The fake Anthropic API of ``tests/analysis/fake_anthropic.py`` runs in this process and streams
``--tokens`` tokens at ``--rate`` tokens/s; the real server (``arena-realtime serve``, memory
broker, its own fresh PostgreSQL database) runs in a subprocess and reaches the fake through the
official SDK. ``--watchers`` WebSocket clients in ``--workers`` processes subscribe to the
analysis channel (with ``since``, so nothing can be missed) before the first token is released.

Measured:

* ``deltas_per_second``: delta events received by all watchers divided by the time between the
  first and the last one;
* ``delay``: for every token and every watcher, the time from the fake server writing the token
  to the watcher receiving the delta that contains it (p50/p99/max). It includes the coalescing
  wait (up to ``ANALYSIS_FLUSH_MS``), the broker, the fan-out and the client's own parsing;
* ``complete``: every watcher got every delta once, in order, and the same text.

Writes ``bench/results/analysis-fanout-<UTC date-time>.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench.common import DATABASE_URL, ROOT, free_port, save_json, wait_ready
from server.settings import load_settings
from storage import users
from tests.analysis.fake_anthropic import API_KEY, FakeAnthropic, Script

JWT_SECRET = "bench-jwt-secret-that-is-long-enough-0123456789abcdef"  # noqa: S105
SERVICE_SECRET = "bench-service-secret-that-is-long-enough-0123456789"  # noqa: S105


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p99/max of second samples, in milliseconds."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "samples": 0}
    ordered = sorted(values)
    n = len(ordered)
    return {
        "p50_ms": round(ordered[n // 2] * 1000, 2),
        "p99_ms": round(ordered[min(n - 1, int(n * 0.99))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "samples": n,
    }


# -- watchers (run in worker processes) ----------------------------------------------------


async def _watch(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    channel: str,
    since: dict[str, Any],
    ready: asyncio.Queue[None],
) -> dict[str, Any]:
    received: list[tuple[float, int]] = []  # (time, end of the text so far)
    seqs: list[int] = []
    text_len = 0
    async with session.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_str(orjson.dumps({"id": 1, "type": "authenticate", "token": token}).decode())
        await ws.receive()
        command = {"id": 2, "type": "subscribe", "channel": channel, "since": since}
        await ws.send_str(orjson.dumps(command).decode())
        ready.put_nowait(None)
        async for msg in ws:
            now = time.time()
            message = orjson.loads(msg.data)
            if message.get("type") == "reply":
                pubs = message.get("result", {}).get("publications", [])
            elif message.get("type") == "pub":
                pubs = [message]
            else:
                continue
            for pub in pubs:
                data = pub["data"]
                if data["type"] == "delta":
                    text_len += len(data["text"])
                    seqs.append(data["seq"])
                    received.append((now, text_len))
                elif data["type"] in ("done", "error"):
                    return {"received": received, "seqs": seqs, "end": data["type"]}
    return {"received": received, "seqs": seqs, "end": "closed"}


async def _worker_main(args: dict[str, Any], out: Any) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        ready: asyncio.Queue[None] = asyncio.Queue()
        tasks = []
        for i in range(args["count"]):
            tasks.append(
                asyncio.create_task(
                    _watch(
                        session, args["url"], args["token"], args["channel"], args["since"], ready
                    )
                )
            )
            if i % 100 == 99:
                await asyncio.sleep(0.05)
        for _ in range(args["count"]):
            await ready.get()
        out.put(("ready", args["count"]))
        results = await asyncio.gather(*tasks, return_exceptions=True)
    clean = [r for r in results if isinstance(r, dict)]
    errors = [repr(r) for r in results if not isinstance(r, dict)]
    out.put(("done", clean, errors[:5]))


def worker(args: dict[str, Any], out: Any) -> None:
    """Entry point of a watcher process."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_worker_main(args, out))


# -- orchestration -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bench_database(admin_url: str) -> AsyncIterator[str]:
    name = f"arena_bench_analysis_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base, _, _ = admin_url.rpartition("/")
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def server_env(database_url: str, port: int, fake_url: str, flush_ms: float) -> dict[str, str]:
    return {
        **os.environ,
        "ENV": "development",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "JWT_SECRET": JWT_SECRET,
        "SERVICE_SECRET": SERVICE_SECRET,
        "LOG_LEVEL": "WARNING",
        "UVLOOP": "true",
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": fake_url,
        "ANTHROPIC_TIMEOUT": "600",
        "ANALYSIS_FLUSH_MS": str(flush_ms),
        "WS_MAX_CONNECTIONS_PER_USER": "20000",
        # Every generator socket comes from 127.0.0.1, many of them connecting at once.
        "WS_MAX_UNAUTHENTICATED_PER_IP": "100000",
        "WS_USER_COMMAND_RATE": "1000000",
        "WS_USER_COMMAND_BURST": "1000000",
    }


async def seed(database_url: str, env: dict[str, str]) -> tuple[str, str]:
    """A buyer, a request with three proposals; returns (request id, access token)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.set_type_codec(
            "jsonb",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )
        owner = await users.get_or_create(conn, f"bench-{uuid.uuid4().hex[:6]}@example.com")
        requirements = [
            {"name": "SSO", "description": "SAML", "priority": "must"},
            {"name": "Audit", "description": "", "priority": "should"},
        ]
        request_id = await conn.fetchval(
            "INSERT INTO requests (owner_id, title, requirements, budget) VALUES ($1, $2, $3, $4) "
            "RETURNING id",
            owner.id,
            "Benchmark request",
            requirements,
            Decimal("10000"),
        )
        for i in range(3):
            vendor = await users.get_or_create(
                conn, f"v{i}-{uuid.uuid4().hex[:6]}@example.com", "vendor"
            )
            await conn.execute(
                "INSERT INTO proposals (request_id, vendor_id, price, summary) "
                "VALUES ($1, $2, $3, $4)",
                request_id,
                vendor.id,
                Decimal(9000 + 1000 * i),
                f"Proposal {i}",
            )
    finally:
        await conn.close()
    from services.auth.tokens import TokenService

    tokens = TokenService(load_settings(env).handlers.auth)
    return str(request_id), tokens.issue_access(str(owner.id), owner.role, owner.email).token


def analyse(results: list[dict[str, Any]], fake: FakeAnthropic, tokens: int) -> dict[str, Any]:
    sent = fake.sent
    ends = [s.end for s in sent]
    total_chars = ends[-1] if ends else 0
    delays: list[float] = []
    deltas = 0
    first = last = None
    complete = 0
    for watcher in results:
        received = watcher["received"]
        deltas += len(received)
        ok = (
            watcher["end"] == "done"
            and watcher["seqs"] == list(range(1, len(watcher["seqs"]) + 1))
            and received
            and received[-1][1] == total_chars
        )
        complete += bool(ok)
        if not received:
            continue
        first = received[0][0] if first is None else min(first, received[0][0])
        last = received[-1][0] if last is None else max(last, received[-1][0])
        positions = [end for _, end in received]
        for token in sent:
            index = bisect.bisect_left(positions, token.end)
            if index < len(received):
                delays.append(received[index][0] - token.time)
    span = (last - first) if first is not None and last is not None else 0.0
    provider_span = sent[-1].time - sent[0].time if len(sent) > 1 else 0.0
    return {
        "watchers": len(results),
        "complete_watchers": complete,
        "tokens": tokens,
        "provider_tokens_per_second": round(len(sent) / provider_span, 1)
        if provider_span
        else None,
        "deltas_per_watcher": round(deltas / max(1, len(results)), 1),
        "deltas_delivered": deltas,
        "delivery_seconds": round(span, 3),
        "deltas_per_second": round(deltas / span, 1) if span else None,
        "delay": percentiles(delays),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    gate = asyncio.Event()
    fake = FakeAnthropic(
        Script(tokens=[f"tok{i} " for i in range(args.tokens)], delay=1 / args.rate, gate=gate)
    )
    await fake.start()
    loop = asyncio.get_running_loop()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    async with bench_database(args.database) as database_url:
        env = server_env(database_url, port, fake.url, args.flush_ms)
        process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env, cwd=ROOT)
        try:
            await wait_ready(base_url, process)
            request_id, token = await seed(database_url, env)
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{base_url}/api/v1/requests/{request_id}/analyses",
                    json={"kind": "compare_proposals"},
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp,
            ):
                created = await resp.json()
                assert resp.status == 202, created
            ctx = multiprocessing.get_context("spawn")
            out = ctx.Queue()
            per_worker = [args.watchers // args.workers] * args.workers
            per_worker[0] += args.watchers - sum(per_worker)
            procs = []
            for count in per_worker:
                worker_args = {
                    "count": count,
                    "url": f"{base_url}/ws",
                    "token": token,
                    "channel": created["channel"],
                    "since": created["since"],
                }
                proc = ctx.Process(target=worker, args=(worker_args, out))
                proc.start()
                procs.append(proc)
            for _ in procs:
                kind, _count = await loop.run_in_executor(None, out.get, True, 120)
                assert kind == "ready"
            await asyncio.sleep(0.5)  # let the last subscribe replies go out
            gate.set()
            results: list[dict[str, Any]] = []
            errors: list[str] = []
            for _ in procs:
                _kind, clean, errs = await loop.run_in_executor(None, out.get, True, 600)
                results.extend(clean)
                errors.extend(errs)
            for proc in procs:
                proc.join(10)
        finally:
            process.terminate()
            await loop.run_in_executor(None, process.wait, 30)
            await fake.close()
    summary = analyse(results, fake, args.tokens)
    summary["errors"] = errors
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="watcher processes")
    parser.add_argument("--tokens", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=150.0, help="provider tokens per second")
    parser.add_argument("--flush-ms", type=float, default=40.0)
    parser.add_argument(
        "--database",
        default=DATABASE_URL,
        help="an admin URL; a fresh database is created and dropped",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    summary = asyncio.run(run(args))
    summary["config"] = {
        "watchers": args.watchers,
        "workers": args.workers,
        "tokens": args.tokens,
        "rate": args.rate,
        "flush_ms": args.flush_ms,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        # The machine may be shared: high load averages mean noisy numbers.
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
    path = save_json("analysis-fanout", summary)
    print(json.dumps(summary, indent=2))
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
