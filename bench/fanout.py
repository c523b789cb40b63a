"""Fan-out benchmark: the project against a naive aiohttp broadcast server, same run, same load.

One command, loopback only, bounded in time (about 8 minutes, 12 with ``--soak``; ``--quick``
about 1)::

    .venv/bin/python -m bench.fanout                # memory + Redis brokers and the raw ceiling
    .venv/bin/python -m bench.fanout --quick        # shorter phases, to check the tooling
    .venv/bin/python -m bench.fanout --soak         # also 10,000 connections held for 60 s
    .venv/bin/python -m bench.fanout --rounds 6     # targets interleaved 6 times: medians, ranges
    .venv/bin/python -m bench.fanout --base /tmp/base   # adds <target>@base: that checkout's code

For every target (``arena-memory``, ``arena-redis``, ``raw-aiohttp``; also ``arena-redis-2w``, the
Redis broker with ``serve --workers 2``, and ``arena-centrifuge`` / ``arena-redis-centrifuge``, the
memory / Redis server with subscribers speaking Centrifugo's client protocol at
``/connection/websocket``, when named in ``--targets``) it starts a fresh server
per case and measures, with the load generator of ``bench/loadgen.py`` in separate processes:

* ``connect``: seconds to open, authenticate and subscribe N connections; server RSS per idle
  connection (RSS after minus RSS before, divided by N);
* ``throughput``: delivered messages/s on one channel with N subscribers while publishers post
  200-byte payloads as fast as the server answers (same publisher concurrency for every target);
  beside it, the server process's own CPU time (``/proc/<pid>/stat`` utime+stime, workers
  included) per delivery and per publication over the same window;
* ``latency``: publish->deliver p50/p99/max at a fixed rate (50/s x 1,000 and 10/s x 5,000
  subscribers), losses, and the drain time after the last publication (no backlog: drain is about
  one latency);
* ``many``: 2,000 connections, each on its own channel plus one shared channel;
* ``soak`` (``--soak``): 10,000 connections held for 60 s with 10 s heartbeats; disconnects
  (with their close codes, and the project's own ``ws_disconnects`` metric).

The generator's own ceiling is measured first against the raw server's ``/bench/blast``
endpoint (pre-built frames in batches), so it can be compared with the servers' numbers.

Writes ``bench/results/fanout-<UTC date-time>.json`` and ``.png`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench.common import DATABASE_URL, REDIS_URL, RESULTS, ROOT, free_port, machine
from bench.loadgen import Workers

VENV_BIN = Path(sys.executable).parent
JWT_SECRET = "bench-jwt-secret-that-is-long-enough-0123456789abcdef"  # noqa: S105
SERVICE_SECRET = "bench-service-secret-that-is-long-enough-0123456789"  # noqa: S105
PAYLOAD_BYTES = 200
FIXED_RATES = {1000: 50.0, 5000: 10.0}
#: seconds between server pings in the soak; a pong must come back within half of it
SOAK_HEARTBEAT = 10.0


def _pad() -> str:
    sample = orjson.dumps({"t": int(time.time() * 1e6), "p": ""})
    return "x" * (PAYLOAD_BYTES - len(sample))


PAD = _pad()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of process ``pid`` and its live descendants (``--workers``),
    from ``/proc/<pid>/stat``: the server's own CPU, whatever else runs on the machine."""
    return sum(cpu_times(pid))


