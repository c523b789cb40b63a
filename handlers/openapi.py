"""OpenAPI 3.1 generated from the routes and the pydantic models the handlers validate with.

Usage — describe a handler where it is defined, register its route as usual::

    from handlers.openapi import describe

    @describe(summary="Create a request", tags=("requests",), body=RequestCreate,
              responses={201: RequestOut}, errors=(403,))
    async def create_request(request: web.Request) -> web.Response: ...

    app.router.add_post("/api/v1/requests", create_request)

``query=Model`` documents query parameters, ``headers={"If-Match": "..."}`` request headers,
``responses={204: None}`` an empty body, ``auth=False`` a public endpoint (one that identifies
no caller: it then also ignores request signatures, see ``handlers/auth_context.py``). Every
other operation accepts the :data:`SECURITY` alternatives: a bearer token, or a request signed
with ``SERVICE_SECRET`` (version 1 or 2). 400 (when there is a
body or query), 401 (with ``auth``), 500 and 503 are added to ``errors`` automatically; every
error answers with the :class:`ErrorEnvelope`. ``GET /api/openapi.json`` walks ``app.router``,
so a route is documented exactly when it is registered and described — nothing to keep in sync.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from handlers.errors import json_response

REF_TEMPLATE = "#/components/schemas/{model}"
OPENAPI_ATTR = "__openapi__"
DOCS_HTML = Path(__file__).resolve().parent / "static" / "api-docs" / "index.html"
REDOC_HTML = Path(__file__).resolve().parent / "static" / "api-docs" / "redoc.html"

#: the PyPI package whose files we serve for Swagger UI and ReDoc (npm's swagger-ui-dist and
#: redoc, re-released with their licenses); only its data files are used, it is never imported
#: (its ``__init__`` imports Django)
UI_PACKAGE = "drf_spectacular_sidecar"

DOCS_CSP = "default-src 'self'; img-src 'self' data:"
#: ReDoc styles itself with inline <style> elements and runs its search index in a blob: worker
REDOC_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "worker-src 'self' blob:; font-src 'self' data:"
)

_PATH_PARAM_RE = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Any])


class ErrorEnvelope(BaseModel):
    """The body of every 4xx and 5xx response."""

    error: Literal[True]
    status_code: int = Field(ge=400, le=599)
    message: str
    request_id: str | None
    timestamp: str = Field(description="ISO 8601, UTC, milliseconds")
    errors: dict[str, list[str]] = Field(
        description="Per-field problems: dotted field path -> messages"
    )


@dataclass(frozen=True, slots=True)
class Operation:
    """What :func:`describe` records about one handler."""

    summary: str
    description: str | None = None
    tags: tuple[str, ...] = ()
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    path_formats: Mapping[str, str] = field(default_factory=dict)
    auth: bool = True
    operation_id: str | None = None


def describe(
    *,
    summary: str,
    tags: Iterable[str] = (),
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    responses: Mapping[int, type[BaseModel] | None] | None = None,
    errors: Iterable[int] = (),
    headers: Mapping[str, str] | None = None,
    path_formats: Mapping[str, str] | None = None,
    auth: bool = True,
    operation_id: str | None = None,
) -> Callable[[H], H]:
    """Decorator attaching an :class:`Operation` to a handler; the handler is unchanged.

    ``responses`` maps success status codes to their body model (``None``: no body) and
    defaults to ``{200: None}``; ``path_formats`` gives a JSON-schema ``format`` to path
    parameters (``{"id": "uuid"}``). The handler's docstring becomes the description.
    """

    def decorate(handler: H) -> H:
        operation = Operation(
            summary=summary,
            description=(handler.__doc__ or "").strip() or None,
            tags=tuple(tags),
            body=body,
            query=query,
            responses=dict(responses or {200: None}),
            errors=tuple(errors),
            headers=dict(headers or {}),
            path_formats=dict(path_formats or {}),
            auth=auth,
            operation_id=operation_id,
        )
        setattr(handler, OPENAPI_ATTR, operation)
        return handler

    return decorate


def operation_of(handler: Any) -> Operation | None:
    """The :class:`Operation` attached to ``handler``, if any."""
    found = getattr(handler, OPENAPI_ATTR, None)
    return found if isinstance(found, Operation) else None


def _error_codes(op: Operation) -> list[int]:
    codes = set(op.errors) | {500, 503}
    if op.body is not None or op.query is not None or op.path_formats:
        codes.add(400)
    if op.auth:
        codes.add(401)
    return sorted(codes)


def _collect_models(
    operations: Iterable[Operation],
) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorEnvelope, "serialization"): None
    }
    for op in operations:
        for model in (op.body, op.query):
            if model is not None:
                wanted[(model, "validation")] = None
        for model in op.responses.values():
            if model is not None:
                wanted[(model, "serialization")] = None
    return list(wanted)


def _query_parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        params.append(param)
    return params


def _operation_object(
    op: Operation,
    path_params: list[str],
    refs: Mapping[tuple[Any, JsonSchemaMode], dict[str, Any]],
    defs: Mapping[str, Any],
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = []
    for name in path_params:
        schema: dict[str, Any] = {"type": "string"}
        if name in op.path_formats:
            schema["format"] = op.path_formats[name]
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    if op.query is not None:
        ref = refs[(op.query, "validation")]["$ref"].rsplit("/", 1)[-1]
        parameters.extend(_query_parameters(defs[ref]))
    for name, description in op.headers.items():
        parameters.append(
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": description,
                "schema": {"type": "string"},
            }
        )
    responses: dict[str, Any] = {}
    for status, model in sorted(op.responses.items()):
        response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if model is not None:
            response["content"] = {"application/json": {"schema": refs[(model, "serialization")]}}
        responses[str(status)] = response
    for status in _error_codes(op):
        responses[str(status)] = {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": {"$ref": _ref("ErrorEnvelope")}}},
        }
    result: dict[str, Any] = {"summary": op.summary, "tags": list(op.tags)}
    if op.description:
        result["description"] = op.description
    if op.operation_id:
        result["operationId"] = op.operation_id
    if parameters:
        result["parameters"] = parameters
    if op.body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
        }
    result["responses"] = responses
    if not op.auth:
        result["security"] = []
    return result


def _ref(name: str) -> str:
    return REF_TEMPLATE.format(model=name)


#: How a caller may authenticate (``docs/security.md``): a bearer token, or a request signed
#: with ``SERVICE_SECRET`` in one of its two versions.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token (users) or a service token (trusted backends).",
    },
    "serviceSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "x-signature",
        "description": (
            "Trusted backends: lower-case hex HMAC-SHA256 of the canonical message with "
            "SERVICE_SECRET, instead of a token; the request then acts as role `service`. "
            "Version 1 (no x-signature-version): `{METHOD}|{body}|{timestamp}`. Each signature "
            "is accepted once, within SIGNATURE_TOLERANCE_SECONDS of the server clock. "
            "Ignored when an Authorization header is present. See docs/security.md."
        ),
    },
    "serviceTimestamp": {
        "type": "apiKey",
        "in": "header",
        "name": "x-timestamp",
        "description": "Time of signing, Unix milliseconds (part of the signed message).",
    },
    "serviceSignatureVersion": {
        "type": "apiKey",
        "in": "header",
        "name": "x-signature-version",
        "description": (
            "`2` selects the path-bound scheme for new integrations: "
            "`{METHOD}|{path with query}|{body}|{timestamp}` (the request target exactly as "
            "sent; the body is empty for GET)."
        ),
    },
}
#: Any one of these suffices on a route that identifies its caller.
SECURITY: list[dict[str, list[str]]] = [
    {"bearerAuth": []},
    {"serviceSignature": [], "serviceTimestamp": []},
    {"serviceSignature": [], "serviceTimestamp": [], "serviceSignatureVersion": []},
]


def build_spec(
    app: web.Application, *, title: str = "Arena Realtime", version: str = "1"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every described route of ``app``.

    Routes without :func:`describe` are left out (WebSocket, metrics, static files).
    """
    found: list[tuple[str, str, Operation]] = []
    for route in app.router.routes():
        op = operation_of(route.handler)
        resource = route.resource
        if op is None or resource is None or route.method in ("HEAD", "*"):
            continue
        found.append((resource.canonical, route.method.lower(), op))
    refs, schema = models_json_schema(
        _collect_models(op for _, _, op in found), ref_template=REF_TEMPLATE
    )
    defs: dict[str, Any] = schema.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for canonical, method, op in sorted(found, key=lambda item: (item[0], item[1])):
        path_params = _PATH_PARAM_RE.findall(canonical)
        path = _PATH_PARAM_RE.sub(lambda m: "{" + m.group(1) + "}", canonical)
        paths.setdefault(path, {})[method] = _operation_object(op, path_params, refs, defs)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": SECURITY_SCHEMES,
        },
        "security": SECURITY,
    }


