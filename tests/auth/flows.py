"""Helpers for the auth tests: run the magic-link flow against the real app."""

from __future__ import annotations

import re
import time
from email.message import EmailMessage
from typing import Any

from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from handlers import keys
from services.mail.mailer import ConsoleBackend
from tests.helpers import DEADLINE

LINK_RE = re.compile(r"(\S+)#token=([A-Za-z0-9_\-]+)")


async def sent_messages(client: TestClient) -> list[EmailMessage]:
    """Every message the console backend got so far (after queued sends finish)."""
    mailer = client.server.app[keys.mailer]
    await mailer.drain()
    backend = mailer.backend
    assert isinstance(backend, ConsoleBackend)
    return list(backend.sent)


def link_of(message: EmailMessage) -> tuple[str, str]:
    """``(url before the fragment, token)`` of the sign-in link in ``message``."""
    match = LINK_RE.search(message.get_content())
    assert match is not None, message.get_content()
    return match.group(1), match.group(2)


async def request_link(client: TestClient, email: str, **kwargs: Any) -> str:
    """POST /login for ``email`` and return the token mailed to it."""
    resp = await client.post("/api/v1/auth/login", json={"email": email}, **kwargs)
    assert resp.status == 202, await resp.text()
    mine = [m for m in await sent_messages(client) if m["To"] == email.lower()]
    assert mine, f"no message for {email}"
    return link_of(mine[-1])[1]


async def sign_in(client: TestClient, email: str) -> dict[str, Any]:
    """The whole flow: login, read the mail, verify; returns the verify body."""
    token = await request_link(client, email)
    resp = await client.post("/api/v1/auth/verify", json={"token": token})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def closed_with(ws: Any, code: int, timeout: float = DEADLINE) -> None:
    """Read (and drop) frames until the server closes ``ws``; assert the close code."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            break
    assert ws.close_code == code
