"""Publishes/s, history reads/s and pub/sub delivery rate of the Redis broker on a local Redis.

    .venv/bin/python bench/redis_broker.py [--url redis://127.0.0.1:6379/0] [--n 20000]

Prints one line per measurement. Uses its own key prefix and deletes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

import redis
import redis.asyncio

from pubsub.broker import Publication
from pubsub.namespaces import NamespaceOptions
from pubsub.redis_broker import RedisBroker

OPTIONS = NamespaceOptions(history_size=1000)
PAYLOAD = b'{"type":"bid","amount":1250,"currency":"EUR","user":"u-0001","note":"benchmark"}'


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.done = asyncio.Event()
        self.target = 0

    def on_publication(self, publication: Publication) -> None:
        self.count += 1
        if self.count == self.target:
            self.done.set()

    def on_publications(self, publications: list[Publication]) -> None:
        for publication in publications:
            self.on_publication(publication)

    def on_control(self, data: bytes) -> None:
        pass

    def on_reconnected(self) -> None:
        pass

    def on_resubscribed(self, channels: list[str]) -> None:
        pass


def report(what: str, count: int, seconds: float) -> None:
    print(f"{what:<48} {count / seconds:>10,.0f}/s  ({count} in {seconds:.2f}s)")


async def main(url: str, n: int, concurrency: int) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    publisher, receiver = RedisBroker(url, prefix=prefix), RedisBroker(url, prefix=prefix)
    counter = Counter()
    await publisher.start(Counter())
    await receiver.start(counter)
    try:
        start = time.perf_counter()
        for _ in range(n):
            await publisher.publish("bench:seq", PAYLOAD, OPTIONS)
        report("publish, 1 publisher (sequential)", n, time.perf_counter() - start)

        async def worker(channel: str, count: int) -> None:
            for _ in range(count):
                await publisher.publish(channel, PAYLOAD, OPTIONS)

        per = n // concurrency
        start = time.perf_counter()
        await asyncio.gather(*(worker("bench:conc", per) for _ in range(concurrency)))
        report(
            f"publish, {concurrency} concurrent publishers",
            per * concurrency,
            time.perf_counter() - start,
        )

        start = time.perf_counter()
        await asyncio.gather(*(worker(f"bench:c{i}", per) for i in range(concurrency)))
        report(
            f"publish, {concurrency} publishers on {concurrency} channels",
            per * concurrency,
            time.perf_counter() - start,
        )

        await receiver.subscribe("bench:live")
        counter.target = per * concurrency
        start = time.perf_counter()
        await asyncio.gather(*(worker("bench:live", per) for _ in range(concurrency)))
        await asyncio.wait_for(counter.done.wait(), 60)
        report(
            "publish + delivery to a subscribed node", counter.count, time.perf_counter() - start
        )

        reads = max(1, n // 4)
        start = time.perf_counter()
        for i in range(reads):
            await publisher.history("bench:seq", OPTIONS, since=n - 100 - (i % 50), limit=100)
        report(
            "history reads (100 entries since offset), 1 reader", reads, time.perf_counter() - start
        )

        async def reader(count: int) -> None:
            for _ in range(count):
                await publisher.history("bench:seq", OPTIONS, limit=10)

        start = time.perf_counter()
        await asyncio.gather(*(reader(reads // concurrency) for _ in range(concurrency)))
        report(
            f"history reads (newest 10), {concurrency} readers",
            reads // concurrency * concurrency,
            time.perf_counter() - start,
        )

        start = time.perf_counter()
        for _ in range(reads):
            await publisher.position("bench:seq", OPTIONS)
        report("position reads, 1 reader", reads, time.perf_counter() - start)

        await reader_capacity(url, receiver, counter, n * 5)
    finally:
        await publisher.close()
        await receiver.close()
        admin = redis.asyncio.Redis.from_url(url)
        keys = [key async for key in admin.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await admin.delete(*keys)
        await admin.aclose()


async def reader_capacity(url: str, receiver: RedisBroker, counter: Counter, n: int) -> None:
    """Messages/s one node's pub/sub reader parses and hands to its handler, with a separate
    process flooding pre-built wire messages (so the publisher costs this process nothing)."""
    await receiver.subscribe("bench:flood")
    counter.count, counter.target = 0, n
    counter.done.clear()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--url",
        url,
        "--n",
        str(n),
        "--flood",
        receiver.keys.live("bench:flood").decode(),
    )
    while counter.count == 0:
        await asyncio.sleep(0.001)
    start, first = time.perf_counter(), counter.count
    await asyncio.wait_for(counter.done.wait(), 120)
    report(
        "pub/sub reader capacity (parse + hand-off)",
        counter.count - first,
        time.perf_counter() - start,
    )
    await child.wait()


def flood(url: str, name: str, n: int) -> None:
    """Publish ``n`` wire messages to pub/sub channel ``name`` in pipelined batches."""
    client = redis.Redis.from_url(url)
    data = b'{"n":1,"pad":"' + b"x" * 60 + b'"}'
    for batch in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for offset in range(batch + 1, min(n, batch + 1000) + 1):
            pipe.publish(name, b"%d bench 1700000000.0 %s" % (offset, data))
        pipe.execute()
    client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--flood", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        flood(args.url, args.flood, args.n)
    else:
        asyncio.run(main(args.url, args.n, args.concurrency))