_spec_cache = web.AppKey("openapi_spec_cache", dict[str, Any])


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI document (built once per app: routes are frozen after start-up)."""
    cache = request.app[_spec_cache]
    if "spec" not in cache:
        cache["spec"] = build_spec(request.app)
    return json_response(cache["spec"])


def ui_assets() -> tuple[Path, Path]:
    """The installed Swagger UI (``swagger-ui-dist``) and ReDoc (``redoc/bundles``) folders.

    Found with ``find_spec``, which locates the package without running its ``__init__``.
    """
    spec = importlib.util.find_spec(UI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {UI_PACKAGE} package (Swagger UI and ReDoc) is not installed")
    root = Path(next(iter(spec.submodule_search_locations))) / "static" / UI_PACKAGE
    return root / "swagger-ui-dist", root / "redoc" / "bundles"


async def docs_page(request: web.Request) -> web.FileResponse:
    """Interactive API documentation (Swagger UI, same-origin assets only)."""
    # Swagger UI's stylesheet draws its icons as data: SVGs; scripts stay 'self' only.
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": DOCS_CSP}
    return web.FileResponse(DOCS_HTML, headers=headers)


async def redoc_page(request: web.Request) -> web.FileResponse:
    """Reference documentation of the same OpenAPI document, rendered by ReDoc."""
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": REDOC_CSP}
    return web.FileResponse(REDOC_HTML, headers=headers)


def setup_routes(app: web.Application) -> None:
    app[_spec_cache] = {}
    swagger_ui, redoc = ui_assets()
    app.router.add_static("/static/vendor/swagger-ui", swagger_ui, append_version=False)
    app.router.add_static("/static/vendor/redoc", redoc, append_version=False)
    # /api/v1/docs/, /api/v1/redoc/ and /api/v1/schema/ are the paths the first version of
    # the service used; the trailing-slash alias makes both spellings answer.
    for path in ("/api/openapi.json", "/api/v1/schema"):
        app.router.add_get(path, openapi_json)
    for path in ("/api/docs", "/api/v1/docs"):
        app.router.add_get(path, docs_page)
    for path in ("/api/redoc", "/api/v1/redoc"):
        app.router.add_get(path, redoc_page)
