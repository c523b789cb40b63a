"""Where the memory of an idle connection goes: tracemalloc diff per connection, by source line.

Runs the project's app (memory broker) or the raw aiohttp broadcast app in this process under
tracemalloc, opens N authenticated connections with one subscription each from the load
generator's processes, and prints the allocation sites that grew, in bytes per connection,
next to the RSS growth per connection::

    .venv/bin/python -m bench.conn_memory --target arena -n 2000
    .venv/bin/python -m bench.conn_memory --target raw -n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

from aiohttp import web

from bench import raw_server
from bench.common import DATABASE_URL, free_port
from bench.fanout import JWT_SECRET, SERVICE_SECRET, bench_database, rss_bytes
from bench.loadgen import Workers


def _project_app(database_url: str, data_dir: str) -> tuple[web.Application, str]:
    from handlers import keys
    from server.app import create_app
    from server.settings import load_settings

    settings = load_settings(
        {
            "ENV": "development",
            "DATABASE_URL": database_url,
            "DATA_DIR": data_dir,
            "JWT_SECRET": JWT_SECRET,
            "SERVICE_SECRET": SERVICE_SECRET,
            "LOG_LEVEL": "WARNING",
            "WS_MAX_CONNECTIONS_PER_USER": "100000",
            "WS_MAX_UNAUTHENTICATED_PER_IP": "100000",  # every socket is from 127.0.0.1
            "WS_USER_COMMAND_RATE": "1000000",
            "WS_USER_COMMAND_BURST": "1000000",
        }
    )
    app = create_app(settings)
    token = app[keys.tokens].issue_access(str(uuid.uuid4()), "admin", "mem@example.com").token
    return app, token


async def measure(app: web.Application, token: str, n: int, workers: Workers, top: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        # One connection first so that lazily created per-process state is not counted.
        await asyncio.to_thread(workers.connect, "127.0.0.1", port, token, [["alerts:mem"]])
        await asyncio.sleep(0.5)
        gc.collect()
        before, rss_before = tracemalloc.take_snapshot(), rss_bytes(os.getpid())
        result = await asyncio.to_thread(
            workers.connect, "127.0.0.1", port, token, [["alerts:mem"]] * n
        )
        await asyncio.sleep(1.0)
        gc.collect()
        after, rss_after = tracemalloc.take_snapshot(), rss_bytes(os.getpid())
        connected = max(1, result["connected"])
        diff = after.compare_to(before, "lineno")
        traced = sum(d.size_diff for d in diff)
        print(f"connected {result['connected']}/{n} in {result['seconds']:.2f}s")
        print(f"RSS growth per connection:    {(rss_after - rss_before) / connected:8.0f} B")
        print(f"traced growth per connection: {traced / connected:8.0f} B")
        print(f"top {top} allocation sites (bytes and blocks per connection):")
        for stat in diff[:top]:
            frame = stat.traceback[0]
            where = f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
            print(
                f"  {stat.size_diff / connected:8.0f} B {stat.count_diff / connected:6.1f}  {where}"
            )
        await asyncio.to_thread(workers.call, "close")
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=["arena", "raw"], default="arena")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--database-url",
        default=DATABASE_URL,
    )
    args = parser.parse_args()
    import uvloop

    workers = Workers(1)
    try:
        tracemalloc.start(1)
        if args.target == "raw":
            uvloop.run(measure(raw_server.create_app(), "any", args.n, workers, args.top))
            return 0
        with (
            bench_database(args.database_url) as database_url,
            tempfile.TemporaryDirectory() as tmp,
        ):
            app, token = _project_app(database_url, str(Path(tmp)))
            uvloop.run(measure(app, token, args.n, workers, args.top))
        return 0
    finally:
        workers.shutdown()
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
