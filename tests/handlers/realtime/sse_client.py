"""Reading Server-Sent Events and newline-delimited JSON from a streaming response, line by
line, so tests can assert the exact fields the server wrote."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import ClientResponse

from tests.helpers import DEADLINE


async def _line(resp: ClientResponse, timeout: float) -> str:
    raw = await asyncio.wait_for(resp.content.readline(), timeout)
    if not raw:
        raise EOFError("the stream ended")
    return raw.decode().rstrip("\n")


async def next_event(resp: ClientResponse, timeout: float = DEADLINE) -> list[str]:
    """The lines of the next event block (comments included), without the blank line that
    ends it."""
    lines: list[str] = []
    while True:
        line = await _line(resp, timeout)
        if line == "" and lines:
            return lines
        if line != "":
            lines.append(line)


async def next_data_event(resp: ClientResponse, timeout: float = DEADLINE) -> list[str]:
    """The next event that is not only a ``: ping`` comment or a ``retry:``."""
    while True:
        lines = await next_event(resp, timeout)
        if any(not line.startswith((":", "retry:")) for line in lines):
            return lines


def data_of(lines: list[str]) -> Any:
    """The JSON in an event's ``data:`` lines."""
    return orjson.loads("\n".join(line[6:] for line in lines if line.startswith("data: ")))


async def ended(resp: ClientResponse, timeout: float = DEADLINE) -> bool:
    """Whether the body ends (after any remaining bytes)."""
    while True:
        raw = await asyncio.wait_for(resp.content.readline(), timeout)
        if not raw:
            return True


async def next_json_line(resp: ClientResponse, timeout: float = DEADLINE) -> Any:
    """The next non-empty line of an HTTP stream, parsed."""
    while True:
        line = await _line(resp, timeout)
        if line.strip():
            return orjson.loads(line)
