"""A fake Anthropic Messages API for tests and benchmarks, reached by the real SDK via base_url.

``POST /v1/messages`` with ``"stream": true`` answers with real SSE framing
(``event: NAME\\ndata: JSON\\n\\n``): ``message_start``, ``content_block_start``, ``ping``, one
``content_block_delta``/``text_delta`` per scripted token, ``content_block_stop``,
``message_delta`` (stop reason and usage) and ``message_stop``. A :class:`Script` can instead
answer with an HTTP error status, emit an ``error`` event midway (``overloaded_error``), or keep
the stream open with pings until the client goes away (then ``disconnected`` is set).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

API_KEY = "sk-ant-test-key"


@dataclass
class Script:
    """What the next requests get."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "."])
    #: seconds between tokens
    delay: float = 0.0
    #: answer every request with this HTTP status and an error body of ``error_type``
    status: int | None = None
    #: after this many tokens, send an ``error`` event of ``error_type`` and end the stream
    error_after: int | None = None
    error_type: str = "overloaded_error"
    #: after this many tokens, ping until the client disconnects
    hang_after: int | None = None
    #: wait this long before the first byte
    first_byte_delay: float = 0.0
    input_tokens: int = 321
    stop_reason: str = "end_turn"
    #: when set, tokens start flowing only once it is set (benchmarks wait for their watchers)
    gate: asyncio.Event | None = None


@dataclass
class SentToken:
    """When a token left the fake server and where its text ends in the whole output."""

    time: float
    end: int


class FakeAnthropic:
    """Run with :meth:`start`; ``url`` is the base URL to give the SDK."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.requests: list[dict[str, Any]] = []
        self.sent: list[SentToken] = []
        self.disconnected = asyncio.Event()
        self.streaming = asyncio.Event()
        self._closing = False
        self.app = web.Application()
        self.app.router.add_post("/v1/messages", self._messages)
        self._server = TestServer(self.app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self._server.make_url("")).rstrip("/")

    async def start(self) -> None:
        await self._server.start_server()

    async def close(self) -> None:
        self._closing = True  # ends hanging streams, or closing would wait for them
        await self._server.close()

    def text(self) -> str:
        """The whole text the script streams."""
        return "".join(self.script.tokens)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        script = self.script
        # SDK versions send the key as x-api-key or as a bearer token.
        keys = {request.headers.get("x-api-key"), request.headers.get("Authorization")}
        if API_KEY not in keys and f"Bearer {API_KEY}" not in keys:
            return self._error(401, "authentication_error", "invalid API key")
        if script.status is not None:
            return self._error(script.status, script.error_type, "scripted failure")
        if script.first_byte_delay:
            await asyncio.sleep(script.first_byte_delay)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            await self._stream(response, body, script)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response

    def _error(self, status: int, kind: str, message: str) -> web.Response:
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return web.Response(
            body=orjson.dumps(body),
            status=status,
            content_type="application/json",
            headers={"retry-after-ms": "1", "request-id": "req_fake"},
        )

    async def _stream(
        self, response: web.StreamResponse, body: dict[str, Any], script: Script
    ) -> None:
        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")

        await send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", "claude-test"),
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": script.input_tokens, "output_tokens": 1},
                },
            },
        )
        await send(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        await send("ping", {"type": "ping"})
        self.streaming.set()
        if script.gate is not None:
            await script.gate.wait()
        end = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index, token in enumerate(script.tokens):
            if script.error_after == index:
                await send(
                    "error",
                    {
                        "type": "error",
                        "error": {"type": script.error_type, "message": "Overloaded"},
                    },
                )
                return
            if script.hang_after == index:
                while not self._closing:  # until a write fails: the client went away
                    await asyncio.sleep(0.02)
                    await send("ping", {"type": "ping"})
                return
            delta = {"type": "text_delta", "text": token}
            await send(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
            end += len(token)
            self.sent.append(SentToken(time.time(), end))
            if script.delay:  # on a fixed schedule, so the rate holds under load
                await asyncio.sleep(max(0.0, started + (index + 1) * script.delay - loop.time()))
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": script.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": len(script.tokens)},
            },
        )
        await send("message_stop", {"type": "message_stop"})
