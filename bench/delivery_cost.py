"""Python work per delivery on the fan-out path, without sockets: instruction counts, not time.

Drives the real delivery code (``ChannelStream._dispatch`` → ``Connection.deliver`` →
``Flusher`` → transport) for ``--subscribers`` connections on one channel whose transports only
count what they are given, so what is measured is the interpreter's work per delivery, none of
the kernel's. Three regimes, as in ``handlers/realtime/transport.py``:

* ``light``: one publication per loop iteration (each connection's frame is written at once);
* ``burst``: ``--burst`` publications per loop iteration, handed to the stream one by one (frames
  queued, one write per connection per iteration: the load regime of session 5's code, and of
  publications that do not arrive together);
* ``batch``: ``--burst`` publications per loop iteration handed over together
  (``ChannelStream.on_publications``, as a Redis read or a busy loop pass of the memory broker
  brings them): one joined write per connection per iteration.

Run under callgrind twice, with ``--publications P`` and ``2P``; the difference divided by
``P * subscribers`` is the instructions per delivery, start-up excluded (load-independent,
unlike CPU time on a shared machine; kernel work is not counted)::

    .venv/bin/python -m bench.delivery_cost --count                      # C no-op transports
    .venv/bin/python -m bench.delivery_cost --count --transport sockets  # uvloop, socket pairs

``null`` transports are C built-ins that do nothing, so the count is the delivery code's own;
``sockets`` are uvloop transports over socket pairs whose other ends a child process drains,
so uvloop's user-space work per write is included. Without ``--count`` it runs once.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from handlers.realtime.transport import Connection, Flusher
from pubsub.broker import HistoryResult, Publication, StreamPosition
from pubsub.metrics import HubMetrics
from pubsub.namespaces import NamespaceOptions
from pubsub.stream import ChannelStream
from services.realtime.codecs import arena
from services.realtime.framing import websocket_text_frame
from services.realtime.wire import wire

PAYLOAD = b'{"t":1733526000000000,"p":"' + b"x" * 170 + b'"}'


class CountingTransport:
    """The part of ``asyncio.Transport`` a connection uses; counts writes and bytes."""

    __slots__ = ("size", "writes")

    def __init__(self) -> None:
        self.writes = 0
        self.size = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.size += len(data)

    def writelines(self, data: list[bytes]) -> None:
        self.writes += 1
        self.size += sum(map(len, data))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


class NullTransport:
    """The same methods as C built-ins that do nothing (like uvloop's, they cost no bytecode),
    so that the instruction counts are the delivery code's own."""

    __slots__ = ("get_write_buffer_size", "is_closing", "write", "writelines")

    def __init__(self) -> None:
        sink: collections.deque[bytes] = collections.deque(maxlen=0)
        self.write = sink.append
        self.writelines = sink.extend
        self.get_write_buffer_size = int  # int() == 0
        self.is_closing = bool  # bool() is False


async def _socket_transports(n: int) -> tuple[list[Any], subprocess.Popen[bytes]]:
    """``n`` real event-loop transports over socket pairs whose other ends a child process
    reads and discards (outside callgrind: it runs natively)."""
    loop = asyncio.get_running_loop()
    pairs = [socket.socketpair() for _ in range(n)]
    fds = [b.fileno() for _, b in pairs]
    drain = subprocess.Popen(
        [sys.executable, "-c", _DRAIN, *map(str, fds)], pass_fds=fds, stdin=subprocess.PIPE
    )
    transports = []
    for a, b in pairs:
        b.close()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        transports.append(transport)
    return transports, drain


_DRAIN = """
import selectors, socket, sys, threading
sel = selectors.DefaultSelector()
for fd in sys.argv[1:]:
    sock = socket.socket(fileno=int(fd))
    sock.setblocking(False)
    sel.register(sock, selectors.EVENT_READ)
threading.Thread(target=lambda: (sys.stdin.read(), __import__("os")._exit(0)), daemon=True).start()
while True:
    for key, _ in sel.select():
        try:
            if not key.fileobj.recv(1 << 20):
                sel.unregister(key.fileobj)
        except OSError:
            sel.unregister(key.fileobj)
"""


class NoHistory:
    async def read_history(self, *args: object, **kwargs: object) -> HistoryResult:
        raise AssertionError("no history in this benchmark")

    async def read_position(self, *args: object) -> StreamPosition:
        raise AssertionError("no history in this benchmark")


async def run(
    subscribers: int, publications: int, burst: int, transport_kind: str, together: bool = False
) -> tuple[int, int]:
    # As handlers/realtime/websocket.py makes it (getattr: the same file measures older code).
    fanout = getattr(Connection, "deliver_all", None)
    fanout_many = getattr(Connection, "deliver_many", None)
    encoder = wire(
        arena.CODEC,
        websocket_text_frame,
        *([fanout] if fanout else []),
        *([fanout_many] if fanout_many else []),
    )
    stream = ChannelStream(
        "bench:delivery",
        NamespaceOptions(),
        source=NoHistory(),
        metrics=HubMetrics.create(None),
        pending_limit=10_000,
        spawn=lambda coro: coro.close(),
    )
    flusher = Flusher()
    drain = None
    transports: list[Any]
    if transport_kind == "sockets":
        transports, drain = await _socket_transports(subscribers)
    else:
        kind = CountingTransport if transport_kind == "counting" else NullTransport
        transports = [kind() for _ in range(subscribers)]
    group = stream.live[encoder] = {}
    for i, transport in enumerate(transports):
        conn = Connection(
            f"c{i}",
            transport,
            flusher,
            encoder,
            max_messages=1_000_000,
            max_bytes=1 << 40,
        )
        group[conn] = None
    stream.offset, stream.epoch = 0, "e"
    offset = 0
    many = getattr(stream, "on_publications", None) if together else None
    while offset < publications:
        pubs = []
        for _ in range(min(burst, publications - offset)):
            offset += 1
            pubs.append(Publication("bench:delivery", offset, "e", PAYLOAD, time.time()))
        if many is not None and len(pubs) > 1:
            many(pubs)
        else:
            for pub in pubs:
                stream.on_publication(pub)
        await asyncio.sleep(0)
    for _ in range(3):
        await asyncio.sleep(0)
    counted = [t for t in transports if isinstance(t, CountingTransport)]
    result = sum(t.writes for t in counted), sum(t.size for t in counted)
    for t in transports:
        if isinstance(t, asyncio.Transport):
            t.close()
    if drain is not None:
        drain.stdin.close()  # type: ignore[union-attr]
        drain.wait()
    return result


def _instructions(args: list[str]) -> int:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "callgrind.out")
        subprocess.run(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                *(sys.executable, "-m", "bench.delivery_cost", *args),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts in every run
        )
        with open(out) as f:
            match = re.search(r"^summary:\s+(\d+)", f.read(), re.MULTILINE)
        assert match is not None
        return int(match.group(1))


