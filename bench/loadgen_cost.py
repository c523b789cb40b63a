"""What the load generator spends per received publication, for each wire protocol.

The fan-out benchmark compares ``/ws`` subscribers with Centrifugo-protocol subscribers on a
2-core machine where the generator shares the cores with the server: a parser that costs more
per message takes CPU from the server and lowers the throughput of that target. This feeds the
generator's frame parser (``WsClient.data_received``, no sockets) with the frames the server
sends (the codecs' own publication bytes, 200-byte payload, 50 frames a read) and prints the
process CPU time per message, best of ``--repeat``::

    .venv/bin/python -m bench.loadgen_cost

Instruction counts do not depend on the machine's load: run it under callgrind with
``--reads 0`` and with ``--reads 200`` (10,000 messages); the difference divided by 10,000 is
instructions per message::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m bench.loadgen_cost --protocol centrifuge --reads 200 --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson

from bench.loadgen import Stats, WsClient
from pubsub.broker import Publication
from services.realtime.codecs import Codec
from services.realtime.codecs.arena import CODEC as ARENA
from services.realtime.codecs.centrifuge import CODEC as CENTRIFUGE
from services.realtime.framing import websocket_text_frame

CODECS: dict[str, Codec] = {"arena": ARENA, "centrifuge": CENTRIFUGE}
FRAMES_PER_READ = 50


def read_of(protocol: str) -> bytes:
    """One socket read: ``FRAMES_PER_READ`` publication frames with offsets 1, 2, ..."""
    codec = CODECS[protocol]
    pad = "x" * 170  # {"t": <µs>, "p": pad} is 200 bytes, as in bench.fanout
    return b"".join(
        websocket_text_frame(
            codec.publication(
                Publication(
                    "alerts:bench",
                    offset,
                    "abcd1234",
                    orjson.dumps({"t": int(time.time() * 1e6), "p": pad}),
                    time.time(),
                )
            )
        )
        for offset in range(1, FRAMES_PER_READ + 1)
    )


async def parse(protocol: str, reads: int) -> float:
    """Process CPU seconds to parse ``reads`` reads (offsets and latencies checked)."""
    client = WsClient(Stats(), "127.0.0.1", 1, "/", "token", ["alerts:bench"], protocol)
    client.upgraded = True
    data = read_of(protocol)
    started = time.process_time()
    for _ in range(reads):
        client.last.clear()  # every read starts again at offset 1: no gaps
        client.data_received(data)
    elapsed = time.process_time() - started
    stats = client.stats
    if (stats.frames, stats.gaps, stats.duplicates) != (reads * FRAMES_PER_READ, 0, 0):
        raise RuntimeError(f"miscounted: {stats.frames} frames, {stats.gaps} gaps")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=[*CODECS, "both"], default="both")
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    protocols = list(CODECS) if args.protocol == "both" else [args.protocol]
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for protocol in protocols:  # interleaved: A B A B ...
            seconds = asyncio.run(parse(protocol, args.reads))
            best[protocol] = min(best.get(protocol, seconds), seconds)
    messages = max(1, args.reads * FRAMES_PER_READ)
    for protocol in protocols:
        size = len(read_of(protocol)) / FRAMES_PER_READ
        print(
            f"{protocol}: {best[protocol] / messages * 1e9:,.0f} ns CPU/message "
            f"(best of {args.repeat}), {size:.0f} bytes/frame"
        )


if __name__ == "__main__":
    main()
