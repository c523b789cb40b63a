"""Fixed-rate latency only, repeated: the project against the naive aiohttp server, interleaved.

``bench.fanout`` runs each target once, one after the other, so a disturbance on the machine
lands on one target only. This runs just the connect and fixed-rate phases of ``bench.fanout``
(50 publications/s x 1,000 subscribers and 10/s x 5,000) ``--repeats`` times, every target
once per round in turn, and reports every run and the p99 ratio to the raw server per round::

    .venv/bin/python -m bench.latency                     # 3 rounds, 30 s phases: ~10 minutes
    .venv/bin/python -m bench.latency --repeats 1 --seconds 5 --sizes 1000   # a quick look
    .venv/bin/python -m bench.latency --base /tmp/base   # adds <target>@base: that checkout

Writes ``bench/results/latency-<UTC date-time>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import fanout
from bench.common import DATABASE_URL, REDIS_URL, RESULTS, machine
from bench.loadgen import Workers

TARGETS = ["arena-memory", "arena-redis", "raw-aiohttp"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    fanout._raise_nofile()
    rows: list[dict[str, Any]] = []
    workers = Workers(args.workers)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp,
            fanout.bench_database(args.database_url) as database_url,
        ):
            workdir = Path(tmp)
            targets = {
                "arena-memory": fanout.project_target("arena-memory", database_url, None, workdir),
                "arena-redis": fanout.project_target(
                    "arena-redis", database_url, args.redis_url, workdir
                ),
                "raw-aiohttp": fanout.raw_target(workdir),
            }
            names = list(args.targets)
            if args.base is not None:
                # "<target>@base": the same target running the --base checkout's code
                names = []
                for name in args.targets:
                    names.append(name)
                    if name.startswith("arena-"):
                        redis_url = args.redis_url if "redis" in name else None
                        targets[f"{name}@base"] = fanout.project_target(
                            f"{name}@base",
                            database_url,
                            redis_url,
                            workdir,
                            checkout=args.base.resolve(),
                        )
                        names.append(f"{name}@base")
            for round_ in range(args.repeats):
                for n in args.sizes:
                    rate = fanout.FIXED_RATES.get(n, 10.0)
                    for name in names:
                        server = targets[name].start(args.heartbeat)
                        try:
                            fanout.connect_case(server, workers, [["alerts:bench"]] * n)
                            result = asyncio.run(
                                fanout.rate_case(
                                    server,
                                    workers,
                                    [(lambda i: "alerts:bench", rate)],
                                    args.seconds,
                                )
                            )
                        finally:
                            workers.call("close")
                            server.stop()
                        row = {
                            "round": round_,
                            "n": n,
                            "target": name,
                            "rate": rate,
                            "load_avg": os.getloadavg()[0],
                            **{k: v for k, v in result.items() if k != "close_codes"},
                        }
                        rows.append(row)
                        print(
                            f"round {round_} N={n} {name}: p50 {row['p50_ms']} ms,"
                            f" p99 {row['p99_ms']} ms, max {row['max_ms']} ms, lost {row['lost']}",
                            flush=True,
                        )
    finally:
        workers.shutdown()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.latency " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "seconds": args.seconds,
        "heartbeat": args.heartbeat,
        "runs": rows,
        "p99_ratios": ratios(rows),
    }


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """p99 of each project run divided by the raw server's p99 in the same round and size."""
    raw = {(r["round"], r["n"]): r["p99_ms"] for r in rows if r["target"] == "raw-aiohttp"}
    out = []
    for row in rows:
        base = raw.get((row["round"], row["n"]))
        if row["target"] == "raw-aiohttp" or not base or row["p99_ms"] is None:
            continue
        out.append(
            {
                "round": row["round"],
                "n": row["n"],
                "target": row["target"],
                "ratio": row["p99_ms"] / base,
            }
        )
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        "| target | N | round | p50 ms | p99 ms | max ms | lost | p99 / raw |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratio = {(r["round"], r["n"], r["target"]): r["ratio"] for r in results["p99_ratios"]}
    for row in sorted(results["runs"], key=lambda r: (r["target"], r["n"], r["round"])):
        value = ratio.get((row["round"], row["n"], row["target"]))
        lines.append(
            f"| {row['target']} | {row['n']} | {row['round']} | {row['p50_ms']:.2f} |"
            f" {row['p99_ms']:.2f} | {row['max_ms']:.2f} | {row['lost']} |"
            f" {'-' if value is None else f'{value:.2f}'} |"
        )
    by: dict[tuple[str, int], list[float]] = {}
    for r in results["p99_ratios"]:
        by.setdefault((r["target"], r["n"]), []).append(r["ratio"])
    lines.append("")
    lines.append("| target | N | p99 / raw: median | worst | goal |")
    lines.append("|---|---|---|---|---|")
    for (target, n), values in sorted(by.items()):
        lines.append(
            f"| {target} | {n} | {statistics.median(values):.2f} | {max(values):.2f} | <= 1.2 |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--targets", nargs="+", default=TARGETS, choices=TARGETS)
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=25.0,
        help="server WebSocket heartbeat, s (25 as in bench.fanout: a 30 s phase sees one round"
        " of pings to every connection)",
    )
    parser.add_argument(
        "--database-url",
        default=DATABASE_URL,
    )
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--base",
        type=Path,
        default=None,
        help="another checkout (same venv): adds <target>@base for each arena target",
    )
    args = parser.parse_args(argv)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"latency-{time.strftime('%Y-%m-%dT%H%M', time.gmtime())}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print()
    print(table(results))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