def count(subscribers: int, publications: int, burst: int, transport: str) -> None:
    for regime, size in (("light", 1), ("burst", burst), ("batch", burst)):
        base = ["--subscribers", str(subscribers), "--burst", str(size), "--transport", transport]
        if regime == "batch":
            base.append("--together")
        one = _instructions([*base, "--publications", str(publications)])
        two = _instructions([*base, "--publications", str(2 * publications)])
        per = (two - one) / (publications * subscribers)
        print(
            f"{regime:5} (burst {size}): {per:,.0f} instructions per delivery"
            f" ({transport} transports, {subscribers} subscribers, {publications} extra"
            " publications)",
            flush=True,
        )


def _run(args: argparse.Namespace) -> tuple[int, int]:
    if args.transport == "sockets":
        import uvloop

        return uvloop.run(
            run(args.subscribers, args.publications, args.burst, "sockets", args.together)
        )
    return asyncio.run(
        run(args.subscribers, args.publications, args.burst, args.transport, args.together)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publications", type=int, default=20)
    parser.add_argument("--burst", type=int, default=4, help="publications per loop iteration")
    parser.add_argument(
        "--together",
        action="store_true",
        help="hand each iteration's publications over together (on_publications)",
    )
    parser.add_argument("--count", action="store_true", help="instructions per delivery")
    parser.add_argument(
        "--transport",
        choices=["counting", "null", "sockets"],
        default="counting",
        help="counting: Python fakes that count; null: C built-ins that do nothing; sockets:"
        " uvloop transports over socket pairs drained by a child process",
    )
    args = parser.parse_args(argv)
    if args.count:
        count(
            args.subscribers,
            args.publications,
            args.burst,
            "null" if args.transport == "counting" else args.transport,
        )
        return 0
    writes, size = _run(args)
    print(f"writes={writes} bytes={size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
