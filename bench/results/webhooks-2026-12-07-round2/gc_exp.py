"""Experiment: what does grouping webhook commits buy in PostgreSQL? (not part of the repo)"""
import asyncio, os, sys, time, uuid, hashlib
from pathlib import Path
import asyncpg
sys.path.insert(0, "/work/wt/ingest2")
from storage.db import create_pool
from storage import alerts
from services.alerts import ingest
from services.alerts.body import parse

def cpu(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

async def main(group: int, total: int = 3000, conc: int = 32):
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"gc_exp_{uuid.uuid4().hex[:6]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pool = await create_pool(f"postgresql://postgres@127.0.0.1:5432/{name}", min_size=10, max_size=10)
        from storage.migrate import migrate
        async with pool.acquire() as c:
            await migrate(c)
            user = await c.fetchval("INSERT INTO users (email) VALUES ('x@example.com') RETURNING id")
            sid = uuid.uuid4()
            await c.execute("INSERT INTO strategies (id, owner_id, name) VALUES ($1, $2, 'x')", sid, user)
        pids = []
        async with pool.acquire() as c:
            pass
        conns = [await pool.acquire() for _ in range(10)]
        pids = [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
        for c in conns: await pool.release(c)
        body = b'{"ticker":"X","action":"buy","quantity":1,"message":"m"}'
        parsed = parse(body, "application/json", None)
        queue = iter(range(total))
        async def worker():
            while True:
                batch = [n for _, n in zip(range(group), queue)]
                if not batch: return
                async with pool.acquire() as conn:
                    news = [ingest.new_alert(sid, "signed", body, parsed, f"m{n}") for n in batch]
                    if MODE == "many":
                        await ingest.insert_many_with_created_events(conn, news)
                        continue
                    if group > 1: await conn.execute("BEGIN")
                    for new in news:
                        await ingest.insert_with_created_event(conn, new)
                    if group > 1: await conn.execute("COMMIT")
        c0 = sum(cpu(p) for p in pids); me0 = time.process_time(); t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc // max(1, group // 4) or 1)))
        dt = time.perf_counter() - t0
        pg = sum(cpu(p) for p in pids) - c0; me = time.process_time() - me0
        print(f"{MODE} group {group:3}: {total/dt:7.0f}/s  pg backend cpu {pg*1000/total:.3f} ms/alert  client cpu {me*1000/total:.3f} ms/alert  load {os.getloadavg()[0]:.1f}")
        await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

MODE = sys.argv[1]
for g in [int(x) for x in sys.argv[2:]]:
    asyncio.run(main(g))
