"""Publications/s and Redis CPU per publication: one Redis vs a 3-master Redis Cluster.

    .venv/bin/python -m bench.cluster_broker [--channels 1000] [--processes 3]
        [--concurrency 64] [--seconds 15]

In one run, on private servers started for it (nothing else's load in the CPU numbers):

1. ``single``: one ``redis-server`` (port ``--single-port``, default 7110) with one replica
   (the next port), ``RedisBroker``;
2. ``cluster``: 3 masters + 3 replicas (ports ``--cluster-port``.. +5, default 7101),
   ``RedisClusterBroker`` (sharded pub/sub, 64 partitions).

For each, two phases:

* **broker**: ``--processes`` publisher processes each run ``--concurrency`` concurrent
  publishers (the real broker, ``publish()``) round-robin over ``--channels`` channels for
  ``--seconds`` seconds, while one more process subscribes to every channel and counts
  deliveries. Reported: publications/s acknowledged, deliveries/s, and Redis CPU
  (``used_cpu_sys + used_cpu_user`` from ``INFO cpu`` of every redis-server, before and after,
  minus the same servers' CPU over an idle window) per publication, masters and replicas apart.
* **pipelined**: one process per master sends the same publish script (``EVALSHA``, same keys
  and arguments as the broker) in pipelines of 200, ``--pipelined`` publications in all, so
  Redis rather than the Python client is the busy side; reported the same way. Its CPU per
  publication is Redis's cost at load, which sets how many publications one core sustains.

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

    def on_publications(self, publications: list[Publication]) -> None:
        self.count += len(publications)

    def on_control(self, data: bytes) -> None:
        pass

    def on_reconnected(self) -> None:
        pass

    def on_resubscribed(self, channels: list[str]) -> None:
        pass


async def _publish(
    kind: str, url: str, prefix: str, channels: list[str], concurrency: int, seconds: float
) -> tuple[int, int, float, list[str]]:
    broker = make_broker(kind, url, prefix)
    await broker.start(Counter())
    done = errors = 0
    kinds: dict[str, bool] = {}
    stop = time.perf_counter() + seconds
    start = time.perf_counter()

    async def worker(index: int) -> None:
        nonlocal done, errors
        n = index
        while time.perf_counter() < stop:
            try:
                await broker.publish(channels[n % len(channels)], PAYLOAD, OPTIONS)
                done += 1
            except Exception as exc:
                errors += 1
                kinds[f"{type(exc).__name__}: {exc}"[:100]] = True
            n += concurrency

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    await broker.close()
    return done, errors, elapsed, list(kinds)


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
    """(calls, microseconds) Redis spent in EVALSHA (the publish script), from ``INFO
    commandstats``: wall time of the script alone, without network I/O or background work."""
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


def start_single(port: int, folder: Path) -> tuple[Servers, list[subprocess.Popen[bytes]]]:
    """One master and one replica (like a cluster shard, so both pay for replication)."""
    processes = []
    for node, extra in ((port, []), (port + 1, ["--replicaof", "127.0.0.1", str(port)])):
        args = ["redis-server", "--port", str(node), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(folder), "--dbfilename", f"{node}.rdb"]
        args += ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", *extra]
        processes.append(
            subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    deadline = time.monotonic() + 30
    while True:
        with suppress(redis.RedisError), redis.Redis(port=port + 1) as client:
            if client.info("replication").get("master_link_status") == "up":
                break
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server and its replica did not start")
        time.sleep(0.05)
    return Servers(f"redis://127.0.0.1:{port}/0", [port, port + 1]), processes


def pipelined_process(
    kind: str, port: int, prefix: str, channels: list[str], count: int, go: Any, results: Any
) -> None:
    """Send ``count`` publish scripts to the master on ``port`` (channels it owns)."""
    from pubsub.memory import new_epoch
    from pubsub.redis_broker import META_MIN_TTL
    from pubsub.redis_keys import KeySpace, PartitionedKeySpace
    from pubsub.redis_scripts import CLUSTER_PUBLISH, PUBLISH

    keys: KeySpace | PartitionedKeySpace = (
        PartitionedKeySpace(prefix) if kind == "cluster" else KeySpace(prefix)
    )
    client = redis.Redis(port=port, socket_timeout=60)
    sha = client.script_load(CLUSTER_PUBLISH if kind == "cluster" else PUBLISH)
    go.wait()
    start = time.perf_counter()
    sent = 0
    while sent < count:
        pipe = client.pipeline(transaction=False)
        for n in range(sent, min(count, sent + 200)):
            channel = channels[n % len(channels)]
            pipe.evalsha(
                sha,
                2,
                keys.meta(channel),
                keys.stream(channel),
                PAYLOAD,
                OPTIONS.history_size,
                OPTIONS.history_ttl,
                max(OPTIONS.history_ttl, META_MIN_TTL),
                new_epoch(),
                repr(time.time()),
                0,
                keys.live(channel),
            )
        pipe.execute()
        sent = min(count, sent + 200)
    results.put(time.perf_counter() - start)
    client.close()


def run_pipelined(kind: str, servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    from redis.crc import key_slot

    from pubsub.redis_keys import KeySpace, PartitionedKeySpace

    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    keys: KeySpace | PartitionedKeySpace = (
        PartitionedKeySpace(prefix) if kind == "cluster" else KeySpace(prefix)
    )
    roles = {port: role(port) for port in servers.ports}
    masters = [port for port in servers.ports if roles[port] == "master"]
    channels = [f"alerts:bench{n}" for n in range(args.channels)]
    owned: dict[int, list[str]] = {port: [] for port in masters}
    if kind == "cluster":
        with redis.Redis(port=masters[0]) as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        for channel in channels:
            slot = key_slot(keys.live(channel))
            port = next(int(m[1]) for a, b, m, *_ in ranges if int(a) <= slot <= int(b))
            owned[port].append(channel)
    else:
        owned[masters[0]] = channels
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    per_master = args.pipelined // len(masters)
    workers = [
        ctx.Process(
            target=pipelined_process,
            args=(kind, port, prefix, owned[port], per_master, go, results),
        )
        for port in masters
    ]
    for worker in workers:
        worker.start()
    time.sleep(3)
    idle = idle_cpu(servers.ports, 5.0)
    before = {port: cpu_seconds(port) for port in servers.ports}
    go.set()
    elapsed = max(results.get(timeout=600) for _ in workers)
    after = {port: cpu_seconds(port) for port in servers.ports}
    for worker in workers:
        worker.join(30)
    total = per_master * len(masters)
    net = {
        port: max(0.0, after[port] - before[port] - idle[port] * elapsed / 5.0)
        for port in servers.ports
    }
    return {
        "backend": kind,
        "phase": "pipelined",
        "publications": total,
        "window_s": round(elapsed, 2),
        "publications_per_s": round(total / elapsed),
        "master_cpu_us_per_publication": round(sum(net[p] for p in masters) / total * 1e6, 1),
        "all_redis_cpu_us_per_publication": round(sum(net.values()) / total * 1e6, 1),
        "busiest_master_cpu_share": round(max(net[p] for p in masters) / elapsed, 3),
        "publications_per_s_per_master_core": round(
            total / max(sum(net[p] for p in masters), 1e-9)
        ),
        "load_average": os.getloadavg(),
    }


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
    acked = sum(result[0] for result in results)
    errors = sum(result[1] for result in results)
    window = max(result[2] for result in results)
    error_kinds = sorted({kind for result in results for kind in result[3]})
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
        "phase": "broker",
        "channels": args.channels,
        "publisher_processes": args.processes,
        "concurrency_per_process": args.concurrency,
        "window_s": round(window, 2),
        "publications": acked,
        "errors": errors,
        "error_kinds": error_kinds,
        "publications_per_s": round(acked / window),
        "deliveries": count,
        "deliveries_per_s": round(count / window),
        "redis_cpu_s": {str(port): round(value, 3) for port, value in cpu.items()},
        "redis_idle_cpu_s": {str(port): round(value, 3) for port, value in idle.items()},
        "roles": {str(port): roles[port] for port in servers.ports},
        "master_cpu_us_per_publication": round(master_cpu / max(acked, 1) * 1e6, 1),
        "all_redis_cpu_us_per_publication": round(all_cpu / max(acked, 1) * 1e6, 1),
        # wall time inside EVALSHA (INFO commandstats): includes time the OS ran others
        "script_wall_us_per_publication": round(usec / max(calls, 1), 1),
        "busiest_master_cpu_share": round(max(net[p] for p in masters) / window, 3),
        "load_average": {"before": load_before, "after": load_after},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=3, help="publisher processes")
    parser.add_argument("--concurrency", type=int, default=64, help="publishers per process")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--pipelined", type=int, default=60_000, help="pipelined publications")
    parser.add_argument("--single-port", type=int, default=7110)
    parser.add_argument("--cluster-port", type=int, default=7101)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server must be on PATH")

    results = []
    folder = Path(tempfile.mkdtemp(prefix="arena-bench-cluster-"))
    single, processes = start_single(args.single_port, folder)
    try:
        results.append(run_case("single", single, args))
        results.append(run_pipelined("single", single, args))
    finally:
        for process in processes:
            process.kill()
            process.wait(10)
    cluster = LocalCluster(base_port=args.cluster_port)
    cluster.start()
    try:
        servers = Servers(cluster.url, cluster.ports)
        results.append(run_case("cluster", servers, args))
        results.append(run_pipelined("cluster", servers, args))
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)

    print(
        f"{'backend':8} {'phase':9} {'pub/s':>7} {'deliv/s':>8} {'errors':>6}"
        f" {'Redis CPU µs/pub: masters':>26} {'all nodes':>10} {'busiest master':>15}"
    )
    for row in results:
        print(
            f"{row['backend']:8} {row['phase']:9} {row['publications_per_s']:>7} "
            f"{row.get('deliveries_per_s', '-'):>8} {row.get('errors', '-'):>6} "
            f"{row['master_cpu_us_per_publication']:>26} "
            f"{row['all_redis_cpu_us_per_publication']:>10} "
            f"{row['busiest_master_cpu_share']:>14.0%}"
        )
    path = save_json(
        "cluster-broker",
        {"machine": machine(), "args": vars(args), "results": results, "date": time.ctime()},
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
