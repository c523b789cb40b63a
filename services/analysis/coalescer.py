"""Batching text deltas so that fan-out cost does not grow with the token rate.

A provider may emit hundreds of tiny deltas per second; publishing each would cost one broker
round trip and one frame per watcher per token. :class:`Coalescer` collects deltas and hands
them to ``flush`` as one string at most every ``interval`` seconds (measured from the oldest
unflushed delta, so no text waits longer than ``interval`` plus one publish), or at once when
``max_chars`` are waiting. Flushes run one at a time in order, in a task of their own, so the
provider's stream is never held up by a slow publish: text that arrives meanwhile simply joins
the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Coalescer:
    """Collects text with :meth:`add`; :meth:`close` flushes the rest and waits for it.

    An exception raised by ``flush`` stops the coalescer and is re-raised by :meth:`close`
    (and by any later :meth:`add`), so a failing publish cannot go unnoticed.
    """

    def __init__(
        self,
        flush: Callable[[str], Awaitable[None]],
        *,
        interval: float,
        max_chars: int = 2048,
    ) -> None:
        self._flush = flush
        self._interval = interval
        self._max_chars = max_chars
        self._parts: list[str] = []
        self._size = 0
        self._since = 0.0
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="analysis-coalescer")

    def add(self, text: str) -> None:
        """Queue ``text`` for the next flush. Never blocks."""
        if self._task.done():
            self._task.result()  # re-raise the flush failure
            raise RuntimeError("coalescer is closed")
        if not text:
            return
        if not self._parts:
            self._since = asyncio.get_running_loop().time()
        self._parts.append(text)
        self._size += len(text)
        self._wake.set()
        if self._size >= self._max_chars:
            self._urgent.set()

    async def close(self) -> None:
        """Flush whatever is waiting and stop; raises what a flush raised."""
        self._closing = True
        self._wake.set()
        self._urgent.set()
        await asyncio.shield(self._task)

    async def abort(self) -> None:
        """Stop without flushing (the analysis was cancelled or failed)."""
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            remaining = self._since + self._interval - loop.time()
            if remaining > 0 and not self._urgent.is_set():
                # asyncio.timeout: wait_for may swallow a racing cancellation on Python 3.11.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._urgent.wait()
            text = "".join(self._parts)
            self._parts.clear()
            self._size = 0
            self._wake.clear()
            self._urgent.clear()
            if text:
                await self._flush(text)
            if self._closing and not self._parts:
                return
            if self._parts:
                self._wake.set()
                if self._size >= self._max_chars or self._closing:
                    self._urgent.set()
