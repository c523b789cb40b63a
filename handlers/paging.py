"""Shared pieces of list and item endpoints: opaque keyset cursors and ids in paths."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import orjson
from aiohttp import web

from handlers.errors import ApiError


def path_uuid(request: web.Request, name: str = "id") -> UUID:
    """The UUID in path segment ``name``; a malformed id cannot name anything, so 404."""
    try:
        return UUID(request.match_info[name])
    except ValueError:
        raise ApiError(404, "not found") from None


T = TypeVar("T")


def split_page(
    rows: Sequence[T], limit: int, position: Callable[[T], tuple[datetime, UUID]]
) -> tuple[Sequence[T], str | None]:
    """``rows`` fetched with ``limit + 1``: the page to return and the cursor of the next one
    (None on the last page). ``position`` gives an item's sort time and id."""
    page = rows[:limit]
    cursor = encode_cursor(*position(page[-1])) if len(rows) > limit else None
    return page, cursor


def page_body(
    rows: Sequence[T],
    limit: int,
    position: Callable[[T], tuple[datetime, UUID]],
    item_json: Callable[[T], Any],
) -> dict[str, Any]:
    """A list endpoint's body, ``{"items": [...], "next_cursor": ...}``, for ``rows`` fetched
    with ``limit + 1`` (see :func:`split_page`); ``item_json`` shapes one item."""
    page, cursor = split_page(rows, limit, position)
    return {"items": [item_json(row) for row in page], "next_cursor": cursor}


def encode_cursor(stamp: datetime, item_id: UUID) -> str:
    """An opaque keyset position (the last item's sort time and id)."""
    raw = orjson.dumps([stamp.isoformat(), str(item_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, UUID] | None:
    """The position in ``cursor``; 400 when it is not one this API issued."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, item = orjson.loads(raw)
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError("naive timestamp")
        # astimezone can overflow for edge offsets (year 9999 at -23:00): still a bad cursor.
        return when.astimezone(UTC), UUID(item)
    except (binascii.Error, ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise ApiError(400, "invalid cursor", errors={"cursor": ["invalid cursor"]}) from None
