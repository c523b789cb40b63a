"""Redis commands per second caused by presence, at N WebSocket connections (issue 9).

Starts the service (Redis broker, presence on in the ``proposals`` namespace) as a subprocess,
opens N connections each subscribed to one of C ``proposals:*`` channels, then reads Redis'
``total_commands_processed`` over an idle window and over a window with publications, so the
presence cost (refresh batches) and the per-message cost are separated.

    .venv/bin/python -m bench.presence_redis --connections 5000 --channels 100 --window 30

Loopback only; bounded in time. Needs PostgreSQL and Redis on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime

import aiohttp
import asyncpg
import redis.asyncio as redis

from bench.common import ROOT, free_port, save_json, wait_ready

BIN = ROOT / ".venv" / "bin"


async def commands(client: redis.Redis) -> int:
    info = await client.info("stats")
    return int(info["total_commands_processed"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per measurement")
    parser.add_argument("--rate", type=float, default=100.0, help="publications/s, busy window")
    parser.add_argument("--presence-ttl", type=float, default=30.0)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    db = f"bench_presence_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.database)
    await admin.execute(f'CREATE DATABASE "{db}"')
    prefix = f"bench-presence-{uuid.uuid4().hex[:6]}"
    port = free_port()
    env = {
        **os.environ,
        "ENV": "development",
        "DATABASE_URL": args.database.rsplit("/", 1)[0] + f"/{db}",
        "REDIS_URL": args.redis,
        "REDIS_PREFIX": prefix,
        "PORT": str(port),
        "DATA_DIR": tempfile.mkdtemp(prefix="arena-bench-"),
        "LOG_LEVEL": "WARNING",
        "PRESENCE_TTL": str(args.presence_ttl),
        "WS_MAX_CONNECTIONS_PER_USER": str(args.connections + 10),
        "WS_MAX_UNAUTHENTICATED_PER_IP": str(args.connections + 10),  # all from 127.0.0.1
    }
    server = subprocess.Popen([str(BIN / "arena-realtime"), "serve"], env=env)
    rclient = redis.Redis.from_url(args.redis)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, server)
        token = subprocess.run(
            [str(BIN / "arena-realtime"), "token", "--role", "admin", "--email", "b@example.com"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        service = subprocess.run(
            [str(BIN / "arena-realtime"), "service-token"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        channels = [f"proposals:{uuid.uuid4()}" for _ in range(args.channels)]
        connector = aiohttp.TCPConnector(limit=0)
        session = aiohttp.ClientSession(connector=connector)
        started = time.monotonic()

        async def open_one(index: int) -> None:
            ws = await session.ws_connect(base.replace("http", "ws") + "/ws", heartbeat=None)
            await ws.send_json({"id": 1, "type": "authenticate", "token": token})
            await ws.receive()
            channel = channels[index % len(channels)]
            await ws.send_json({"id": 2, "type": "subscribe", "channel": channel})
            await ws.receive()
            sockets.append(ws)

        batch = 200
        for first in range(0, args.connections, batch):
            count = min(batch, args.connections - first)
            await asyncio.gather(*(open_one(first + i) for i in range(count)))
        connect_seconds = time.monotonic() - started
        await asyncio.sleep(2)  # let joins settle

        async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for _ in ws:
                pass

        readers = [asyncio.create_task(drain(ws)) for ws in sockets]
        before = await commands(rclient)
        await asyncio.sleep(args.window)
        idle = (await commands(rclient) - before) / args.window

        headers = {"Authorization": f"Bearer {service}"}
        published = 0
        before = await commands(rclient)
        deadline = time.monotonic() + args.window
        interval = 1.0 / args.rate
        while time.monotonic() < deadline:
            channel = channels[published % len(channels)]
            url = f"{base}/api/v1/channels/{channel}/publish"
            async with session.post(url, json={"data": {"n": published}}, headers=headers) as r:
                r.raise_for_status()
            published += 1
            await asyncio.sleep(interval)
        busy = (await commands(rclient) - before) / args.window
        rate = published / args.window
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cores": os.cpu_count(),
            "connections": len(sockets),
            "channels": args.channels,
            "presence_ttl": args.presence_ttl,
            "connect_seconds": round(connect_seconds, 1),
            "idle_redis_commands_per_s": round(idle, 1),
            "busy_publications_per_s": round(rate, 1),
            "busy_redis_commands_per_s": round(busy, 1),
            "redis_commands_per_publication": round((busy - idle) / rate, 2) if rate else None,
        }
        print(json.dumps(result, indent=2))
        save_json("presence", result)
        for task in readers:
            task.cancel()
        await session.close()
    finally:
        server.terminate()
        server.wait(30)
        keys = [key async for key in rclient.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await rclient.delete(*keys)
        await rclient.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
