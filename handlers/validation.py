"""Reading request bodies: JSON parsing and pydantic validation with per-field errors."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from handlers.errors import ApiError

M = TypeVar("M", bound=BaseModel)


async def read_json(request: web.Request) -> Any:
    """The request body parsed as JSON; 400 when it is empty or not valid JSON."""
    body = await request.read()
    if not body:
        raise ApiError(400, "request body must be a JSON document")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON body: {exc.msg}") from None


def field_errors(exc: ValidationError) -> dict[str, list[str]]:
    """pydantic errors as ``{"dotted.path": ["message", ...]}``."""
    errors: dict[str, list[str]] = {}
    for item in exc.errors(include_url=False):
        path = ".".join(str(part) for part in item["loc"]) or "body"
        errors.setdefault(path, []).append(item["msg"])
    return errors


def validate(model: type[M], data: Any) -> M:
    """``data`` validated into ``model``; 400 with per-field errors otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "request validation failed", errors=field_errors(exc)) from None


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Read, parse and validate the JSON body into ``model``."""
    return validate(model, await read_json(request))


def query_params(request: web.Request, model: type[M]) -> M:
    """Validate the query string into ``model`` (repeated keys become lists)."""
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        data[key] = values if len(values) > 1 else values[0]
    return validate(model, data)
