"""Server CPU per publication: ``POST /api/v1/channels/{channel}/publish`` and its delivery to
one WebSocket subscriber, in the real server process (``arena-realtime serve``, fresh database,
memory or Redis broker).

After a warm-up, ``--publications`` publications are made one after another (each acknowledged
and received by the subscriber before the next) and the server's user+system CPU
(``/proc/<pid>/stat``) is divided by their number: HTTP parsing, middlewares, auth,
validation, the broker round trip (Redis ``PUBLISH`` and the pub/sub reader), the fan-out to
one subscriber and the reply — the per-publication part of ``bench.fanout``'s CPU per delivery.
Rounds alternate between checkouts when ``--base`` names another one (same venv, its code on
``PYTHONPATH``), so A and B see the same machine load::

    .venv/bin/python -m bench.publish_cost --base /tmp/base --rounds 3

``--profile DIR`` records each server with py-spy (collapsed stacks) while it publishes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from bench.common import DATABASE_URL, REDIS_URL, ROOT, free_port
from bench.fanout import (
    VENV_BIN,
    Server,
    _cli,
    _wait_ready,
    bench_database,
    project_env,
)

PAD = "x" * 170
CHANNEL = "alerts:bench"


async def _drive(server: Server, publications: int, warmup: int) -> tuple[float, float]:
    """Server (user, system) CPU seconds spent on ``publications`` sequential publications."""
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {server.publish_token}",
    }
    async with aiohttp.ClientSession(server.base_url, headers=headers) as session:
        ws = await session.ws_connect("/ws")
        for command in (
            {"id": 0, "type": "authenticate", "token": server.token},
            {"id": 1, "type": "subscribe", "channel": CHANNEL},
        ):
            await ws.send_str(orjson.dumps(command).decode())
            reply = await ws.receive(timeout=60)
            if reply.type != aiohttp.WSMsgType.TEXT or '"error"' in reply.data:
                raise RuntimeError(f"{command['type']}: {reply}")

        async def publish_one() -> None:
            body = orjson.dumps({"data": {"t": int(time.time() * 1e6), "p": PAD}})
            async with session.post(f"/api/v1/channels/{CHANNEL}/publish", data=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"publish: {resp.status} {await resp.text()}")
                await resp.read()
            message = await ws.receive(timeout=60)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"subscriber got {message}")

        for _ in range(warmup):
            await publish_one()
        before = server.cpu_times()
        for _ in range(publications):
            await publish_one()
        after = server.cpu_times()
        await ws.close()
        return after[0] - before[0], after[1] - before[1]


def measure(
    checkout: Path,
    broker: str,
    database_url: str,
    publications: int,
    warmup: int,
    profile: Path | None,
) -> tuple[float, float]:
    """Server (user, system) CPU µs per publication for the code at ``checkout``."""
    with tempfile.TemporaryDirectory(prefix="publish-cost-") as tmp:
        workdir = Path(tmp)
        env = project_env(database_url, REDIS_URL if broker == "redis" else None, workdir)
        env["PYTHONPATH"] = str(checkout)
        _cli(env, "migrate")
        user = _cli(env, "token", "--email", "bench@example.com", "--role", "admin")
        service = _cli(env, "service-token", "--name", "bench")
        port = free_port()
        log_path = workdir / "server.log"
        process = subprocess.Popen(
            [str(VENV_BIN / "arena-realtime"), "serve"],
            env={**env, "PORT": str(port), "WS_HEARTBEAT": "600"},
            cwd=checkout,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        server = Server(f"arena-{broker}", process, port, user, service, log_path)
        spy: subprocess.Popen[bytes] | None = None
        try:
            _wait_ready(server)
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
                out = profile / f"{checkout.name}-{broker}-{int(time.time())}.txt"
                spy_args = ["record", "--format", "raw", "--rate", "250", "--nonblocking"]
                spy = subprocess.Popen(
                    [
                        str(VENV_BIN / "py-spy"),
                        *spy_args,
                        "--pid",
                        str(process.pid),
                        "-o",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            used = asyncio.run(_drive(server, publications, warmup))
        finally:
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            server.stop()
        return used[0] / publications * 1e6, used[1] / publications * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--brokers", nargs="+", default=["memory", "redis"])
    parser.add_argument("--publications", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--base", type=Path, default=None, help="another checkout to compare")
    parser.add_argument("--database-url", default=DATABASE_URL)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy stacks here")
    args = parser.parse_args()
    checkouts = [ROOT] if args.base is None else [args.base.resolve(), ROOT]
    results: dict[tuple[str, str], list[float]] = {}
    for round_ in range(1, args.rounds + 1):
        for broker in args.brokers:
            for checkout in checkouts:
                with bench_database(args.database_url) as url:
                    user, system = measure(
                        checkout, broker, url, args.publications, args.warmup, args.profile
                    )
                us = user + system
                results.setdefault((str(checkout), broker), []).append(us)
                load = os.getloadavg()[0]
                print(
                    f"round {round_} {broker:6} {checkout}: {us:,.0f} µs CPU per publication"
                    f" (user {user:,.0f}, system {system:,.0f}; load {load:.1f})",
                    flush=True,
                )
    for (checkout, broker), values in results.items():
        print(f"median {broker:6} {checkout}: {statistics.median(values):,.0f} µs")


if __name__ == "__main__":
    main()
