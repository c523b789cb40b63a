"""Reconnect storm: every client loses its connection at once and recovers with ``since``.

One command, loopback only, bounded in time::

    .venv/bin/python -m bench.reconnect_storm                 # 10,000 clients, Redis broker
    .venv/bin/python -m bench.reconnect_storm --clients 2000  # smaller
    .venv/bin/python -m bench.reconnect_storm --mode drop     # the network drops everyone

N clients (spread over ``--processes`` generator processes) connect, authenticate and subscribe to
one channel; a publisher posts to it through the REST publish route at a fixed rate. Then the
storm, while publications go on:

* ``--mode restart``: the server is killed with SIGKILL and started again on the same port (the
  Redis broker keeps history, offsets and epoch);
* ``--mode drop``: the server stays up and every client's socket is shut down at once, without a
  WebSocket close (a network drop, as the server sees it): the reconnect path alone, without the
  process start.

Every client retries with jittered exponential backoff and resubscribes with ``since`` (its last
offset and epoch). ``--profile FILE`` records the (restarted) server with py-spy during the storm
(collapsed stacks, for ``flamegraph.pl`` or speedscope).

Reported: seconds from the kill (or drop) until every client is subscribed again (and from the
restarted server listening), connection errors (retries), clients told ``recovered: false``,
subscribe errors by code, the server's history reads (``broker``: sent to Redis, ``shared``:
joined one in flight), and the
correctness check: every client must have received every offset from its first subscribe up to
the last acknowledged publication exactly once and in order (``missing``, ``duplicates`` and
``out_of_order`` must be 0; a ``recovered: false`` resets the client's expectation and is counted
instead). Server CPU (``/proc``) and Redis CPU (``INFO cpu``) are measured over the storm.

Writes ``bench/results/reconnect-storm-<UTC date-time>.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

from bench.common import DATABASE_URL, REDIS_URL, RESULTS, ROOT, free_port, machine
from bench.fanout import (
    VENV_BIN,
    Server,
    _cli,
    _raise_nofile,
    _wait_ready,
    bench_database,
    project_env,
    server_metrics,
)

CHANNEL = "alerts:storm"
#: reconnect backoff: first delay, cap (seconds); each delay is drawn in [d/2, d] ("equal jitter"),
#: as the bundled JS client does by default (handlers/static/arena-realtime.js: minDelay 500 ms,
#: maxDelay 15 s)
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 15.0
DEBUG = bool(os.environ.get("STORM_DEBUG"))


# -- generator processes -------------------------------------------------------------------


class Client:
    """One subscriber that reconnects by itself and checks what it receives."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.offset: int | None = None  # newest offset received
        self.epoch = ""
        self.subscribed_at = 0.0  # wall time of the latest successful subscribe
        self.subscribes = 0
        self.errors = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.not_recovered = 0
        self.reply_errors: dict[str, int] = {}  # subscribe/authenticate error code -> count
        self.close_codes: dict[int, int] = {}  # close code the server sent -> count
        self.statuses: dict[int, int] = {}  # HTTP status of a refused upgrade -> count
        self.failures: dict[str, int] = {}  # exception of a failed connection -> count
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.stop = False

    def drop(self) -> None:
        """Shut the socket down without a WebSocket close (the server sees the TCP end)."""
        ws = self.ws
        sock = None if ws is None else ws.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def run(self, session: aiohttp.ClientSession) -> None:
        attempt = 0
        while not self.stop:
            try:
                async with session.ws_connect(self.url, heartbeat=None, autoping=True) as ws:
                    self.ws = ws
                    # text frames: the JSON protocol (binary frames belong to other protocols)
                    hello = {"id": 1, "type": "authenticate", "token": self.token}
                    await ws.send_str(orjson.dumps(hello).decode())
                    request: dict[str, Any] = {"id": 2, "type": "subscribe", "channel": CHANNEL}
                    if self.offset is not None:
                        request["since"] = {"offset": self.offset, "epoch": self.epoch}
                    await ws.send_str(orjson.dumps(request).decode())
                    async for msg in ws:
                        if DEBUG:
                            print("DBG", msg.type, msg.data, file=sys.stderr, flush=True)
                        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            break
                        if self._frame(orjson.loads(msg.data)):
                            attempt = 0
                    if ws.close_code is not None and ws.close_code >= 4000:
                        self.close_codes[ws.close_code] = self.close_codes.get(ws.close_code, 0) + 1
                    if self.stop:
                        return
            except aiohttp.WSServerHandshakeError as exc:
                self.statuses[exc.status] = self.statuses.get(exc.status, 0) + 1
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                kind = type(exc).__name__
                self.failures[kind] = self.failures.get(kind, 0) + 1
            self.ws = None
            if self.stop:
                return
            self.errors += 1
            delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2**attempt)
            attempt += 1
            await asyncio.sleep(delay / 2 + random.random() * delay / 2)

    def _frame(self, message: dict[str, Any]) -> bool:
        """Handle one frame; True when it completed a subscribe."""
        kind = message.get("type")
        if kind == "pub":
            self._publication(message["offset"], message["epoch"])
            return False
        if kind == "reply" and message.get("id") == 1 and "error" in message:
            code = str(message["error"].get("code"))
            self.reply_errors[code] = self.reply_errors.get(code, 0) + 1
            return False
        if kind == "reply" and message.get("id") == 2:
            if "error" in message:
                code = str(message["error"].get("code"))
                self.reply_errors[code] = self.reply_errors.get(code, 0) + 1
                raise aiohttp.ClientError(code)
            result = message["result"]
            if result.get("recovered") is False:
                self.not_recovered += 1
                self.offset = None
            for pub in result.get("publications", []):
                self._publication(pub["offset"], pub["epoch"])
            if self.offset is None or result.get("recovered") is False:
                self.offset, self.epoch = result["offset"], result["epoch"]
            self.subscribes += 1
            self.subscribed_at = time.time()
            return True
        return False

    def _publication(self, offset: int, epoch: str) -> None:
        if self.offset is None or epoch != self.epoch:
            self.offset, self.epoch = offset, epoch
            return
        if offset <= self.offset:
            self.duplicates += 1
            return
        if offset != self.offset + 1:
            self.out_of_order += 1
        self.offset = offset