def family(pid: int) -> list[int]:
    """``pid`` and its live descendants (the workers of ``serve --workers``)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(child) for child in (task / "children").read_text().split())
    return found


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` and its live descendants."""
    user = system = 0.0
    for member in family(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
            # fields[11], fields[12] are utime, stime (stat fields 14 and 15)
            user += int(fields[11]) / _CLK_TCK
            system += int(fields[12]) / _CLK_TCK
    return user, system


def io_calls(pid: int) -> tuple[int, int]:
    """``(syscr, syscw)`` of process ``pid`` and its live descendants, from ``/proc/<pid>/io``:
    their read- and write-family system calls (socket ``read``/``write``/``writev`` included)."""
    reads = writes = 0
    for member in family(pid):
        with contextlib.suppress(OSError, ValueError, KeyError):
            text = Path(f"/proc/{member}/io").read_text()
            fields = dict(line.split(": ") for line in text.splitlines())
            reads += int(fields["syscr"])
            writes += int(fields["syscw"])
    return reads, writes


def machine_busy() -> tuple[int, int]:
    """``(busy, total)`` jiffies of all CPUs from ``/proc/stat`` (idle and iowait not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])
    return total - values[3] - values[4], total


@dataclass
class Usage:
    """Who used how much CPU (seconds) and how many socket calls, at one moment."""

    at: float
    server_cpu: float
    server_times: tuple[float, float]
    server_writes: int
    generator_cpu: float
    generator_reads: int
    controller_cpu: float
    machine: tuple[int, int]

    @classmethod
    def now(cls, server: Server, workers: Workers) -> Usage:
        self_usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            at=time.monotonic(),
            server_cpu=server.cpu(),
            server_times=server.cpu_times(),
            server_writes=io_calls(server.process.pid)[1],
            generator_cpu=sum(cpu_seconds(pid) for pid in workers.pids),
            generator_reads=sum(io_calls(pid)[0] for pid in workers.pids),
            controller_cpu=self_usage.ru_utime + self_usage.ru_stime,
            machine=machine_busy(),
        )


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentiles(values: list[int]) -> dict[str, float | None]:
    """p50/p99/max of microsecond samples, in milliseconds."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "samples": 0}
    ordered = sorted(values)
    n = len(ordered)
    return {
        "p50_ms": ordered[n // 2] / 1000,
        "p99_ms": ordered[min(n - 1, int(n * 0.99))] / 1000,
        "max_ms": ordered[-1] / 1000,
        "samples": n,
    }


# -- servers -------------------------------------------------------------------------------


@dataclass
class Server:
    """A running server process."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    token: str
    publish_token: str | None
    log_path: Path
    #: what the subscribers speak: our protocol at /ws, or Centrifugo's (``centrifuge``)
    protocol: str = "arena"

    @property
    def ws_path(self) -> str:
        return "/connection/websocket" if self.protocol == "centrifuge" else "/ws"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        return rss_bytes(self.process.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def cpu_times(self) -> tuple[float, float]:
        return cpu_times(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _wait_ready(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log_path.read_text()[-2000:]
            raise RuntimeError(f"{server.name} exited during startup:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not listen within {timeout}s")


@dataclass
class Target:
    """How to start one kind of server."""

    name: str
    start: Callable[[float], Server]


def raw_target(workdir: Path) -> Target:
    def start(beat: float) -> Server:
        port = free_port()
        log_path = workdir / f"raw-{port}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.raw_server", f"--port={port}", f"--heartbeat={beat}"],
            cwd=ROOT,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=_raise_nofile,
        )
        server = Server("raw-aiohttp", process, port, "any", None, log_path)
        _wait_ready(server)
        return server

    return Target("raw-aiohttp", start)


def project_env(database_url: str, redis_url: str | None, workdir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "ENV": "development",
        "HOST": "127.0.0.1",
        "DATABASE_URL": database_url,
        "DATA_DIR": str(workdir / "data"),
        "JWT_SECRET": JWT_SECRET,
        "SERVICE_SECRET": SERVICE_SECRET,
        "ACCESS_TOKEN_TTL": "86400",
        "LOG_LEVEL": "WARNING",
        "UVLOOP": "true",
        "WS_MAX_CONNECTIONS_PER_USER": "20000",
        # Every generator socket comes from 127.0.0.1, many of them connecting at once.
        "WS_MAX_UNAUTHENTICATED_PER_IP": "100000",
        # Every generator connection is the same user: lift the per-user command budget.
        "WS_USER_COMMAND_RATE": "1000000",
        "WS_USER_COMMAND_BURST": "1000000",
    }
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
        env["REDIS_PREFIX"] = f"bench-{uuid.uuid4().hex[:8]}"
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(VENV_BIN / "arena-realtime"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"arena-realtime {args[0]} failed: {done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def project_target(
    name: str,
    database_url: str,
    redis_url: str | None,
    workdir: Path,
    gc_probe: bool = False,
    workers: int = 1,
    protocol: str = "arena",
    checkout: Path | None = None,
) -> Target:
    env = project_env(database_url, redis_url, workdir)
    if checkout is not None:
        # another checkout's code (same venv), e.g. a frozen baseline for an A/B in one run
        env["PYTHONPATH"] = str(checkout)
    command = (
        [sys.executable, "-m", "bench.gc_probe"]
        if gc_probe
        else [str(VENV_BIN / "arena-realtime"), "serve", "--workers", str(workers)]
    )
    tokens: dict[str, str] = {}

    def start(heartbeat: float) -> Server:
        if not tokens:
            _cli(env, "migrate")
            tokens["user"] = _cli(env, "token", "--email", "bench@example.com", "--role", "admin")
            tokens["service"] = _cli(env, "service-token", "--name", "bench")
        port = free_port()
        log_path = workdir / f"{name}-{port}.log"
        process = subprocess.Popen(
            command,
            env={**env, "PORT": str(port), "WS_HEARTBEAT": str(heartbeat)},
            cwd=ROOT,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=_raise_nofile,
        )
        server = Server(name, process, port, tokens["user"], tokens["service"], log_path, protocol)
        _wait_ready(server)
        return server

    return Target(name, start)


@contextlib.contextmanager
def bench_database(admin_url: str) -> Iterator[str]:
    """A fresh database for the run, dropped afterwards."""
    name = f"bench_fanout_{uuid.uuid4().hex[:8]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        base, _, _ = admin_url.rpartition("/")
        yield f"{base}/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- publishing ----------------------------------------------------------------------------


class Publisher:
    """Posts timestamped 200-byte payloads to ``/api/v1/channels/{channel}/publish``."""

    def __init__(self, server: Server) -> None:
        headers = {"Content-Type": "application/json"}
        if server.publish_token:
            headers["Authorization"] = f"Bearer {server.publish_token}"
        self.session = aiohttp.ClientSession(
            server.base_url, headers=headers, connector=aiohttp.TCPConnector(limit=256)
        )
        self.final: dict[str, int] = {}
        self.sent = 0
        self.errors = 0
        #: ``time.monotonic()`` of every acknowledged publication, in order
        self.acked: list[float] = []

    async def publish(self, channel: str) -> None:
        body = orjson.dumps({"data": {"t": int(time.time() * 1e6), "p": PAD}})
        try:
            async with self.session.post(f"/api/v1/channels/{channel}/publish", data=body) as resp:
                if resp.status != 200:
                    self.errors += 1
                    return
                offset = (await resp.json())["offset"]
        except aiohttp.ClientError:
            self.errors += 1
            return
        self.sent += 1
        self.acked.append(time.monotonic())
        if offset > self.final.get(channel, 0):
            self.final[channel] = offset

    async def flood(self, channel: str, stop: asyncio.Event, concurrency: int) -> None:
        """``concurrency`` loops publishing back to back until ``stop`` is set."""

        async def loop() -> None:
            while not stop.is_set():
                await self.publish(channel)

        await asyncio.gather(*(loop() for _ in range(concurrency)))

    async def at_rate(self, channels: Callable[[int], str], rate: float, seconds: float) -> None:
        """``rate`` publications per second on a fixed schedule (never waits for replies)."""
        start = time.monotonic()
        tasks = set()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.publish(channels(i)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    async def close(self) -> None:
        await self.session.close()


async def drain(workers: Workers, final: dict[str, int], timeout: float) -> dict[str, Any]:
    """Wait until every subscriber has everything up to ``final`` (or ``timeout``)."""
    started = time.monotonic()
    while True:
        stats = await asyncio.to_thread(workers.stats, final, False)
        if stats["lost"] == 0 or time.monotonic() - started > timeout:
            stats["drain_s"] = time.monotonic() - started
            return stats
        await asyncio.sleep(0.05)


# -- cases ---------------------------------------------------------------------------------


async def throughput_case(
    server: Server, workers: Workers, channel: str, seconds: float, concurrency: int
) -> dict[str, Any]:
    """Delivered messages/s while publishers flood one channel.

    The window is measured with each generator process's own clock: a saturated generator may
    answer a snapshot request late, so the controller's clock would misplace the window (and
    the flood only stops after the second snapshot, so it always covers the window).
    """
    publisher = Publisher(server)
    await workers.acall("reset")
    warmup = 1.0
    stop = asyncio.Event()
    flood = asyncio.create_task(publisher.flood(channel, stop, concurrency))
    await asyncio.sleep(warmup)
    before = await asyncio.to_thread(workers.stats, None, False)
    usage_before = Usage.now(server, workers)
    await asyncio.sleep(seconds)
    usage_after = Usage.now(server, workers)
    after = await asyncio.to_thread(workers.stats, None, False)
    stop.set()
    await flood
    delivered_per_s = sum(
        (frames_after - frames_before) / (at_after - at_before)
        for (at_before, frames_before), (at_after, frames_after) in zip(
            before["by_worker"], after["by_worker"], strict=True
        )
    )
    window = (min(before["at"]), max(after["at"]))
    acked = bisect.bisect(publisher.acked, window[1]) - bisect.bisect(publisher.acked, window[0])
    # Server CPU over the controller's own window (CPU seconds are rates over wall time, so
    # the same-window rates divide: CPU s per s / deliveries per s).
    cpu_wall = usage_after.at - usage_before.at
    cpu_per_s = (usage_after.server_cpu - usage_before.server_cpu) / cpu_wall if cpu_wall else 0.0
    publications_per_s = acked / (window[1] - window[0])
    # The kernel's share (system time: socket writes, loopback TCP) against the interpreter's.
    user_per_s, system_per_s = (
        (after_s - before_s) / cpu_wall if cpu_wall > 0 else 0.0
        for before_s, after_s in zip(
            usage_before.server_times, usage_after.server_times, strict=True
        )
    )
    # The same window for the generator, the controller (publishers) and the whole machine:
    # who is saturated, and how many socket writes / reads a delivery costs.
    delivered_in_window = delivered_per_s * cpu_wall
    generator_cpu_per_s = (usage_after.generator_cpu - usage_before.generator_cpu) / cpu_wall
    busy = usage_after.machine[0] - usage_before.machine[0]
    jiffies = usage_after.machine[1] - usage_before.machine[1]
    frames_bytes = after["bytes"] - before["bytes"]
    frames_count = after["frames"] - before["frames"]
    finished = await drain(workers, publisher.final, 15.0)
    stats = await asyncio.to_thread(workers.stats, publisher.final, True)
    await publisher.close()
    return {
        "delivered_per_s": delivered_per_s,
        "publications_per_s": publications_per_s,
        "window_s": window[1] - window[0],
        "server_cpu_per_s": cpu_per_s,
        "cpu_us_per_delivery": cpu_per_s / delivered_per_s * 1e6 if delivered_per_s else None,
        "cpu_user_us_per_delivery": (
            user_per_s / delivered_per_s * 1e6 if delivered_per_s else None
        ),
        "cpu_system_us_per_delivery": (
            system_per_s / delivered_per_s * 1e6 if delivered_per_s else None
        ),
        "cpu_us_per_publication": (
            cpu_per_s / publications_per_s * 1e6 if publications_per_s else None
        ),
        "generator_cpu_per_s": generator_cpu_per_s,
        "generator_cpu_us_per_message": (
            generator_cpu_per_s / delivered_per_s * 1e6 if delivered_per_s else None
        ),
        "controller_cpu_per_s": (usage_after.controller_cpu - usage_before.controller_cpu)
        / cpu_wall,
        "machine_busy": busy / jiffies if jiffies else None,
        "deliveries_per_publication": (
            delivered_per_s / publications_per_s if publications_per_s else None
        ),
        "bytes_per_delivery": frames_bytes / frames_count if frames_count else None,
        "server_writes_per_delivery": (
            (usage_after.server_writes - usage_before.server_writes) / delivered_in_window
            if delivered_in_window
            else None
        ),
        "generator_reads_per_delivery": (
            (usage_after.generator_reads - usage_before.generator_reads) / delivered_in_window
            if delivered_in_window
            else None
        ),
        "publish_errors": publisher.errors,
        "lost": finished["lost"],
        "gaps": stats["gaps"],
        "disconnects": stats["disconnects"],
        "latency_under_saturation": percentiles(stats["latencies"]),
    }


async def rate_case(
    server: Server,
    workers: Workers,
    schedules: list[tuple[Callable[[int], str], float]],
    seconds: float,
) -> dict[str, Any]:
    """Fixed-rate publications: latency percentiles, losses, drain time."""
    publisher = Publisher(server)
    await workers.acall("reset")
    started = time.time()
    cpu_before = server.cpu()
    await asyncio.gather(*(publisher.at_rate(pick, rate, seconds) for pick, rate in schedules))
    finished = await drain(workers, publisher.final, 15.0)
    cpu = server.cpu() - cpu_before
    window = (started, time.time())
    stats = await asyncio.to_thread(workers.stats, publisher.final, True)
    await publisher.close()
    return {
        **percentiles(stats["latencies"]),
        "delivered": stats["frames"],
        "publications": publisher.sent,
        "publish_errors": publisher.errors,
        "lost": finished["lost"],
        "gaps": stats["gaps"],
        "duplicates": stats["duplicates"],
        "disconnects": stats["disconnects"],
        "close_codes": stats["close_codes"],
        "drain_s": finished["drain_s"],
        # the same fixed load for every target: server CPU per delivery compares like for like
        "cpu_us_per_delivery": cpu / stats["frames"] * 1e6 if stats["frames"] else None,
        "gc2_pauses_ms": gc_pauses(server, window),
    }


def connect_case(server: Server, workers: Workers, channel_sets: list[list[str]]) -> dict[str, Any]:
    """Open the connections; connect time and RSS per connection."""
    time.sleep(0.5)
    before = server.rss()
    result = workers.connect(
        "127.0.0.1",
        server.port,
        server.token,
        channel_sets,
        concurrency=100,
        path=server.ws_path,
        protocol=server.protocol,
    )
    time.sleep(1.0)
    after = server.rss()
    n = max(1, result["connected"])
    return {
        "n": len(channel_sets),
        "connected": result["connected"],
        "failed": result["failed"],
        "errors": result["errors"],
        "connect_s": result["seconds"],
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "rss_per_conn_kb": (after - before) / n / 1024,
    }


@contextlib.contextmanager
def profiled(server: Server, folder: Path | None, label: str) -> Iterator[None]:
    """Sample ``server`` with py-spy (collapsed stacks) while the block runs, if ``folder``."""
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{server.name}-{label}.folded"
    pid = str(server.process.pid)
    options = ["--format", "raw", "--rate", "250", "--nonblocking", "--output", str(out)]
    spy = subprocess.Popen(
        [str(VENV_BIN / "py-spy"), "record", "--pid", pid, *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
        print(f"    profile: {out}", flush=True)


def run_target(target: Target, workers: Workers, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in args.sizes:
        print(f"  [{target.name}] N={n}", flush=True)
        server = target.start(25.0)
        try:
            case = connect_case(server, workers, [["alerts:bench"]] * n)
            with profiled(server, args.profile, f"throughput-{n}"):
                case["throughput"] = asyncio.run(
                    throughput_case(server, workers, "alerts:bench", args.seconds, args.concurrency)
                )
            rate = FIXED_RATES.get(n, 10.0)
            schedule = [(lambda i: "alerts:bench", rate)]
            with profiled(server, args.profile, f"rate-{n}"):
                fixed = asyncio.run(rate_case(server, workers, schedule, args.latency_seconds))
            case["fixed_rate"] = {"publications_per_s": rate, **fixed}
            out[str(n)] = case
        finally:
            workers.call("close")
            server.stop()
    many = args.many
    if many > 0:
        out["many"] = many_case(target, workers, many, args.latency_seconds, args.profile)
    if args.soak:
        out["soak"] = soak(target, workers, args.soak_connections, args.soak_seconds, args.profile)
    return out


def many_case(
    target: Target, workers: Workers, many: int, seconds: float, profile: Path | None
) -> dict[str, Any]:
    """Each connection on its own channel plus one shared channel."""
    print(f"  [{target.name}] many channels: {many} connections", flush=True)
    server = target.start(25.0)
    try:
        sets = [[f"alerts:c{i}", "alerts:shared"] for i in range(many)]
        case = connect_case(server, workers, sets)
        schedule = [(lambda i: "alerts:shared", 10.0), (lambda i: f"alerts:c{i % many}", 200.0)]
        with profiled(server, profile, f"many-{many}"):
            case["fixed_rate"] = asyncio.run(rate_case(server, workers, schedule, seconds))
        return case
    finally:
        workers.call("close")
        server.stop()


def gc_pauses(server: Server, window: tuple[float, float]) -> list[float] | None:
    """Full-collection pauses (ms) the server logged during ``window`` (``--gc-probe`` only)."""
    pauses: list[float] = []
    probed = False
    for line in server.log_path.read_text(errors="replace").splitlines():
        if not line.startswith("GC2 "):
            continue
        probed = True
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        if window[0] <= float(fields["at"]) <= window[1]:
            pauses.append(float(fields["dur"].removesuffix("ms")))
    return pauses if probed else None


def server_metrics(server: Server, name: str) -> list[str]:
    """The project's Prometheus samples whose name contains ``name`` (empty for the raw server)."""
    if server.publish_token is None:
        return []
    try:
        url = f"{server.base_url}/metrics"  # loopback http only
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310
            text = resp.read().decode()
    except OSError as exc:
        return [f"unavailable: {exc}"]
    return [line for line in text.splitlines() if name in line and not line.startswith("#")]


def soak(
    target: Target, workers: Workers, n: int, seconds: float, profile: Path | None = None
) -> dict[str, Any]:
    """Hold ``n`` connections with heartbeats for ``seconds``; one publication per second."""
    print(f"  [{target.name}] soak: {n} connections for {seconds:.0f}s", flush=True)
    server = target.start(SOAK_HEARTBEAT)
    try:
        case = connect_case(server, workers, [["alerts:soak"]] * n)
        with profiled(server, profile, f"soak-{n}"):
            fixed = asyncio.run(
                rate_case(server, workers, [(lambda i: "alerts:soak", 1.0)], seconds)
            )
        case["fixed_rate"] = {"publications_per_s": 1.0, **fixed}
        case["open_at_end"] = workers.stats(None, False)["open"]
        case["server_disconnect_metrics"] = server_metrics(server, "ws_disconnects")
        return case
    finally:
        workers.call("close")
        server.stop()


def generator_ceiling(workdir: Path, workers: Workers, n: int, seconds: float) -> dict[str, Any]:
    """Frames/s the generator parses when the server only writes pre-built batches."""
    server = raw_target(workdir).start(25.0)
    try:
        workers.connect("127.0.0.1", server.port, "any", [["alerts:blast"]] * n)

        async def run() -> tuple[int, float]:
            await workers.acall("reset")
            started = time.perf_counter()
            async with (
                aiohttp.ClientSession(server.base_url) as session,
                session.post(f"/bench/blast/alerts:blast?seconds={seconds}&batch=50") as resp,
            ):
                await resp.read()
            elapsed = time.perf_counter() - started
            stats = await asyncio.to_thread(workers.stats, None, False)
            return stats["frames"], elapsed

        frames, elapsed = asyncio.run(run())
        return {"n": n, "frames_per_s": frames / elapsed, "workers": len(workers.pipes)}
    finally:
        workers.call("close")
        server.stop()


# -- report --------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def compare(results: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    """The issue's targets as ratios against the raw ceiling of the same run."""
    rows = centrifuge_vs_ws(results, sizes)
    raw = results["targets"].get("raw-aiohttp")
    if not raw or "error" in raw:
        return rows
    for name in ("arena-memory", "arena-redis"):
        ours = results["targets"].get(name)
        if not ours or "error" in ours:
            continue
        goal = 1.5 if name == "arena-memory" else 1.2
        for n in sizes:
            key = str(n)
            ours_tput = ours[key]["throughput"]["delivered_per_s"]
            r = _ratio(ours_tput, raw[key]["throughput"]["delivered_per_s"])
            rows.append(_row(name, f"delivered msg/s N={n}", r, goal, ">="))
            r = _ratio(ours[key]["fixed_rate"]["p99_ms"], raw[key]["fixed_rate"]["p99_ms"])
            rows.append(_row(name, f"p99 latency N={n}", r, 1.2, "<="))
            r = _ratio(ours[key]["rss_per_conn_kb"], raw[key]["rss_per_conn_kb"])
            rows.append(_row(name, f"RSS/conn N={n}", r, 1.3, "<="))
    return rows


#: Centrifugo-protocol target -> the same server with /ws subscribers
CENTRIFUGE_BASELINES = {"arena-centrifuge": "arena-memory", "arena-redis-centrifuge": "arena-redis"}


def centrifuge_vs_ws(results: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    """Subscribers on ``/connection/websocket`` against the same server's ``/ws`` subscribers
    of the same run: delivered msg/s (goal >= 0.9) and server CPU per delivery."""
    rows: list[dict[str, Any]] = []
    for name, baseline in CENTRIFUGE_BASELINES.items():
        ours, base = results["targets"].get(name), results["targets"].get(baseline)
        if not ours or not base or "error" in ours or "error" in base:
            continue
        label = f"{name} vs {baseline}"
        for n in sizes:
            mine, theirs = ours[str(n)]["throughput"], base[str(n)]["throughput"]
            r = _ratio(mine["delivered_per_s"], theirs["delivered_per_s"])
            rows.append(_row(label, f"delivered msg/s N={n}", r, 0.9, ">="))
            r = _ratio(mine["cpu_us_per_delivery"], theirs["cpu_us_per_delivery"])
            rows.append(_row(label, f"CPU µs/delivery flood N={n}", r, 1.1, "<="))
            mine, theirs = ours[str(n)]["fixed_rate"], base[str(n)]["fixed_rate"]
            r = _ratio(mine.get("cpu_us_per_delivery"), theirs.get("cpu_us_per_delivery"))
            rows.append(_row(label, f"CPU µs/delivery fixed rate N={n}", r, 1.1, "<="))
    return rows


def _row(target: str, metric: str, ratio: float | None, goal: float, op: str) -> dict[str, Any]:
    ok = None if ratio is None else (ratio >= goal if op == ">=" else ratio <= goal)
    return {"target": target, "metric": metric, "ratio": ratio, "goal": f"{op} {goal}", "ok": ok}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(results: dict[str, Any], sizes: list[int]) -> str:
    """A Markdown table of the run."""
    lines = [
        "| target | N | connect s | RSS/conn KiB | delivered msg/s | pub/s "
        "| CPU µs/delivery | CPU µs/pub | fixed rate "
        "| p50 ms | p99 ms | max ms | lost | drain s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, data in results["targets"].items():
        if "error" in data:
            lines.append(f"| {name} | error: {data['error'][:80]} |" + " |" * 12)
            continue
        for key in [str(n) for n in sizes] + ["many", "soak"]:
            case = data.get(key)
            if case is None:
                continue
            tput = case.get("throughput", {})
            fixed = case["fixed_rate"]
            label = {"many": f"{case['n']} (many ch.)", "soak": f"{case['n']} (soak)"}.get(key, key)
            lost = (tput.get("lost") or 0) + (fixed.get("lost") or 0)
            lines.append(
                f"| {name} | {label} | {_fmt(case['connect_s'], 2)} "
                f"| {_fmt(case['rss_per_conn_kb'])} | {_fmt(tput.get('delivered_per_s'), 0)} "
                f"| {_fmt(tput.get('publications_per_s'))} "
                f"| {_fmt(tput.get('cpu_us_per_delivery'), 2)} "
                f"| {_fmt(tput.get('cpu_us_per_publication'), 0)} "
                f"| {_fmt(fixed.get('publications_per_s', 'mixed'))} "
                f"| {_fmt(fixed['p50_ms'], 2)} | {_fmt(fixed['p99_ms'], 2)} "
                f"| {_fmt(fixed['max_ms'], 2)} | {lost} | {_fmt(fixed['drain_s'], 2)} |"
            )
    ceiling = results.get("generator_ceiling")
    if ceiling:
        lines.append("")
        lines.append(
            f"Load generator ceiling: {ceiling['frames_per_s']:,.0f} frames/s "
            f"({ceiling['workers']} processes, N={ceiling['n']})."
        )
    rows = results.get("targets_vs_ceiling", [])
    if rows:
        lines += ["", "| target | metric | ratio to raw | goal | ok |", "|---|---|---|---|---|"]
        for row in rows:
            ok = {True: "yes", False: "NO", None: "-"}[row["ok"]]
            lines.append(
                f"| {row['target']} | {row['metric']} | {_fmt(row['ratio'], 2)} "
                f"| {row['goal']} | {ok} |"
            )
    return "\n".join(lines)


#: per-round throughput numbers shown by :func:`rounds_table`
ROUND_METRICS = (
    ("delivered_per_s", "delivered msg/s", 0),
    ("cpu_us_per_delivery", "server CPU µs/delivery", 2),
    ("generator_cpu_us_per_message", "generator CPU µs/msg", 2),
    ("server_cpu_per_s", "server CPU s/s", 2),
    ("generator_cpu_per_s", "generator CPU s/s", 2),
    ("machine_busy", "machine busy", 2),
    ("server_writes_per_delivery", "server writes/delivery", 3),
    ("bytes_per_delivery", "bytes/delivery", 0),
    ("deliveries_per_publication", "deliveries/publication", 0),
)


def rounds_table(rounds: list[dict[str, Any]], sizes: list[int]) -> str:
    """The throughput phase of every round: per target the median and the range of each
    metric, then each Centrifugo-protocol target's ratio to its ``/ws`` twin of the same round
    (median and range over the rounds)."""
    lines = [
        "| target | N | metric | median | min | max | per round |",
        "|---|---|---|---|---|---|---|",
    ]

    def values(name: str, key: str, metric: str) -> list[float]:
        found = []
        for done in rounds:
            tput = done.get(name, {}).get(key, {}).get("throughput", {})
            if tput.get(metric) is not None:
                found.append(float(tput[metric]))
        return found

    def line(name: str, key: str, label: str, found: list[float], digits: int) -> None:
        if not found:
            return
        each = " ".join(_fmt(v, digits) for v in found)
        lines.append(
            f"| {name} | {key} | {label} | {_fmt(statistics.median(found), digits)} "
            f"| {_fmt(min(found), digits)} | {_fmt(max(found), digits)} | {each} |"
        )

    names = list(rounds[0])
    for key in [str(n) for n in sizes]:
        for name in names:
            for metric, label, digits in ROUND_METRICS:
                line(name, key, label, values(name, key, metric), digits)
        for name, baseline in CENTRIFUGE_BASELINES.items():
            if name not in names or baseline not in names:
                continue
            for metric, label, _digits in ROUND_METRICS[:3]:
                ratios = [
                    r
                    for done in rounds
                    if (
                        r := _ratio(
                            done[name].get(key, {}).get("throughput", {}).get(metric),
                            done[baseline].get(key, {}).get("throughput", {}).get(metric),
                        )
                    )
                    is not None
                ]
                line(f"{name} ÷ {baseline}", key, label, ratios, 2)
    return "\n".join(lines)


def plot(results: dict[str, Any], sizes: list[int], path: Path) -> None:
    """Throughput and p99 latency against N, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, data in results["targets"].items():
        if "error" in data:
            continue
        xs = [n for n in sizes if str(n) in data]
        left.plot(xs, [data[str(n)]["throughput"]["delivered_per_s"] for n in xs], "o-", label=name)
        right.plot(xs, [data[str(n)]["fixed_rate"]["p99_ms"] for n in xs], "o-", label=name)
    left.set(title="Delivered messages/s (unthrottled, 1 channel)", xlabel="subscribers N")
    right.set(title="p99 publish->deliver latency (fixed rate)", xlabel="subscribers N")
    right.set_ylabel("ms")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"Fan-out benchmark {results['date']} ({results['machine']['cores']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases to check the tooling")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput phase length")
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=30.0,
        help="length of each fixed-rate phase (at 10/s, 30 s gives 300 publications: one slow"
        " publication out of 100 would otherwise decide p99 on its own)",
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument(
        "--many", type=int, default=2000, help="connections in the many case (0: skip it)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="publishers when flooding")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--targets", nargs="+", default=["arena-memory", "arena-redis", "raw-aiohttp"]
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the targets this many times, interleaved (every other round in reverse"
        " order); the tables show round 1, the rounds table medians and spread",
    )
    parser.add_argument(
        "--base",
        type=Path,
        default=None,
        help="another checkout (same venv): adds <target>@base for each arena target",
    )
    parser.add_argument("--soak", action="store_true", help="also hold 10,000 connections 60 s")
    parser.add_argument("--soak-connections", type=int, default=10_000)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument(
        "--database-url",
        default=DATABASE_URL,
    )
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--gc-probe",
        action="store_true",
        help="run the project under bench.gc_probe; report full GC pauses in each latency phase",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="folder for py-spy profiles (collapsed stacks) of each server phase",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 2.0)
        args.latency_seconds = min(args.latency_seconds, 4.0)
        args.sizes = [min(n, 1000) for n in args.sizes[:1]] + (
            [2000] if len(args.sizes) > 1 else []
        )
        args.many = min(args.many, 500)
        args.soak_seconds = min(args.soak_seconds, 15.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _raise_nofile()
    stamp = time.strftime("%Y-%m-%dT%H%M", time.gmtime())
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.fanout " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {**machine(), "load_avg_at_start": os.getloadavg()},
        "settings": {
            "sizes": args.sizes,
            "seconds": args.seconds,
            "latency_seconds": args.latency_seconds,
            "publisher_concurrency": args.concurrency,
            "payload_bytes": PAYLOAD_BYTES,
            "fixed_rates": {str(n): FIXED_RATES.get(n, 10.0) for n in args.sizes},
            "many_connections": args.many,
            "generator_processes": args.workers,
        },
        "targets": {},
    }
    started = time.monotonic()
    workers = Workers(args.workers)
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        workdir = Path(tmp)
        try:
            print("generator ceiling", flush=True)
            results["generator_ceiling"] = generator_ceiling(workdir, workers, 1000, args.seconds)
            with bench_database(args.database_url) as database_url:
                available = {
                    "arena-memory": lambda: project_target(
                        "arena-memory", database_url, None, workdir, args.gc_probe
                    ),
                    "arena-redis": lambda: project_target(
                        "arena-redis", database_url, args.redis_url, workdir, args.gc_probe
                    ),
                    "arena-redis-2w": lambda: project_target(
                        "arena-redis-2w", database_url, args.redis_url, workdir, workers=2
                    ),
                    "raw-aiohttp": lambda: raw_target(workdir),
                    # the same servers, subscribers speaking Centrifugo's protocol
                    "arena-centrifuge": lambda: project_target(
                        "arena-centrifuge", database_url, None, workdir, protocol="centrifuge"
                    ),
                    "arena-redis-centrifuge": lambda: project_target(
                        "arena-redis-centrifuge",
                        database_url,
                        args.redis_url,
                        workdir,
                        protocol="centrifuge",
                    ),
                }
                if args.base is not None:
                    # "<target>@base": the same target running the --base checkout's code
                    base = args.base.resolve()
                    names: list[str] = []
                    for name in args.targets:
                        names.append(name)
                        if name.startswith("arena-") and "2w" not in name:
                            broker_url = args.redis_url if "redis" in name else None
                            protocol = "centrifuge" if "centrifuge" in name else "arena"
                            available[f"{name}@base"] = functools.partial(
                                project_target,
                                f"{name}@base",
                                database_url,
                                broker_url,
                                workdir,
                                protocol=protocol,
                                checkout=base,
                            )
                            names.append(f"{name}@base")
                    args.targets = names
                targets = {name: available[name]() for name in args.targets}
                rounds: list[dict[str, Any]] = []
                for round_index in range(args.rounds):
                    # Interleaved rounds: A B A B ..., every other round in reverse order.
                    order = args.targets if round_index % 2 == 0 else args.targets[::-1]
                    done: dict[str, Any] = {}
                    for name in order:
                        print(f"{name} (round {round_index + 1}/{args.rounds})", flush=True)
                        try:
                            done[name] = run_target(targets[name], workers, args)
                        except Exception as exc:
                            print(f"  {name} failed: {exc}", flush=True)
                            done[name] = {"error": str(exc)}
                            with contextlib.suppress(Exception):
                                workers.call("close")
                    rounds.append({name: done[name] for name in args.targets})
                results["targets"] = rounds[0]
                if args.rounds > 1:
                    results["rounds"] = rounds
        finally:
            workers.shutdown()
    results["elapsed_s"] = time.monotonic() - started
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    results["targets_vs_ceiling"] = compare(results, args.sizes)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"fanout-{stamp}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    png_path = args.out / f"fanout-{stamp}.png"
    plot(results, args.sizes, png_path)
    print()
    print(table(results, args.sizes))
    if "rounds" in results:
        print()
        print(rounds_table(results["rounds"], args.sizes))
    print(f"\nwrote {json_path} and {png_path}")
    print(f"elapsed {results['elapsed_s']:.0f}s; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
