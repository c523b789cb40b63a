"""Sending e-mail (magic links) behind a two-method interface.

* :class:`ConsoleBackend` writes the message to the log and keeps the last few in memory —
  development and tests only; settings refuse it when ``ENV=production``.
* :class:`SmtpBackend` sends through an SMTP server with ``aiosmtplib``.

:class:`Mailer` sends in background tasks so that a request never waits for (or reveals the
timing of) delivery; failures are logged without the message body, which holds the secret link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib

from services.config import EmailConfig

log = logging.getLogger(__name__)


class EmailBackend(Protocol):
    """Delivers one message or raises."""

    async def send(self, message: EmailMessage) -> None: ...


class ConsoleBackend:
    """Logs each message (the link included) instead of sending it. Never in production."""

    def __init__(self, keep: int = 100) -> None:
        self.sent: deque[EmailMessage] = deque(maxlen=keep)

    async def send(self, message: EmailMessage) -> None:
        self.sent.append(message)
        log.info(
            "email (console backend, not sent)",
            extra={
                "to": message["To"],
                "subject": message["Subject"],
                "body": message.get_content(),
            },
        )


class SmtpBackend:
    """Sends through the configured SMTP server (STARTTLS by default)."""

    def __init__(self, config: EmailConfig) -> None:
        self._config = config

    async def send(self, message: EmailMessage) -> None:
        config = self._config
        await aiosmtplib.send(
            message,
            hostname=config.smtp_host,
            port=config.smtp_port,
            username=config.smtp_username,
            password=config.smtp_password,
            start_tls=config.smtp_starttls,
            timeout=config.smtp_timeout,
        )


def make_backend(config: EmailConfig) -> EmailBackend:
    """The backend named by ``EMAIL_BACKEND``."""
    if config.backend == "smtp":
        return SmtpBackend(config)
    return ConsoleBackend()


class Mailer:
    """Builds messages and sends them in tracked background tasks."""

    def __init__(self, backend: EmailBackend, sender: str) -> None:
        self.backend = backend
        self.sender = sender
        self._tasks: set[asyncio.Task[None]] = set()

    def send_later(self, to: str, subject: str, body: str) -> None:
        """Queue a plain-text message; returns at once."""
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message.set_content(body)
        task = asyncio.create_task(self._deliver(message), name="email")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, message: EmailMessage) -> None:
        try:
            await self.backend.send(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The body holds the secret link: log the failure, never the message.
            log.warning(
                "email delivery failed",
                extra={"subject": message["Subject"], "error": type(exc).__name__},
            )

    async def drain(self, grace: float = 10.0) -> None:
        """Wait for queued messages (at shutdown); cancel what is left after ``grace`` seconds."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
