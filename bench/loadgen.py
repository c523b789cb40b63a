"""A fast WebSocket subscriber load generator for the fan-out benchmark.

Each worker process runs a uvloop event loop with one :class:`WsClient` (an asyncio ``Protocol``)
per connection. The client speaks just enough WebSocket to be a valid peer (handshake, masked
client frames with a zero key, pong, close) and reads publications without JSON-parsing them: the
push layout ``{"type":"pub","channel":"C","offset":N,...,"data":{"t":T,...}}`` is fixed (the
project and the raw server emit the same bytes), so the channel, the offset and the publisher's
timestamp ``t`` (Unix microseconds) are sliced out with ``bytes.index``.

With ``protocol="centrifuge"`` the clients speak Centrifugo's client protocol v2 (JSON) at
``/connection/websocket`` instead, as the SDKs do: ``connect`` and every ``subscribe`` in one
frame (commands separated by newlines), replies matched by id, publications as
``{"push":{"channel":"C","pub":{"data":{"t":T,...},"offset":N}}}`` (several per frame when the
server batches them, one a line), and a server ping ``{}`` answered with ``{}``.

Per connection and channel it checks that offsets increase by exactly one (gaps, duplicates) and
counts what it received, so losses are ``published - received`` per subscription. Latency is
``receive time - t`` for every publication, in microseconds.

The controller (``bench/fanout.py``) drives workers through :class:`Workers`: ``connect``,
``reset``, ``stats``, ``close``. Workers answer commands while they keep reading, so pings are
answered and nothing stalls between phases.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any, cast

import orjson

PUB_PREFIX = b'{"type":"pub","channel":"'
_PREFIX_LEN = len(PUB_PREFIX)
_OFFSET_SKIP = len('","offset":')
_T_KEY = b'"t":'
CENTRIFUGE_PREFIX = b'{"push":{"channel":"'
_CENTRIFUGE_PREFIX_LEN = len(CENTRIFUGE_PREFIX)
_CENTRIFUGE_PUB = b'","pub":{'
_CENTRIFUGE_PUB_LEN = len(_CENTRIFUGE_PUB)
_CENTRIFUGE_OFFSET = b'"offset":'
MAX_LATENCY_SAMPLES = 3_000_000


@dataclass
class Stats:
    """Counters shared by the connections of one worker."""

    frames: int = 0
    bytes: int = 0
    gaps: int = 0
    duplicates: int = 0
    disconnects: int = 0
    close_codes: dict[int, int] = field(default_factory=dict)
    latencies: list[int] = field(default_factory=list)


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame, masked with the all-zero key (payload bytes unchanged)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + payload


class WsClient(asyncio.Protocol):
    """One subscriber connection: authenticate, subscribe to ``channels``, then count."""

    def __init__(
        self,
        stats: Stats,
        host: str,
        port: int,
        path: str,
        token: str,
        channels: Sequence[str],
        protocol: str = "arena",
    ) -> None:
        self.stats = stats
        self.centrifuge = protocol == "centrifuge"
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: "
            f"{base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.token = token
        self.channels = list(channels)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = b""
        self.pending = 0
        #: channel (bytes) -> newest offset seen / offset at the last reset / count since reset
        self.last: dict[bytes, int] = {}
        self.base: dict[bytes, int] = {}
        self.received: dict[bytes, int] = {}
        self.closing = False
        self.close_code: int | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self.closing:
            self.stats.disconnects += 1
            code = self.close_code or 1006
            self.stats.close_codes[code] = self.stats.close_codes.get(code, 0) + 1

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                status = data[: data.find(b"\r\n")].decode(errors="replace")
                self.ready.set_exception(ConnectionError(f"handshake refused: {status}"))
                self.closing = True
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            data = data[end + 4 :]
            if self.centrifuge:
                # As the SDKs do: connect and the subscriptions in one frame, one a line.
                commands = [orjson.dumps({"id": 1, "connect": {"token": self.token}})]
                commands += [
                    orjson.dumps({"id": index, "subscribe": {"channel": channel}})
                    for index, channel in enumerate(self.channels, start=2)
                ]
                self.pending = len(self.channels) + 1
                self._send(1, b"\n".join(commands))
            else:
                self._send(1, orjson.dumps({"id": 0, "type": "authenticate", "token": self.token}))
        self._frames(data)

    # -- frames ----------------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        stats = self.stats
        size = len(data)
        pos = 0
        now_us = 0
        frames = 0
        last = self.last
        received = self.received
        centrifuge = self.centrifuge
        while size - pos >= 2:
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = data[pos] & 0x0F
            pos = end
            if opcode == 1 and centrifuge:
                # One message a frame is what the server sends (several, one a line, are
                # allowed: the slower path). The frame is sliced once so that the searches take
                # no start/end arguments, whose parsing would cost more than the /ws path's.
                message = data[start:end]
                if b"\n" in message:
                    frames += self._centrifuge(data, start, end)
                    continue
                c1 = message.find(b'"', _CENTRIFUGE_PREFIX_LEN)
                if (
                    not message.startswith(CENTRIFUGE_PREFIX)
                    or message[c1 : c1 + _CENTRIFUGE_PUB_LEN] != _CENTRIFUGE_PUB
                ):
                    self._centrifuge_message(message)  # a reply, a ping, join/leave, ...
                    continue
                channel = message[_CENTRIFUGE_PREFIX_LEN:c1]
                # ``..."offset":N}}}``: the offset is the publication's last field
                o0 = message.rindex(b":") + 1
                offset = int(message[o0:-3])
                previous = last.get(channel)
                if previous is not None and offset != previous + 1:
                    if offset <= previous:
                        stats.duplicates += 1
                        continue
                    stats.gaps += 1
                last[channel] = offset
                received[channel] = received.get(channel, 0) + 1
                frames += 1
                t0 = message.find(_T_KEY, c1)
                if t0 >= 0:
                    t0 += 4
                    t1 = message.index(b",", t0)
                    if not now_us:
                        now_us = int(time.time() * 1e6)
                    stats.latencies.append(now_us - int(message[t0:t1]))
            elif opcode == 1 and data.startswith(PUB_PREFIX, start):
                c0 = start + _PREFIX_LEN
                c1 = data.index(b'"', c0)
                channel = data[c0:c1]
                o0 = c1 + _OFFSET_SKIP
                o1 = data.index(b",", o0)
                offset = int(data[o0:o1])
                previous = last.get(channel)
                if previous is not None and offset != previous + 1:
                    if offset <= previous:
                        stats.duplicates += 1
                        continue
                    stats.gaps += 1
                last[channel] = offset
                received[channel] = received.get(channel, 0) + 1
                frames += 1
                t0 = data.find(_T_KEY, o1, end)
                if t0 >= 0:
                    t0 += 4
                    t1 = data.index(b",", t0, end)
                    if not now_us:
                        now_us = int(time.time() * 1e6)
                    stats.latencies.append(now_us - int(data[t0:t1]))
            elif opcode == 1:
                self._reply(data[start:end])
            elif opcode == 9:
                self._send(0xA, data[start:end])
            elif opcode == 8:
                if length >= 2:
                    self.close_code = int.from_bytes(data[start : start + 2], "big")
                if self.transport is not None:
                    self.transport.close()
        if pos < size:
            self.buf = data[pos:]
        stats.frames += frames
        stats.bytes += pos

    def _centrifuge(self, data: bytes, start: int, end: int) -> int:
        """The messages of a Centrifugo-protocol frame with several (one a line); publications
        counted."""
        stats = self.stats
        last = self.last
        received = self.received
        count = 0
        now_us = 0
        while start < end:
            stop = data.find(b"\n", start, end)
            if stop < 0:
                stop = end
            if (
                data.startswith(CENTRIFUGE_PREFIX, start)
                and data.find(_CENTRIFUGE_PUB, start, stop) >= 0
            ):
                c0 = start + _CENTRIFUGE_PREFIX_LEN
                c1 = data.index(b'"', c0)
                channel = data[c0:c1]
                # ``offset`` follows ``data``: the last field of the publication
                o0 = data.rindex(_CENTRIFUGE_OFFSET, c1, stop) + len(_CENTRIFUGE_OFFSET)
                o1 = data.index(b"}", o0)
                offset = int(data[o0:o1])
                next_start = stop + 1
                previous = last.get(channel)
                if previous is not None and offset != previous + 1:
                    if offset <= previous:
                        stats.duplicates += 1
                        start = next_start
                        continue
                    stats.gaps += 1
                last[channel] = offset
                received[channel] = received.get(channel, 0) + 1
                count += 1
                t0 = data.find(_T_KEY, c1, o0)
                if t0 >= 0:
                    t0 += 4
                    t1 = data.index(b",", t0, o0)
                    if not now_us:
                        now_us = int(time.time() * 1e6)
                    stats.latencies.append(now_us - int(data[t0:t1]))
                start = next_start
                continue
            message = data[start:stop]
            start = stop + 1
            self._centrifuge_message(message)
        return count

    def _centrifuge_message(self, message: bytes) -> None:
        """A Centrifugo-protocol message that is not a publication."""
        if message == b"{}":
            self._send(1, b"{}")  # a server ping: pong
        elif message.strip():
            self._centrifuge_reply(message)

    def _centrifuge_reply(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        command_id = message.get("id")
        if command_id is None:
            return  # another push (join/leave, disconnect)
        if "error" in message:
            if not self.ready.done():
                self.ready.set_exception(RuntimeError(str(message["error"])))
            return
        if command_id >= 2 and "subscribe" in message:
            key = self.channels[command_id - 2].encode()
            if key not in self.last:
                self.last[key] = int(message["subscribe"].get("offset", 0))
            self.base[key] = self.last[key]
            self.received[key] = 0
        self.pending -= 1
        if self.pending == 0 and not self.ready.done():
            self.ready.set_result(None)

    def _reply(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        if message.get("type") != "reply":
            return
        if "error" in message:
            if not self.ready.done():
                self.ready.set_exception(RuntimeError(str(message["error"])))
            return
        result = message.get("result", {})
        if message.get("id") == 0:
            for index, channel in enumerate(self.channels, start=1):
                self._send(1, orjson.dumps({"id": index, "type": "subscribe", "channel": channel}))
            self.pending = len(self.channels)
            if not self.pending and not self.ready.done():
                self.ready.set_result(None)
            return
        channel = result.get("channel")
        if isinstance(channel, str):
            key = channel.encode()
            if key not in self.last:
                self.last[key] = int(result.get("offset", 0))
            self.base[key] = self.last[key]
            self.received[key] = 0
            self.pending -= 1
            if self.pending == 0 and not self.ready.done():
                self.ready.set_result(None)

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(opcode, payload))

    # -- control ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Start counting losses from here."""
        for channel, offset in self.last.items():
            self.base[channel] = offset
            self.received[channel] = 0

    def lost(self, final: dict[bytes, int]) -> int:
        """Publications up to ``final`` (per channel) that this connection did not receive."""
        missing = 0
        for channel, offset in final.items():
            if channel in self.base:
                missing += max(0, offset - self.base[channel] - self.received[channel])
        return missing

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(8, (1000).to_bytes(2, "big")))
            self.transport.close()


