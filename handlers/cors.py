"""CORS for the REST API (``aiohttp-cors``), with the same exact-match origin list as the
WebSocket handshake (``ALLOWED_ORIGINS``).

Only ``/api/...`` routes get CORS: the WebSocket endpoint checks ``Origin`` itself (browsers do
not preflight WebSockets) and webhooks are called server-to-server. Credentials (cookies) are
not allowed: the API authenticates with bearer tokens, which a foreign page cannot read.

A refused preflight is a 403 whose error envelope carries aiohttp-cors's reason (unknown
origin, a header or method not allowed, ...), via ``middlewares.error_envelope``.
"""

from __future__ import annotations

import aiohttp_cors
from aiohttp import web

from handlers import keys

#: Request headers a browser client may send (the ``x-signature*`` ones sign service requests,
#: see ``services/auth/service_signature.py``).
ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "If-Match",
    "Idempotency-Key",
    "X-Request-ID",
    "X-Signature",
    "X-Timestamp",
    "X-Signature-Version",
)
#: Response headers a browser client may read.
EXPOSE_HEADERS = ("ETag", "Location", "Retry-After", "X-Request-ID")
PREFLIGHT_MAX_AGE = 600


def setup_cors(app: web.Application) -> None:
    """Enable CORS on every ``/api/`` route registered so far; call after all routes."""
    origins = app[keys.config].http.allowed_origins
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False,
        allow_headers=ALLOW_HEADERS,
        expose_headers=EXPOSE_HEADERS,
        allow_methods="*",
        max_age=PREFLIGHT_MAX_AGE,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        resource = route.resource
        if resource is None or route.method == "OPTIONS":
            continue
        if resource.canonical.startswith("/api/"):
            cors.add(route)
