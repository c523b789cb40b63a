"""One JSON error envelope everywhere, request ids, structured logs without secrets, and the
security headers on every response."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from server.app import SERVER_HEADER, create_app
from server.logs import JsonFormatter
from server.settings import Settings
from tests.helpers import connect, make_user, request, service_token

PUBLISH = "/api/v1/channels/alerts:edges/publish"
ENVELOPE_KEYS = {"error", "status_code", "message", "request_id", "timestamp", "errors"}
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'",
    # The legacy XSS auditor is gone from browsers and could itself leak data; CSP replaces it.
    "X-XSS-Protection": "0",
}


async def assert_envelope(response: ClientResponse, status: int) -> dict[str, Any]:
    """The body is the error envelope for ``status``; returns it."""
    assert response.status == status
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert set(body) == ENVELOPE_KEYS, body
    assert body["error"] is True
    assert body["status_code"] == status
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    assert isinstance(body["errors"], dict)
    return body


async def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    body = await assert_envelope(await client.get("/nope"), 404)
    assert body["message"] == "Not Found"
    assert body["errors"] == {}


async def test_wrong_method_is_a_json_405_with_allow(client: TestClient) -> None:
    response = await client.delete("/health")
    await assert_envelope(response, 405)
    assert "GET" in response.headers["Allow"]


async def test_body_over_the_limit_is_a_json_413(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(MAX_BODY_BYTES="1024")))
    headers = {"Authorization": f"Bearer {service_token(client)}"}
    body = orjson.dumps({"data": "x" * 2000})
    response = await client.post(PUBLISH, data=body, headers=headers)
    assert (await assert_envelope(response, 413))["message"] == "request body too large"
    small = await client.post(PUBLISH, data=orjson.dumps({"data": "x"}), headers=headers)
    assert small.status == 200, await small.text()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON body"),
        (b"", "request body must be a JSON document"),
        (b"\xff\xfe", "malformed JSON body"),
        (b'{"data": 1', "malformed JSON body"),
    ],
)
async def test_malformed_json_is_400_never_500(
    client: TestClient, body: bytes, message: str
) -> None:
    headers = {"Authorization": f"Bearer {service_token(client)}"}
    response = await client.post(PUBLISH, data=body, headers=headers)
    assert (await assert_envelope(response, 400))["message"].startswith(message)


async def test_invalid_fields_are_400_with_per_field_errors(client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {service_token(client)}"}
    response = await client.post(
        PUBLISH, data=orjson.dumps({"data": 1, "idempotency_key": "", "extra": 2}), headers=headers
    )
    body = await assert_envelope(response, 400)
    assert set(body["errors"]) == {"idempotency_key", "extra"}


async def test_auth_errors_use_the_envelope(client: TestClient) -> None:
    response = await client.post(PUBLISH, data=b"{}", headers={"Authorization": "Bearer junk"})
    await assert_envelope(response, 401)


async def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    echoed = await client.get("/health", headers={"X-Request-ID": "trace-42.a:b"})
    assert echoed.headers["X-Request-ID"] == "trace-42.a:b"
    missing = await client.get("/nope", headers={"X-Request-ID": "trace-43"})
    assert (await assert_envelope(missing, 404))["request_id"] == "trace-43"
    generated = [(await client.get("/health")).headers["X-Request-ID"] for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in generated)
    assert generated[0] != generated[1]
    # header injection or absurd lengths are replaced, never echoed
    for bad in ("a b", "x" * 129, "<script>"):
        response = await client.get("/health", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


class JsonLines(logging.Handler):
    """Formats each record at emit time (inside the request's context) like production."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # aiohttp's access log is the test server's; ``arena-realtime serve`` turns it off
        # (tests/foundation/test_process.py checks the real process's output).
        if record.name != "aiohttp.access":
            self.lines.append(self.format(record))

    def entries(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.lines]


@pytest.fixture
def json_logs() -> Iterator[JsonLines]:
    handler = JsonLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_every_request_logs_one_json_line_with_its_request_id(
    client: TestClient, json_logs: JsonLines
) -> None:
    await client.get("/health", headers={"X-Request-ID": "log-check-1"})
    await client.get("/nope", headers={"X-Request-ID": "log-check-2"})
    entries = [entry for entry in json_logs.entries() if entry["message"] == "request"]
    first = next(entry for entry in entries if entry["request_id"] == "log-check-1")
    assert first["logger"] == "arena.http"
    assert first["level"] == "info"
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert (first["method"], first["route"], first["status"]) == ("GET", "/health", 200)
    assert first["duration_ms"] >= 0
    second = next(entry for entry in entries if entry["request_id"] == "log-check-2")
    assert (second["route"], second["status"]) == ("unmatched", 404)


async def test_logs_written_while_serving_carry_the_request_id(
    client: TestClient, json_logs: JsonLines
) -> None:
    async def noisy(_: Any) -> Any:
        logging.getLogger("arena.test").warning("inside a handler")
        raise RuntimeError("boom")

    client.server.app.router._frozen = False  # add a route to the running test app
    client.server.app.router.add_get("/boom", noisy)
    response = await client.get("/boom", headers={"X-Request-ID": "boom-1"})
    body = await assert_envelope(response, 500)
    assert body["message"] == "internal server error"
    assert "boom" not in body["message"]
    by_message = {entry["message"]: entry for entry in json_logs.entries()}
    assert by_message["inside a handler"]["request_id"] == "boom-1"
    assert by_message["unhandled error"]["request_id"] == "boom-1"
    assert "RuntimeError: boom" in by_message["unhandled error"]["exception"]


async def test_tokens_never_reach_the_logs(client: TestClient, json_logs: JsonLines) -> None:
    _, token = await make_user(client, "admin")
    service = service_token(client)
    ws = await connect(client, token)
    await request(ws, "subscribe", channel="alerts:secret-check")
    await ws.close()
    await client.post(
        PUBLISH, data=orjson.dumps({"data": 1}), headers={"Authorization": f"Bearer {service}"}
    )
    await client.get(f"/nope?token={token}", headers={"Authorization": f"Bearer {token}"})
    await client.get(f"/ws?token={service}")
    logging.getLogger("arena.test").info("login", extra={"token": token, "password": "hunter2"})
    text = "\n".join(json_logs.lines)
    assert json_logs.lines
    for secret in (token, service, "hunter2"):
        assert secret not in text
    assert '"token":"[redacted]"' in text


def assert_security_headers(response: ClientResponse, hsts: bool = False) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert ("Strict-Transport-Security" in response.headers) is hsts


async def test_security_headers_on_every_response(client: TestClient) -> None:
    assert_security_headers(await client.get("/health"))
    assert_security_headers(await client.get("/metrics"))
    assert_security_headers(await client.get("/nope"))
    assert_security_headers(await client.post(PUBLISH, data=b"{"))
    assert_security_headers(await client.delete("/ready"))
    assert_security_headers(await client.get("/"))  # the dashboard page
    assert_security_headers(await client.get("/static/arena-realtime.js"))


async def test_hsts_only_when_enabled(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(HSTS="true")))
    for response in (await client.get("/health"), await client.get("/nope")):
        assert_security_headers(response, hsts=True)
        assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


