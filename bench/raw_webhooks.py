"""A naive durable webhook pipeline: the floor that ``bench.webhooks --naive`` compares the
webhook → subscriber latency with, on the same machine in the same run.

What a straightforward aiohttp + asyncpg + redis-py service does for a signed webhook, and
nothing more: check the Standard Webhooks signature (the project's own
:mod:`services.alerts.signatures`, with the strategy's secret given on the command line), store
the alert and its outbox row in **one** autocommitted statement (one round trip,
``synchronous_commit`` as configured, so a 2xx is durable as in the project), answer ``201``,
then ``PUBLISH`` the publication on Redis. A listener on the same Redis connection pool sends
every message to the channel's WebSocket subscribers with ``await ws.send_str`` one by one (the
WebSocket side is :mod:`bench.raw_server`'s: ``authenticate`` accepts any token, ``subscribe``
replies with the project's shape). No rate limit, no de-duplication beyond a unique webhook id,
no group commit, no recovery, no relay: the minimum the same guarantees take.

Run: ``python -m bench.raw_webhooks --port 9002 --database postgresql://... --redis
redis://... --secret whsec_...`` (uvloop on). It creates its two tables if they are missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
from aiohttp import web
from redis.asyncio import Redis

from bench.raw_server import EPOCH, create_app, serve, subs_key
from services.alerts import signatures

SCHEMA = """
CREATE TABLE IF NOT EXISTS raw_alerts (
    id uuid PRIMARY KEY,
    strategy_id uuid NOT NULL,
    webhook_id text NOT NULL UNIQUE,
    raw_body text NOT NULL,
    payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS raw_outbox (
    id bigserial PRIMARY KEY,
    alert_id uuid NOT NULL REFERENCES raw_alerts (id),
    channel text NOT NULL,
    payload jsonb NOT NULL
);
"""

#: the alert and its outbox row, one statement (one round trip, one commit)
INSERT = """
WITH alert AS (
    INSERT INTO raw_alerts (id, strategy_id, webhook_id, raw_body, payload)
    VALUES ($1, $2, $3, $4, $5::jsonb)
    RETURNING id
)
INSERT INTO raw_outbox (alert_id, channel, payload) SELECT id, $6, $7::jsonb FROM alert
"""

pool_key = web.AppKey("pool", asyncpg.Pool)
redis_key = web.AppKey("redis", Redis)
key_key = web.AppKey("signing_key", bytes)
offsets_key = web.AppKey("raw_offsets", dict[str, int])


async def webhook(request: web.Request) -> web.Response:
    """Verify, store alert + outbox row in one statement, answer, then publish on Redis."""
    strategy_id = uuid.UUID(request.match_info["strategy_id"])
    body = await request.read()
    try:  # the project's Standard Webhooks check: the same work per webhook
        headers = signatures.parse_headers(
            request.headers.get("webhook-id"),
            request.headers.get("webhook-timestamp"),
            request.headers.get("webhook-signature"),
        )
        signatures.verify(headers, body, [request.app[key_key]], now=time.time(), tolerance=300)
    except signatures.SignatureError as exc:
        return web.json_response({"error": str(exc)}, status=401)
    msg_id = headers.msg_id
    alert_id = uuid.uuid4()
    channel = f"alerts:{strategy_id}"
    data = {"alert": {"id": str(alert_id), **orjson.loads(body)}}
    payload = orjson.dumps(data).decode()
    await request.app[pool_key].execute(
        INSERT, alert_id, strategy_id, msg_id, body.decode(), body.decode(), channel, payload
    )
    await request.app[redis_key].publish(channel, payload)
    return web.json_response({"id": str(alert_id), "duplicate": False}, status=201)


async def ready(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


async def _listen(app: web.Application) -> None:
    """Every publication on ``alerts:*`` to that channel's WebSockets, one ``send_str`` each."""
    offsets = app[offsets_key]
    async with app[redis_key].pubsub() as pubsub:
        await pubsub.psubscribe("alerts:*")
        async for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            channel = message["channel"].decode()
            offset = offsets[channel] = offsets.get(channel, 0) + 1
            head = orjson.dumps(
                {"type": "pub", "channel": channel, "offset": offset, "epoch": EPOCH}
            )
            text = (head[:-1] + b',"data":' + message["data"] + b"}").decode()
            for ws in list(app[subs_key].get(channel, ())):
                if not ws.closed:
                    await ws.send_str(text)


def create_webhook_app(database: str, redis_url: str, secret: str) -> web.Application:
    app = create_app()
    app[key_key] = signatures.secret_key(secret)
    app[offsets_key] = {}

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(database, min_size=4, max_size=16)
        async with pool.acquire() as conn:
            await conn.execute(SCHEMA)
        app[pool_key] = pool
        app[redis_key] = Redis.from_url(redis_url)
        listener = asyncio.create_task(_listen(app))
        yield
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await app[redis_key].aclose()
        await pool.close()

    async def close_websockets(app: web.Application) -> None:
        for sockets in app[subs_key].values():
            for ws in list(sockets):
                await ws.close()

    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(close_websockets)
    app.router.add_post("/webhooks/alerts/{strategy_id}", webhook)
    app.router.add_get("/ready", ready)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--database", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--secret", required=True, help="the strategy's whsec_... secret")
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    serve(create_webhook_app(args.database, args.redis, args.secret), args.host, args.port)


if __name__ == "__main__":
    main()
