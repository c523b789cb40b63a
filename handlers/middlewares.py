"""Middlewares: request id, error envelope, metrics and access log, security headers."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from handlers import keys
from handlers.errors import ApiError, error_response
from pubsub.broker import BrokerError
from pubsub.namespaces import InvalidChannel
from services.context import request_id_var
from services.errors import (
    Forbidden,
    Invalid,
    InvalidState,
    RateLimited,
    Unauthenticated,
    Unavailable,
    Unsupported,
)
from services.ids import unique_id
from storage.errors import UNAVAILABLE, Conflict, NotFound, StaleVersion

log = logging.getLogger("arena.http")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def route_label(request: web.Request) -> str:
    """The route template (``/webhooks/tv/{secret}``), never the concrete path, so that secrets
    in URLs stay out of metrics and logs."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


#: path parameters never written to a log line (``/webhooks/tv/{secret}``)
SECRET_PATH_PARAMS = frozenset({"secret"})


def loggable_path(request: web.Request) -> str:
    """The concrete path with secret path parameters left as their template
    (``/api/v1/requests/5f0c...`` but ``/webhooks/tv/{secret}``); never the query string."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    formatter = resource.get_info().get("formatter")
    if not isinstance(formatter, str):
        return resource.canonical
    values = {
        name: "{" + name + "}" if name in SECRET_PATH_PARAMS else value
        for name, value in request.match_info.items()
    }
    try:
        return formatter.format_map(values)
    except (KeyError, IndexError, ValueError):
        return resource.canonical


#: set on a request whose response is an event stream (``request[LONG_LIVED] = True``)
LONG_LIVED = web.RequestKey("long_lived", bool)


def _log_if_slow(request: web.Request, status: int, elapsed: float) -> None:
    threshold = request.app[keys.config].http.slow_request_seconds
    # 101: a WebSocket lasts as long as the connection, as does an event stream; their
    # duration is not a request's.
    if threshold <= 0 or elapsed < threshold or status == 101 or request.get(LONG_LIVED):
        return
    log.warning(
        "slow request",
        extra={
            "method": request.method,
            "route": route_label(request),
            "path": loggable_path(request),
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "threshold_ms": round(threshold * 1000, 2),
            # also set by the JSON formatter; explicit so the line has it wherever it goes
            "request_id": request_id_var.get(),
        },
    )


#: attribute set on a route handler by :func:`owns_request`
_OWNS_REQUEST = "__arena_owns_request__"

_H = TypeVar("_H")


def owns_request(handler: _H) -> _H:
    """Mark a route handler that does every middleware's job itself, so that
    :func:`request_context` calls it directly and skips the chain.

    For WebSocket endpoints: their handler runs for the whole life of the connection, and each
    middleware it ran under would keep its coroutine frame alive that long (about 1.7 KB per
    idle connection for our four, ``bench/conn_memory.py``). None of the others applies to an
    upgrade (no JSON body to gzip or tag, no ``/api/v1/`` signature), so such a handler opens
    and closes a :class:`RequestScope` (request id, access log line, metrics) and answers its
    own errors with :func:`error_envelope_for`.
    """
    setattr(handler, _OWNS_REQUEST, True)
    return handler


class RequestScope:
    """What :func:`request_context` does around a request, for a handler that
    :func:`owns_request`: :meth:`open` sets the request id (log lines of the request, and of a
    WebSocket connection's whole life, carry it); :meth:`close` counts the request, writes its
    access log line and restores the previous request id."""

    __slots__ = ("_previous", "request_id", "started")

    def __init__(self, request: web.Request) -> None:
        supplied = request.headers.get("X-Request-ID", "")
        self.request_id = supplied if _REQUEST_ID_RE.match(supplied) else unique_id()
        # The previous value, not the ``Token`` that ``set`` returns: a WebSocket keeps its
        # scope for its whole life, and the token is one more object per idle connection.
        self._previous = request_id_var.get()
        request_id_var.set(self.request_id)
        self.started = time.perf_counter()

    def close(
        self, request: web.Request, status: int, response: web.StreamResponse | None = None
    ) -> None:
        """Count and log the request answered with ``status`` (``response``, when there is
        one not sent yet, gets the ``X-Request-ID`` header)."""
        if response is not None and not response.prepared:
            response.headers["X-Request-ID"] = self.request_id
        elapsed = time.perf_counter() - self.started
        route = route_label(request)
        metrics = request.app.get(keys.http_metrics)
        if metrics is not None:
            metrics.requests.labels(request.method, route, str(status)).inc()
            metrics.latency.labels(request.method, route).observe(elapsed)
        log.info(
            "request",
            extra={
                "method": request.method,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
        _log_if_slow(request, status, elapsed)
        request_id_var.set(self._previous)


@web.middleware
def request_context(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """Accept a sane ``X-Request-ID`` or make one; log one JSON line per request; count it.

    A plain function, not a coroutine: for a route handler that :func:`owns_request` it
    returns the handler's own awaitable, so no middleware frame lives as long as the handler.
    """
    route_handler = request.match_info.handler
    if getattr(route_handler, _OWNS_REQUEST, False):
        return route_handler(request)
    return _request_context(request, handler)


async def _request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    scope = RequestScope(request)
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        scope.close(request, status, response)


def _is_error(exc: web.HTTPException) -> bool:
    return exc.status >= 400


def _message(exc: web.HTTPException) -> str:
    """What went wrong, for the envelope: the raiser's own explanation of a client error when it
    gave one (aiohttp-cors says why it refused a preflight, aiohttp why a WebSocket handshake
    is malformed), else the status phrase. Server errors never show theirs."""
    if exc.status == 413:
        return "request body too large"
    text = (exc.text or "").strip()
    if exc.status < 500 and text and text != f"{exc.status}: {exc.reason}":
        return text
    return exc.reason


@web.middleware
async def error_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error envelope; never leak a traceback."""
    try:
        return await handler(request)
    except Exception as exc:
        return error_envelope_for(exc)


def error_envelope_for(exc: Exception) -> web.StreamResponse:
    """The JSON error envelope answering ``exc``; re-raises an ``HTTPException`` that is not
    an error (a redirect). Call it in an ``except`` block: an unexpected error is logged with
    its traceback."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.errors, exc.headers)
    if isinstance(exc, web.HTTPException):
        if not _is_error(exc):
            raise exc
        headers = {
            name: value
            for name, value in exc.headers.items()
            if name in {"Allow", "Retry-After", "WWW-Authenticate"}
        }
        return error_response(exc.status, _message(exc), headers=headers)
    if isinstance(exc, Invalid):
        return error_response(400, exc.message, exc.errors)
    if isinstance(exc, Unsupported):
        return error_response(415, exc.message)
    if isinstance(exc, Unauthenticated):
        return error_response(401, exc.message)
    if isinstance(exc, Forbidden):
        return error_response(403, exc.message)
    if isinstance(exc, InvalidState):
        return error_response(409, exc.message)
    if isinstance(exc, RateLimited):
        return error_response(429, exc.message, headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, Unavailable):
        log.warning("dependency unavailable", exc_info=True)
        return error_response(503, exc.message, headers={"Retry-After": "1"})
    if isinstance(exc, NotFound):
        return error_response(404, "not found")
    if isinstance(exc, StaleVersion):
        return error_response(412, "the resource changed since you read it")
    if isinstance(exc, Conflict):
        return error_response(409, str(exc) or "conflict")
    if isinstance(exc, InvalidChannel):
        return error_response(400, str(exc))
    if isinstance(exc, BrokerError):
        log.warning("broker unavailable", exc_info=True)
        return error_response(503, "message broker unavailable", headers={"Retry-After": "1"})
    if isinstance(exc, UNAVAILABLE):
        log.warning("database unavailable", exc_info=True)
        return error_response(503, "database unavailable", headers={"Retry-After": "1"})
    log.exception("unhandled error")
    return error_response(500, "internal server error")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: the same security headers on every response.

    ``X-XSS-Protection: 0`` switches the legacy XSS auditor *off* where it still exists: it is
    gone from current browsers and its filtering could itself be abused to leak page content
    (OWASP and MDN advise ``0``); the ``Content-Security-Policy`` is the protection instead.
    A handler may set its own value first (the API docs page has a wider CSP).
    """
    headers = response.headers
    if response.status == 101:
        # A WebSocket upgrade carries no document; its headers live as long as the socket,
        # so keep them to the request id.
        return
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Content-Security-Policy", "default-src 'self'")
    headers.setdefault("X-XSS-Protection", "0")
    if "X-Request-ID" not in headers:
        request_id = request_id_var.get()
        if request_id:
            headers["X-Request-ID"] = request_id
    config = request.app[keys.config]
    if config.http.hsts:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
