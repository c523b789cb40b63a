"""Mail delivery through a real SMTP server (aiosmtpd on a free port), and its failure path."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from handlers import keys
from server.app import create_app


class Inbox:
    """aiosmtpd handler that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


async def test_magic_link_is_sent_over_smtp(
    smtp: tuple[Inbox, int], make_settings: Any, aiohttp_client: Any
) -> None:
    inbox, port = smtp
    settings = make_settings(
        EMAIL_BACKEND="smtp",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(port),
        SMTP_STARTTLS="false",
        EMAIL_FROM="Arena <auth@arena.example>",
        PUBLIC_BASE_URL="https://arena.example",
    )
    client = await aiohttp_client(create_app(settings))
    resp = await client.post("/api/v1/auth/login", json={"email": "Smtp@Example.com"})
    assert resp.status == 202
    await client.server.app[keys.mailer].drain()
    assert len(inbox.messages) == 1
    message = inbox.messages[0]
    assert message["To"] == "smtp@example.com"
    assert message["From"] == "Arena <auth@arena.example>"
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"https://arena.example/login#token=" in body


async def test_smtp_failure_still_answers_202_and_logs_no_secret(
    make_settings: Any, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        EMAIL_BACKEND="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=str(_free_port())
    )
    client = await aiohttp_client(create_app(settings))
    with caplog.at_level(logging.INFO):
        resp = await client.post("/api/v1/auth/login", json={"email": "down@example.com"})
        assert resp.status == 202
        await asyncio.wait_for(client.server.app[keys.mailer].drain(), 10)
    failures = [r for r in caplog.records if r.getMessage() == "email delivery failed"]
    assert len(failures) == 1
    logged = " ".join(str(vars(r)) for r in caplog.records)
    assert "#token=" not in logged