class Generator:
    """The connections of one worker process."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.clients: list[WsClient] = []

    async def connect(
        self,
        host: str,
        port: int,
        token: str,
        channel_sets: list[list[str]],
        concurrency: int = 100,
        path: str = "/ws",
        timeout: float = 60.0,
        protocol: str = "arena",
    ) -> dict[str, Any]:
        """Open one connection per entry of ``channel_sets`` (authenticated and subscribed)."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        errors: dict[str, int] = {}
        started = time.perf_counter()

        async def one(channels: list[str]) -> None:
            async with gate:
                client: WsClient | None = None
                try:
                    _, client = await loop.create_connection(
                        lambda: WsClient(self.stats, host, port, path, token, channels, protocol),
                        host,
                        port,
                    )
                    await asyncio.wait_for(client.ready, timeout)
                    self.clients.append(client)
                except Exception as exc:
                    if client is not None:
                        client.close()  # half-subscribed: not counted in losses
                    reason = f"{type(exc).__name__}: {exc}"[:120]
                    errors[reason] = errors.get(reason, 0) + 1

        await asyncio.gather(*(one(channels) for channels in channel_sets))
        return {
            "connected": len(channel_sets) - sum(errors.values()),
            "failed": sum(errors.values()),
            "errors": errors,
            "seconds": time.perf_counter() - started,
        }

    async def reset(self) -> dict[str, Any]:
        """Zero the counters; losses are counted from the current offsets."""
        self.stats.frames = self.stats.bytes = self.stats.gaps = self.stats.duplicates = 0
        self.stats.disconnects = 0
        self.stats.close_codes = {}
        self.stats.latencies = []
        for client in self.clients:
            client.reset()
        return {}

    async def stats_(self, final: dict[str, int] | None = None, latencies: bool = True) -> Any:
        """Counters so far; with ``final`` offsets also the number of lost publications."""
        stats = self.stats
        lost = 0
        if final:
            wanted = {channel.encode(): offset for channel, offset in final.items()}
            # Connections the server dropped are reported as disconnects, not as losses.
            lost = sum(
                client.lost(wanted)
                for client in self.clients
                if client.transport is not None and not client.transport.is_closing()
            )
        lat = stats.latencies[:MAX_LATENCY_SAMPLES] if latencies else []
        return {
            # CLOCK_MONOTONIC is system-wide: the controller compares it across processes
            "at": time.monotonic(),
            "frames": stats.frames,
            "bytes": stats.bytes,
            "gaps": stats.gaps,
            "duplicates": stats.duplicates,
            "disconnects": stats.disconnects,
            "close_codes": stats.close_codes,
            "lost": lost,
            "open": sum(
                1 for c in self.clients if c.transport is not None and not c.transport.is_closing()
            ),
            "latencies": lat,
        }

    async def close(self) -> dict[str, Any]:
        """Close every connection (not counted as disconnects)."""
        for client in self.clients:
            client.close()
        self.clients = []
        await asyncio.sleep(0.2)
        return {}