def _generator(conn: multiprocessing.connection.Connection, url: str, token: str, n: int) -> None:
    _raise_nofile()
    asyncio.run(_generate(conn, url, token, n))


async def _generate(
    conn: multiprocessing.connection.Connection, url: str, token: str, n: int
) -> None:
    clients = [Client(url, token) for _ in range(n)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(c.run(session)) for c in clients]
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "status":
                conn.send(
                    {
                        "subscribes": [c.subscribes for c in clients],
                        "subscribed_at": [c.subscribed_at for c in clients],
                        "offsets": [c.offset for c in clients],
                        "errors": sum(c.errors for c in clients),
                        "duplicates": sum(c.duplicates for c in clients),
                        "out_of_order": sum(c.out_of_order for c in clients),
                        "not_recovered": sum(c.not_recovered for c in clients),
                        "reply_errors": _merge(c.reply_errors for c in clients),
                        "close_codes": _merge(c.close_codes for c in clients),
                        "statuses": _merge(c.statuses for c in clients),
                        "failures": _merge(c.failures for c in clients),
                    }
                )
            elif command == "drop":
                for c in clients:
                    c.drop()
                conn.send("dropped")
            elif command == "stop":
                for c in clients:
                    c.stop = True
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                conn.send("stopped")
                return


def _merge(counts: Any) -> dict[Any, int]:
    merged: dict[Any, int] = {}
    for one in counts:
        for key, n in one.items():
            merged[key] = merged.get(key, 0) + n
    return merged


class Generators:
    """The generator processes, asked for their clients' state by pipe."""

    def __init__(self, url: str, token: str, clients: int, processes: int) -> None:
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[Any] = []
        ctx = multiprocessing.get_context("spawn")
        for i in range(processes):
            share = clients // processes + (1 if i < clients % processes else 0)
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_generator, args=(theirs, url, token, share), daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)

    def status(self) -> dict[str, Any]:
        for pipe in self.pipes:
            pipe.send("status")
        replies = [pipe.recv() for pipe in self.pipes]
        merged: dict[str, Any] = {"subscribes": [], "subscribed_at": [], "offsets": []}
        for key in ("errors", "duplicates", "out_of_order", "not_recovered"):
            merged[key] = sum(r[key] for r in replies)
        for key in ("reply_errors", "close_codes", "statuses", "failures"):
            merged[key] = _merge(r[key] for r in replies)
        for r in replies:
            for key in ("subscribes", "subscribed_at", "offsets"):
                merged[key].extend(r[key])
        return merged

    def drop(self) -> None:
        """Every client shuts its socket down, all at once."""
        for pipe in self.pipes:
            pipe.send("drop")
        for pipe in self.pipes:
            pipe.recv()

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for pipe in self.pipes:
            with contextlib.suppress(OSError, EOFError):
                if pipe.poll(20):
                    pipe.recv()
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


# -- controller ----------------------------------------------------------------------------