async def _raw_head(client: TestClient, request: bytes) -> tuple[int, dict[str, str]]:
    """Send ``request`` as raw bytes; the status and headers of the answer (lower-case names)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def assert_no_version(server: str | None) -> None:
    assert server is not None
    assert server == SERVER_HEADER
    assert not re.search(r"\d", server), server
    assert "aiohttp" not in server.lower()
    assert "python" not in server.lower()


async def test_the_server_header_never_discloses_versions(client: TestClient) -> None:
    responses = [
        await client.get("/health"),
        await client.get("/nope"),  # 404 from the router
        await client.delete("/health"),  # 405
        await client.get("/static/arena-realtime.js"),  # static file
        await client.get("/"),  # the dashboard page
        await client.get("/api/openapi.json"),
        await client.post(PUBLISH, data=b"{"),  # an error envelope from a handler
        await client.options(
            "/api/v1/requests",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        ),  # a refused CORS preflight
    ]
    for response in responses:
        assert_no_version(response.headers.get("Server"))
    ws_status, ws_headers = await _raw_head(
        client,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert ws_status == 101
    assert_no_version(ws_headers.get("server"))
    # A request aiohttp cannot even parse is answered below the application.
    bad_status, bad_headers = await _raw_head(client, b"NOT HTTP AT ALL\r\n\r\n")
    assert bad_status == 400
    assert_no_version(bad_headers.get("server"))
