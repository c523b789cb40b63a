"""Publications/s and Redis CPU per publication: one Redis vs a 3-master Redis Cluster.

    .venv/bin/python -m bench.cluster_broker [--channels 1000] [--processes 3]
        [--concurrency 64] [--seconds 15]

In one run, on private servers started for it (nothing else's load in the CPU numbers):

1. ``single``: one ``redis-server`` (port ``--single-port``, default 7110), ``RedisBroker``;
2. ``cluster``: 3 masters + 3 replicas (ports ``--cluster-port``.. +5, default 7101),
   ``RedisClusterBroker`` (sharded pub/sub, 64 partitions).

For each, ``--processes`` publisher processes each run ``--concurrency`` concurrent publishers
round-robin over ``--channels`` channels for ``--seconds`` seconds, while one more process
subscribes to every channel and counts deliveries. Reported: publications/s acknowledged,
deliveries/s, and Redis CPU (``used_cpu_sys + used_cpu_user`` from ``INFO cpu`` of every
redis-server, before and after) per publication, masters and replicas apart.

Every process here shares the machine's cores: on a small machine the publishers' Python is
the limit, not Redis; the CPU per publication is what tells how far Redis itself would go
(see docs/benchmarks.md). Results go to ``bench/results/cluster-broker-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.common import machine, save_json
from pubsub.broker import Broker, Publication
from pubsub.namespaces import NamespaceOptions
from pubsub.redis_broker import RedisBroker
from pubsub.redis_cluster import RedisClusterBroker
from tests.redis_cluster import LocalCluster

OPTIONS = NamespaceOptions(history_size=100)
PAYLOAD = b'{"type":"bid","amount":1250,"currency":"EUR","user":"u-0001","note":"benchmark"}'


def make_broker(kind: str, url: str, prefix: str) -> Broker:
    if kind == "cluster":
        return RedisClusterBroker(url, prefix=prefix, max_connections=256)
    return RedisBroker(url, prefix=prefix, max_connections=256)


class Counter:
    """A broker event handler that counts deliveries."""

    def __init__(self) -> None:
        self.count = 0

    def on_publication(self, publication: Publication) -> None:
        self.count += 1

    def on_control(self, data: bytes) -> None:
        pass

    def on_reconnected(self) -> None:
        pass

    def on_resubscribed(self, channels: list[str]) -> None:
        pass


async def _publish(
    kind: str, url: str, prefix: str, channels: list[str], concurrency: int, seconds: float
) -> tuple[int, int, float]:
    broker = make_broker(kind, url, prefix)
    await broker.start(Counter())
    done = errors = 0
    stop = time.perf_counter() + seconds
    start = time.perf_counter()

    async def worker(index: int) -> None:
        nonlocal done, errors
        n = index
        while time.perf_counter() < stop:
            try:
                await broker.publish(channels[n % len(channels)], PAYLOAD, OPTIONS)
                done += 1
            except Exception:
                errors += 1
            n += concurrency

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    await broker.close()
    return done, errors, elapsed


def publisher_process(
    kind: str,
    url: str,
    prefix: str,
    channels: list[str],
    concurrency: int,
    seconds: float,
    go: Any,
    results: Any,
) -> None:
    go.wait()
    results.put(asyncio.run(_publish(kind, url, prefix, channels, concurrency, seconds)))


async def _subscribe(
    kind: str, url: str, prefix: str, channels: list[str], ready: Any, stop: Any, results: Any
) -> None:
    broker = make_broker(kind, url, prefix)
    counter = Counter()
    await broker.start(counter)
    await asyncio.gather(*(broker.subscribe(channel) for channel in channels))
    ready.set()
    while not stop.is_set():
        await asyncio.sleep(0.05)
    results.put(counter.count)
    await broker.close()


def subscriber_process(
    kind: str,
    url: str,
    prefix: str,
    channels: list[str],
    ready: Any,
    stop: Any,
    results: Any,
) -> None:
    asyncio.run(_subscribe(kind, url, prefix, channels, ready, stop, results))


def cpu_seconds(port: int) -> float:
    with redis.Redis(port=port, socket_timeout=10) as client:
        info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def script_usec(port: int) -> tuple[int, int]:
    """(calls, microseconds) Redis spent running EVALSHA (the publish script), from
    ``INFO commandstats``: the script alone, without network I/O or background work."""
    with redis.Redis(port=port, socket_timeout=10) as client:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def idle_cpu(ports: list[int], seconds: float) -> dict[int, float]:
    """CPU each server uses doing nothing for ``seconds`` (cluster bus, replication pings)."""
    before = {port: cpu_seconds(port) for port in ports}
    time.sleep(seconds)
    return {port: cpu_seconds(port) - before[port] for port in ports}


def role(port: int) -> str:
    with redis.Redis(port=port, socket_timeout=10) as client:
        return str(client.execute_command("ROLE")[0].decode())


@dataclass
class Servers:
    url: str
    ports: list[int]


def start_single(port: int, folder: Path) -> tuple[Servers, subprocess.Popen[bytes]]:
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(folder)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        with suppress(redis.RedisError), redis.Redis(port=port) as client:
            client.ping()
            break
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return Servers(f"redis://127.0.0.1:{port}/0", [port]), process


def run_case(kind: str, servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    channels = [f"alerts:bench{n}" for n in range(args.channels)]
    ctx = multiprocessing.get_context("spawn")
    go, ready, stop = ctx.Event(), ctx.Event(), ctx.Event()
    published, delivered = ctx.Queue(), ctx.Queue()
    subscriber = ctx.Process(
        target=subscriber_process,
        args=(kind, servers.url, prefix, channels, ready, stop, delivered),
    )
    subscriber.start()
    if not ready.wait(120):
        raise RuntimeError("subscriber did not subscribe in time")
    publishers = [
        ctx.Process(
            target=publisher_process,
            args=(
                kind,
                servers.url,
                prefix,
                channels,
                args.concurrency,
                args.seconds,
                go,
                published,
            ),
        )
        for _ in range(args.processes)
    ]
    for process in publishers:
        process.start()
    time.sleep(3)  # let the publishers import and connect before the window opens
    roles = {port: role(port) for port in servers.ports}
    idle = idle_cpu(servers.ports, args.seconds)
    scripts_before = {port: script_usec(port) for port in servers.ports}
    before = {port: cpu_seconds(port) for port in servers.ports}
    load_before = os.getloadavg()
    go.set()
    results = [published.get(timeout=args.seconds + 120) for _ in publishers]
    after = {port: cpu_seconds(port) for port in servers.ports}
    scripts_after = {port: script_usec(port) for port in servers.ports}
    load_after = os.getloadavg()
    time.sleep(1)  # the last deliveries
    stop.set()
    count = delivered.get(timeout=60)
    for process in [*publishers, subscriber]:
        process.join(30)
    acked = sum(done for done, _, _ in results)
    errors = sum(failed for _, failed, _ in results)
    window = max(elapsed for _, _, elapsed in results)
    cpu = {port: after[port] - before[port] for port in servers.ports}
    # background work (cluster bus, replication pings) scaled to the window, taken out
    net = {port: max(0.0, cpu[port] - idle[port] * window / args.seconds) for port in cpu}
    masters = [port for port in servers.ports if roles[port] == "master"]
    master_cpu = sum(net[port] for port in masters)
    all_cpu = sum(net.values())
    calls = sum(scripts_after[p][0] - scripts_before[p][0] for p in masters)
    usec = sum(scripts_after[p][1] - scripts_before[p][1] for p in masters)
    return {
        "backend": kind,
        "channels": args.channels,
        "publisher_processes": args.processes,
        "concurrency_per_process": args.concurrency,
        "window_s": round(window, 2),
        "publications": acked,
        "errors": errors,
        "publications_per_s": round(acked / window),
        "deliveries": count,
        "deliveries_per_s": round(count / window),
        "redis_cpu_s": {str(port): round(value, 3) for port, value in cpu.items()},
        "redis_idle_cpu_s": {str(port): round(value, 3) for port, value in idle.items()},
        "roles": {str(port): roles[port] for port in servers.ports},
        "master_cpu_us_per_publication": round(master_cpu / max(acked, 1) * 1e6, 1),
        "all_redis_cpu_us_per_publication": round(all_cpu / max(acked, 1) * 1e6, 1),
        "script_us_per_publication": round(usec / max(calls, 1), 1),
        "busiest_master_cpu_share": round(max(net[p] for p in masters) / window, 3),
        "load_average": {"before": load_before, "after": load_after},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=3, help="publisher processes")
    parser.add_argument("--concurrency", type=int, default=64, help="publishers per process")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--single-port", type=int, default=7110)
    parser.add_argument("--cluster-port", type=int, default=7101)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server must be on PATH")

    results = []
    folder = Path(tempfile.mkdtemp(prefix="arena-bench-cluster-"))
    single, process = start_single(args.single_port, folder)
    try:
        results.append(run_case("single", single, args))
    finally:
        process.kill()
        process.wait(10)
    cluster = LocalCluster(base_port=args.cluster_port)
    cluster.start()
    try:
        results.append(run_case("cluster", Servers(cluster.url, cluster.ports), args))
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)

    print(
        f"{'backend':8} {'pub/s':>8} {'deliv/s':>8} {'errors':>6} {'µs CPU/pub masters':>19}"
        f" {'all nodes':>10} {'script µs':>10} {'busiest master':>15}"
    )
    for row in results:
        print(
            f"{row['backend']:8} {row['publications_per_s']:>8} {row['deliveries_per_s']:>8} "
            f"{row['errors']:>6} {row['master_cpu_us_per_publication']:>19} "
            f"{row['all_redis_cpu_us_per_publication']:>10} "
            f"{row['script_us_per_publication']:>10} {row['busiest_master_cpu_share']:>14.0%}"
        )
    path = save_json(
        "cluster-broker",
        {"machine": machine(), "args": vars(args), "results": results, "date": time.ctime()},
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
