"""The fan-out benchmark's load generator counts deliveries, gaps and losses correctly.

The numbers in ``docs/benchmarks.md`` rest on this accounting, so it is checked against the
naive broadcast server of ``bench/raw_server.py`` over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from bench import raw_server
from bench.loadgen import Generator
from tests.helpers import DEADLINE


async def _publish(url: str, channel: str) -> int:
    body = {"data": {"t": int(time.time() * 1e6), "p": "x" * 150}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/api/v1/channels/{channel}/publish", json=body) as resp,
    ):
        assert resp.status == 200
        offset: int = (await resp.json())["offset"]
        return offset


async def _frames(generator: Generator, expected: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while generator.stats.frames < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stats: dict[str, Any] = await generator.stats_()
    return stats


async def test_generator_counts_deliveries_gaps_and_losses(aiohttp_server: Any) -> None:
    server = await aiohttp_server(raw_server.create_app())
    url = str(server.make_url("")).rstrip("/")
    generator = Generator()
    sets = [["alerts:a"], ["alerts:a", "alerts:b"], ["alerts:b"]]
    result = await generator.connect("127.0.0.1", server.port, "any", sets)
    assert result["connected"] == 3, result
    try:
        for channel in ("alerts:a", "alerts:a", "alerts:b"):
            await _publish(url, channel)
        stats = await _frames(generator, 6)
        assert stats["frames"] == 6  # two subscribers per channel
        assert stats["gaps"] == 0
        assert len(stats["latencies"]) == 6
        assert all(0 <= latency < 5_000_000 for latency in stats["latencies"])
        complete = await generator.stats_(final={"alerts:a": 2, "alerts:b": 1})
        assert complete["lost"] == 0

        # The server skips offset 3 of alerts:a: both of its subscribers see a gap and the
        # publication is counted as lost for each of them.
        server.app[raw_server.offsets_key]["alerts:a"] += 1
        assert await _publish(url, "alerts:a") == 4
        stats = await _frames(generator, 8)
        assert stats["frames"] == 8
        assert stats["gaps"] == 2
        lossy = await generator.stats_(final={"alerts:a": 4, "alerts:b": 1})
        assert lossy["lost"] == 2

        # After a reset, losses count from the offsets reached so far.
        await generator.reset()
        await _publish(url, "alerts:b")
        await _frames(generator, 2)
        fresh = await generator.stats_(final={"alerts:a": 4, "alerts:b": 2})
        assert fresh["frames"] == 2
        assert fresh["lost"] == 0
        assert fresh["disconnects"] == 0
    finally:
        await generator.close()
