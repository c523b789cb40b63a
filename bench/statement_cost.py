"""Client-side CPU of one webhook's database statement: the group commit's statement for one
alert, the naive pipeline's one-row insert (:mod:`bench.raw_webhooks`) and ``SELECT 1``.

Runs them interleaved on one pooled connection (the server's pool settings and codecs) in a
fresh database with the migrations applied, and prints the process CPU time per call (the
part of a webhook's CPU that the statement costs the server: binding, the loopback send,
decoding the reply; PostgreSQL's own work is another process)::

    .venv/bin/python -m bench.statement_cost            # 1,000 calls of each
    .venv/bin/python -m bench.statement_cost --calls 5000
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import asyncpg
import orjson
import uvloop

from bench.common import DATABASE_URL
from bench.raw_webhooks import INSERT, SCHEMA
from services.alerts import ingest
from services.alerts.body import parse
from storage import strategies, users
from storage.db import create_pool
from storage.migrate import migrate


async def measure(admin_url: str, calls: int) -> dict[str, float]:
    """Microseconds of process CPU per call, by kind."""
    name = f"arena_bench_statements_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pool = await create_pool(f"{admin_url.rpartition('/')[0]}/{name}", max_size=2)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
                await conn.execute(SCHEMA)
                owner = await users.get_or_create(conn, "bench@example.com")
                strategy = uuid.uuid4()
                await strategies.create(
                    conn, strategy, owner.id, "bench", os.urandom(32), os.urandom(48)
                )
                cpu = {"group statement, 1 alert": 0.0, "naive insert": 0.0, "SELECT 1": 0.0}
                for n in range(calls):
                    body = orjson.dumps({"ticker": "T", "action": "buy", "message": str(n)})
                    new = ingest.new_alert(
                        strategy, "signed", body, parse(body, "application/json", None), f"g{n}"
                    )
                    started = time.process_time()
                    await ingest.insert_many_with_created_events(conn, [new], 0, quiet=True)
                    cpu["group statement, 1 alert"] += time.process_time() - started
                    text = body.decode()
                    started = time.process_time()
                    await conn.execute(
                        INSERT, uuid.uuid4(), strategy, f"n{n}", text, text, "alerts:x", text
                    )
                    cpu["naive insert"] += time.process_time() - started
                    started = time.process_time()
                    await conn.fetchval("SELECT 1")
                    cpu["SELECT 1"] += time.process_time() - started
                    if n % 50 == 49:  # as the relay's marks do
                        await conn.execute(
                            "UPDATE outbox SET published_at = now() WHERE published_at IS NULL"
                        )
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return {kind: round(seconds / calls * 1e6, 1) for kind, seconds in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--database", default=DATABASE_URL, help="an admin URL")
    args = parser.parse_args()
    for kind, micros in uvloop.run(measure(args.database, args.calls)).items():
        print(f"{kind:26s} {micros:7.1f} µs CPU per call")


if __name__ == "__main__":
    main()
