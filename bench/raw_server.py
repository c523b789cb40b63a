"""A naive aiohttp broadcast server: the ceiling the project's fan-out is compared with.

It keeps a set of WebSockets per channel and, for each publication, awaits ``send_str`` on every
one of them: what a straightforward aiohttp broadcast looks like. It speaks the subset of the
project's protocol the load generator uses (``authenticate`` accepts any token, ``subscribe``,
``ping``) and pushes the same JSON shape (``{"type":"pub","channel","offset","epoch","data"}``),
and it answers ``POST /api/v1/channels/{channel}/publish`` with ``{"data": ...}`` like the
project, without authentication.

``POST /bench/blast/{channel}?seconds=S&batch=B`` is not part of the comparison: it writes
pre-built frames in batches of ``B`` straight to every subscriber's transport for ``S`` seconds,
so that the *load generator* is the bottleneck and its own ceiling can be measured.

Run: ``python -m bench.raw_server --port 9001`` (uvloop on).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiohttp import WSMsgType, web

EPOCH = "raw"

subs_key = web.AppKey("subs", dict[str, dict[web.WebSocketResponse, asyncio.Transport]])
offsets_key = web.AppKey("offsets", dict[str, int])
heartbeat_key = web.AppKey("heartbeat", float)


def _reply(command_id: object, result: dict[str, object]) -> str:
    return orjson.dumps({"type": "reply", "id": command_id, "result": result}).decode()


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """The WebSocket endpoint: a command loop with a per-channel set of sockets."""
    ws = web.WebSocketResponse(heartbeat=request.app[heartbeat_key], compress=False)
    await ws.prepare(request)
    subs = request.app[subs_key]
    offsets = request.app[offsets_key]
    transport = request.transport
    mine: set[str] = set()
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            cmd = orjson.loads(msg.data)
            kind = cmd.get("type")
            result: dict[str, object] = {}
            if kind == "authenticate":
                result = {"client": str(id(ws)), "user": {"id": "raw", "role": "admin"}}
            elif kind == "subscribe":
                channel = cmd["channel"]
                assert transport is not None
                subs.setdefault(channel, {})[ws] = transport
                mine.add(channel)
                result = {"channel": channel, "offset": offsets.get(channel, 0), "epoch": EPOCH}
            await ws.send_str(_reply(cmd.get("id"), result))
    finally:
        for channel in mine:
            subs[channel].pop(ws, None)
    return ws


async def publish(request: web.Request) -> web.Response:
    """Assign the next offset and ``await ws.send_str`` on every subscriber, one by one."""
    channel = request.match_info["channel"]
    data = orjson.loads(await request.read())["data"]
    offsets = request.app[offsets_key]
    offset = offsets[channel] = offsets.get(channel, 0) + 1
    text = orjson.dumps(
        {"type": "pub", "channel": channel, "offset": offset, "epoch": EPOCH, "data": data}
    ).decode()
    for ws in list(request.app[subs_key].get(channel, ())):
        if not ws.closed:
            await ws.send_str(text)
    return web.json_response({"channel": channel, "offset": offset, "epoch": EPOCH})


def _frame(payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    return b"\x81\x7e" + size.to_bytes(2, "big") + payload


async def blast(request: web.Request) -> web.Response:
    """Saturate the load generator: batches of pre-built frames, one write per socket."""
    channel = request.match_info["channel"]
    seconds = float(request.query.get("seconds", "5"))
    batch = int(request.query.get("batch", "50"))
    pad = "x" * int(request.query.get("pad", "150"))
    offsets = request.app[offsets_key]
    targets = request.app[subs_key].get(channel, {})
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline:
        now_us = int(time.time() * 1e6)
        start = offsets.get(channel, 0)
        chunk = b"".join(
            _frame(
                orjson.dumps(
                    {
                        "type": "pub",
                        "channel": channel,
                        "offset": start + i + 1,
                        "epoch": EPOCH,
                        "data": {"t": now_us, "p": pad},
                    }
                )
            )
            for i in range(batch)
        )
        offsets[channel] = start + batch
        for transport in list(targets.values()):
            transport.write(chunk)
        sent += batch
        # Back off while the clients are behind so that nothing is dropped or buffered forever.
        while any(t.get_write_buffer_size() > 1 << 20 for t in targets.values()):
            await asyncio.sleep(0.002)
        await asyncio.sleep(0)
    return web.json_response(
        {"channel": channel, "offset": offsets.get(channel, 0), "publications": sent}
    )


def create_app(heartbeat: float = 25.0) -> web.Application:
    """The naive broadcast app."""
    app = web.Application()
    app[heartbeat_key] = heartbeat
    app[subs_key] = {}
    app[offsets_key] = {}
    app.router.add_get("/ws", websocket)
    app.router.add_post("/api/v1/channels/{channel}/publish", publish)
    app.router.add_post("/bench/blast/{channel}", blast)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--heartbeat", type=float, default=25.0)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    if not args.no_uvloop:
        import uvloop

        uvloop.install()
    serve(create_app(args.heartbeat), args.host, args.port)


def serve(app: web.Application, host: str, port: int) -> None:
    """Run ``app`` until SIGINT/SIGTERM, without access log or banner."""
    web.run_app(app, host=host, port=port, access_log=None, print=lambda _: None)


if __name__ == "__main__":
    main()
