"""The one JSON error envelope used for every 4xx and 5xx response.

::

    {"error": true, "status_code": 400, "message": "...", "request_id": "...",
     "timestamp": "2026-11-22T10:00:00.000Z", "errors": {"field": ["problem", ...]}}
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from services.context import request_id_var


class ApiError(Exception):
    """Raise from a handler to answer with the error envelope.

    ``errors`` maps field names (dotted paths) to lists of messages.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or {}
        self.headers = headers or {}


def envelope(status: int, message: str, errors: dict[str, Any] | None = None) -> dict[str, Any]:
    """The error body for ``status``."""
    return {
        "error": True,
        "status_code": status,
        "message": message,
        "request_id": request_id_var.get(),
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "errors": errors or {},
    }


def error_response(
    status: int,
    message: str,
    errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON response carrying the error envelope."""
    return web.Response(
        body=orjson.dumps(envelope(status, message, errors)),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson (datetimes, UUIDs and dataclasses included)."""
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
        headers=headers,
    )