class Publisher:
    """Posts to ``CHANNEL`` at a fixed rate; keeps the newest acknowledged offset."""

    def __init__(self, base_url: str, token: str) -> None:
        self.session = aiohttp.ClientSession(
            base_url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=10),
        )
        self.acked = 0
        self.final = 0
        self.errors = 0

    async def one(self, i: int) -> None:
        body = orjson.dumps({"data": {"i": i}})
        try:
            async with self.session.post(f"/api/v1/channels/{CHANNEL}/publish", data=body) as r:
                if r.status != 200:
                    self.errors += 1
                    return
                offset = (await r.json())["offset"]
        except (TimeoutError, aiohttp.ClientError):
            self.errors += 1
            return
        self.acked += 1
        self.final = max(self.final, offset)

    async def run(self, rate: float, stop: asyncio.Event) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        i = 0
        while not stop.is_set():
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
        await self.session.close()


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _wait(check: Any, timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return True
        await asyncio.sleep(every)
    return False


async def storm(args: argparse.Namespace, database_url: str, workdir: Path) -> dict[str, Any]:
    env = project_env(database_url, args.redis_url, workdir)
    _cli(env, "migrate")
    token = _cli(env, "token", "--email", "storm@example.com", "--role", "admin")
    service = _cli(env, "service-token", "--name", "storm")
    port = free_port()

    def start() -> Server:
        log_path = workdir / f"server-{time.monotonic_ns()}.log"
        process = subprocess.Popen(
            [str(VENV_BIN / "arena-realtime"), "serve"],
            # PYTHONPATH: the server runs the code of the tree this bench lives in (a baseline
            # checkout runs its own code with the same virtualenv).
            env={**env, "PORT": str(port), "WS_HEARTBEAT": "25", "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=_raise_nofile,
        )
        server = Server("arena-redis", process, port, token, service, log_path)
        _wait_ready(server, 60)
        return server

    rds = redis.Redis.from_url(args.redis_url)
    server = start()
    gens = Generators(f"ws://127.0.0.1:{port}/ws", token, args.clients, args.processes)
    out: dict[str, Any] = {
        "mode": args.mode,
        "clients": args.clients,
        "rate": args.rate,
        "processes": args.processes,
    }
    profiler: subprocess.Popen[bytes] | None = None
    stop = asyncio.Event()
    publishing: asyncio.Task[None] | None = None
    try:
        t = time.monotonic()
        ok = await _wait(
            lambda: all(s >= 1 for s in gens.status()["subscribes"]), args.timeout, 1.0
        )
        out["connect_s"] = time.monotonic() - t
        if not ok:
            raise RuntimeError("clients did not all subscribe before the storm")
        publisher = Publisher(f"http://127.0.0.1:{port}", service)
        publishing = asyncio.create_task(publisher.run(args.rate, stop))
        await asyncio.sleep(args.before)
        # -- the storm: everyone loses the connection and reconnects with since ----------------
        killed_at = time.time()
        redis_cpu0 = _redis_cpu(rds)
        if args.mode == "restart":
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            server = start()
        else:
            cpu0 = server.cpu()
        if args.profile is not None:
            profiler = subprocess.Popen(
                [
                    *(str(VENV_BIN / "py-spy"), "record", "--pid", str(server.process.pid)),
                    *("--format", "raw", "--rate", "50", "--output", str(args.profile)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        if args.mode == "restart":
            listening_at = time.time()
            cpu0 = server.cpu()
        else:
            await asyncio.to_thread(gens.drop)
            listening_at = killed_at

        def everyone_back() -> bool:
            return all(at > killed_at for at in gens.status()["subscribed_at"])

        ok = await _wait(everyone_back, args.timeout, 0.5)
        status = gens.status()
        back = [at for at in status["subscribed_at"] if at > killed_at]
        out["all_recovered"] = ok
        out["recovered_clients"] = len(back)
        out["recover_s_from_kill"] = (max(back) - killed_at) if back else None
        out["recover_s_from_listening"] = (max(back) - listening_at) if back else None
        out["restart_s"] = listening_at - killed_at
        out["server_cpu_s"] = server.cpu() - cpu0
        out["redis_cpu_s"] = _redis_cpu(rds) - redis_cpu0
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            profiler.wait(60)
            profiler = None
        out["server_history_reads"] = server_metrics(server, "arena_history_reads_total")
        out["server_recoveries"] = server_metrics(server, "arena_recoveries_total")
        await asyncio.sleep(args.after)
        stop.set()
        await publishing
        publishing = None
        out["published_acked"] = publisher.acked
        out["publish_errors"] = publisher.errors
        out["final_offset"] = publisher.final

        def drained() -> bool:
            offsets = gens.status()["offsets"]
            return all(o is not None and o >= publisher.final for o in offsets)

        out["drained"] = await _wait(drained, 30.0, 0.5)
        status = gens.status()
        out["missing"] = sum(
            max(0, publisher.final - (o if o is not None else 0)) for o in status["offsets"]
        )
        for key in (
            "errors",
            "duplicates",
            "out_of_order",
            "not_recovered",
            "reply_errors",
            "close_codes",
            "statuses",
            "failures",
        ):
            out[key] = status[key]
    finally:
        if profiler is not None:
            profiler.kill()
        stop.set()
        if publishing is not None:
            with contextlib.suppress(Exception):
                await publishing
        gens.close()
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument(
        "--mode",
        choices=("restart", "drop"),
        default="restart",
        help="restart: SIGKILL and restart the server; drop: cut every client's socket",
    )
    parser.add_argument("--profile", type=Path, help="py-spy the server during the storm here")
    parser.add_argument("--processes", type=int, default=4, help="generator processes")
    parser.add_argument("--rate", type=float, default=20.0, help="publications per second")
    parser.add_argument("--before", type=float, default=3.0, help="seconds publishing before")
    parser.add_argument("--after", type=float, default=3.0, help="seconds publishing after")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per phase at most")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--database-url", default=DATABASE_URL)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as tmp, bench_database(args.database_url) as db:
        result = asyncio.run(storm(args, db, Path(tmp)))
    result["machine"] = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = args.out / f"reconnect-storm-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
