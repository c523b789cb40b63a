"""Connection cost: seconds and server CPU to open, authenticate and subscribe N connections,
and server RSS per connection, for the project (memory and Redis brokers) and the naive aiohttp
server, in the same run; optionally A/B against another checkout of the project.

One command, loopback only, about a minute per round::

    .venv/bin/python -m bench.connect_cost -n 5000 --rounds 2
    .venv/bin/python -m bench.connect_cost -n 5000 --baseline /tmp/arena-base   # A/B

``--baseline DIR`` also runs the server of the checkout in ``DIR`` (``python -m server.cli``
with ``DIR`` first on the path, the same virtualenv), as ``<target>@base``, interleaved with
this checkout's round by round, so both see the same machine load. The server's own CPU time
(``/proc/<pid>/stat``) over the connect phase is the number least disturbed by other load;
``--profile DIR`` records it with py-spy (collapsed stacks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import DATABASE_URL, REDIS_URL, RESULTS, free_port, machine
from bench.fanout import (
    Server,
    Target,
    _raise_nofile,
    _wait_ready,
    bench_database,
    profiled,
    project_env,
    project_target,
    raw_target,
)
from bench.loadgen import Workers


def baseline_target(
    name: str, root: Path, database_url: str, redis_url: str | None, workdir: Path
) -> Target:
    """The project's server from the checkout in ``root`` (same virtualenv)."""
    env = {**project_env(database_url, redis_url, workdir), "PYTHONPATH": str(root)}
    tokens: dict[str, str] = {}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "server.cli", *args],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        lines = done.stdout.strip().splitlines()
        return lines[-1] if lines else ""

    def start(heartbeat: float) -> Server:
        if not tokens:
            cli("migrate")
            tokens["user"] = cli("token", "--email", "bench@example.com", "--role", "admin")
            tokens["service"] = cli("service-token", "--name", "bench")
        port = free_port()
        log_path = workdir / f"{name}-{port}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"],
            env={**env, "PORT": str(port), "WS_HEARTBEAT": str(heartbeat)},
            cwd=root,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=_raise_nofile,
        )
        server = Server(name, process, port, tokens["user"], tokens["service"], log_path)
        _wait_ready(server)
        return server

    return Target(name, start)


def connect_once(
    target: Target, workers: Workers, n: int, channel: str, profile: Path | None
) -> dict[str, Any]:
    server = target.start(25.0)
    try:
        time.sleep(0.5)
        # one connection first: lazily created per-process state is not counted
        workers.connect("127.0.0.1", server.port, server.token, [[channel]])
        time.sleep(0.3)
        rss_before, cpu_before = server.rss(), server.cpu()
        with profiled(server, profile, f"connect-{n}"):
            result = workers.connect(
                "127.0.0.1", server.port, server.token, [[channel]] * n, concurrency=100
            )
        cpu = server.cpu() - cpu_before
        time.sleep(1.0)
        rss_after = server.rss()
        connected = max(1, result["connected"])
        return {
            "connected": result["connected"],
            "errors": result["errors"],
            "connect_s": result["seconds"],
            "server_cpu_s": cpu,
            "cpu_us_per_conn": cpu / connected * 1e6,
            "rss_per_conn_kib": (rss_after - rss_before) / connected / 1024,
        }
    finally:
        workers.call("close")
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--targets", nargs="+", default=["arena-memory", "arena-redis", "raw-aiohttp"]
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout of the project to compare with (A/B)",
    )
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--database-url", default=DATABASE_URL)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    _raise_nofile()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.connect_cost "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {**machine(), "load_avg_at_start": os.getloadavg()},
        "n": args.n,
        "runs": {},
    }
    workers = Workers(args.workers)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-connect-") as tmp,
            bench_database(args.database_url) as database_url,
        ):
            workdir = Path(tmp)
            targets: list[Target] = []
            for name in args.targets:
                redis_url = args.redis_url if name == "arena-redis" else None
                if name == "raw-aiohttp":
                    targets.append(raw_target(workdir))
                    continue
                targets.append(project_target(name, database_url, redis_url, workdir))
                if args.baseline is not None:
                    targets.append(
                        baseline_target(
                            f"{name}@base",
                            args.baseline.resolve(),
                            database_url,
                            redis_url,
                            workdir,
                        )
                    )
            for round_ in range(args.rounds):
                for target in targets:
                    run = connect_once(target, workers, args.n, "alerts:bench", args.profile)
                    results["runs"].setdefault(target.name, []).append(run)
                    print(
                        f"round {round_ + 1} {target.name:22} connect {run['connect_s']:6.2f} s"
                        f"  server CPU {run['server_cpu_s']:6.2f} s"
                        f" ({run['cpu_us_per_conn']:5.0f} µs/conn)"
                        f"  RSS/conn {run['rss_per_conn_kib']:5.1f} KiB"
                        f"  connected {run['connected']}/{args.n} {run['errors'] or ''}",
                        flush=True,
                    )
    finally:
        workers.shutdown()
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"connect-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nbest of {args.rounds} (median CPU):")
    for name, runs in results["runs"].items():
        best = min(r["connect_s"] for r in runs)
        cpu = sorted(r["server_cpu_s"] for r in runs)[len(runs) // 2]
        rss = sorted(r["rss_per_conn_kib"] for r in runs)[len(runs) // 2]
        print(
            f"  {name:22} connect {best:6.2f} s  server CPU {cpu:6.2f} s  RSS/conn {rss:5.1f} KiB"
        )
    print(f"wrote {path}; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