async def _serve(commands_in: Pipe, replies_out: Pipe) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def read_commands() -> None:
        # A blocking reader thread: the pipe must stay blocking for large messages.
        while True:
            try:
                command = commands_in.recv()
            except EOFError:
                command = {"cmd": "exit"}
            name = command["cmd"]  # read before the loop thread pops it
            loop.call_soon_threadsafe(commands.put_nowait, command)
            if name == "exit":
                return

    threading.Thread(target=read_commands, daemon=True).start()
    generator = Generator()
    while True:
        command = await commands.get()
        name = command.pop("cmd")
        if name == "exit":
            await generator.close()
            with contextlib.suppress(OSError):
                replies_out.send({})
            return
        method = getattr(generator, "stats_" if name == "stats" else name)
        try:
            replies_out.send(await method(**command))
        except Exception as exc:
            replies_out.send({"exception": f"{type(exc).__name__}: {exc}"})


def worker_main(commands_in: Pipe, replies_out: Pipe) -> None:
    """Entry point of a worker process."""
    import resource

    import uvloop

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(_serve(commands_in, replies_out))


class Workers:
    """A pool of worker processes driven from the controller (blocking calls)."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.replies: list[Pipe] = []
        self.processes = []
        for _ in range(count):
            commands_in, commands_out = context.Pipe(duplex=False)
            replies_in, replies_out = context.Pipe(duplex=False)
            process = context.Process(
                target=worker_main, args=(commands_in, replies_out), daemon=True
            )
            process.start()
            self.pipes.append(commands_out)
            self.replies.append(replies_in)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (their CPU time and socket reads are measured)."""
        return [process.pid for process in self.processes if process.pid is not None]

    def call(
        self, cmd: str, per_worker: list[dict[str, Any]] | None = None, **kw: Any
    ) -> list[Any]:
        """Send ``cmd`` to every worker (``per_worker`` adds per-worker arguments); replies."""
        for index, pipe in enumerate(self.pipes):
            args = dict(kw)
            if per_worker is not None:
                args.update(per_worker[index])
            pipe.send({"cmd": cmd, **args})
        replies = [pipe.recv() for pipe in self.replies]
        for reply in replies:
            if isinstance(reply, dict) and "exception" in reply:
                raise RuntimeError(f"worker failed: {reply['exception']}")
        return replies

    async def acall(
        self, cmd: str, per_worker: list[dict[str, Any]] | None = None, **kw: Any
    ) -> list[Any]:
        """:meth:`call` from a running event loop (the controller's publisher keeps running)."""
        return await asyncio.to_thread(self.call, cmd, per_worker, **kw)

    def connect(
        self, host: str, port: int, token: str, channel_sets: list[list[str]], **kw: Any
    ) -> dict[str, Any]:
        """Spread ``channel_sets`` over the workers and connect them all; merged result."""
        count = len(self.pipes)
        shares = [{"channel_sets": channel_sets[i::count]} for i in range(count)]
        started = time.perf_counter()
        replies = self.call("connect", shares, host=host, port=port, token=token, **kw)
        errors: dict[str, int] = {}
        for reply in replies:
            for reason, n in reply["errors"].items():
                errors[reason] = errors.get(reason, 0) + n
        return {
            "connected": sum(r["connected"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "errors": errors,
            "seconds": time.perf_counter() - started,
        }

    def stats(self, final: dict[str, int] | None = None, latencies: bool = True) -> dict[str, Any]:
        """Counters summed over the workers; ``latencies`` concatenated (microseconds);
        ``at`` and ``by_worker`` keep each worker's own snapshot time (``time.monotonic()``)
        and frame count, since a busy worker may answer late."""
        replies = self.call("stats", final=final, latencies=latencies)
        merged: dict[str, Any] = {"latencies": [], "close_codes": {}, "at": [], "by_worker": []}
        for reply in replies:
            merged["by_worker"].append((reply["at"], reply["frames"]))
            for key, value in reply.items():
                if key == "at":
                    merged["at"].append(value)
                elif key == "latencies":
                    merged["latencies"].extend(value)
                elif key == "close_codes":
                    for code, n in value.items():
                        merged["close_codes"][code] = merged["close_codes"].get(code, 0) + n
                else:
                    merged[key] = merged.get(key, 0) + value
        return merged

    def shutdown(self) -> None:
        """Close connections and stop the processes."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send({"cmd": "exit"})
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
