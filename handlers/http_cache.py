"""Versions over HTTP: the ``ETag`` of a versioned resource and the ``If-Match`` precondition.

Shared by the handler modules whose resources carry a ``version`` (requests, proposals).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from handlers.errors import ApiError, json_response

IF_MATCH = 'Only act if the resource still has this version (ETag, e.g. "3")'


def expected_version(request: web.Request, body_version: int | None) -> int | None:
    """The version the client read: ``If-Match`` (``"3"``, ``W/"3"``, ``3``) or the body's.

    ``If-Match: *`` and no precondition at all mean "whatever the current version is".
    A precondition that names no version of ours can never match, so it answers 412.
    """
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return body_version
    tag = header.strip().removeprefix("W/").strip('"')
    if not tag.isdigit() or len(tag) > 10:
        raise ApiError(412, "If-Match does not name a version of this resource")
    version = int(tag)
    if body_version is not None and body_version != version:
        raise ApiError(
            400,
            "If-Match and version disagree",
            errors={"version": ["does not match If-Match"]},
        )
    return version


def etag(version: int) -> dict[str, str]:
    """The ``ETag`` header for a resource at ``version``."""
    return {"ETag": f'"{version}"'}


def versioned_response(
    body: Any, version: int, *, status: int = 200, location: str | None = None
) -> web.Response:
    """The JSON ``body`` of a resource at ``version``, with its ``ETag``; a new resource
    (``status=201``) also names its URL in ``Location``."""
    headers = etag(version)
    if location is not None:
        headers["Location"] = location
    return json_response(body, status=status, headers=headers)
