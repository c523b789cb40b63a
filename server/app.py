"""The application factory: wires settings, resources, middlewares and routes."""

from __future__ import annotations

from aiohttp import web, web_response
from prometheus_client import CollectorRegistry

from handlers import (
    alerts_api,
    auth_api,
    cors,
    dashboard,
    keys,
    openapi,
    ops,
    proposals_api,
    publish_api,
    requests_api,
    static_files,
    strategies_api,
    webhooks,
    ws_handler,
)
from handlers.analysis import api as analysis_api
from handlers.auth_context import service_signatures
from handlers.metrics import HttpMetrics
from handlers.middlewares import error_envelope, request_context, security_headers
from handlers.tokens import TokenService
from handlers.ws_admission import UnauthenticatedSockets
from server import lifecycle
from server.settings import Settings

#: The ``Server`` header of every response: the product, never a version.
SERVER_HEADER = "arena-realtime"


def hide_server_version() -> None:
    """Make aiohttp send :data:`SERVER_HEADER` as ``Server`` instead of its default
    ``Python/3.x aiohttp/3.x``, which tells a scanner which known bugs to try.

    aiohttp has no setting for it; it fills ``Server`` from this module constant while
    preparing *every* response — handler answers, router 404s, static files, WebSocket
    upgrades and the 400 it sends for a request it cannot parse (which never reaches the app,
    so an ``on_response_prepare`` hook could not cover it). The check makes an aiohttp upgrade
    that renames the constant fail loudly here instead of silently leaking versions again
    (``tests/foundation/test_http_edges.py`` checks every kind of response).
    """
    if not isinstance(getattr(web_response, "SERVER_SOFTWARE", None), str):
        raise RuntimeError(
            "aiohttp.web_response.SERVER_SOFTWARE is gone; update hide_server_version"
        )
    web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]  # see above


def create_app(settings: Settings) -> web.Application:
    """Build the service for ``settings``; resources open when the app starts."""
    hide_server_version()
    app = web.Application(
        middlewares=[request_context, error_envelope, service_signatures],
        client_max_size=settings.handlers.http.max_body_bytes,
    )
    app[lifecycle.settings_key] = settings
    app[keys.config] = settings.handlers
    registry = CollectorRegistry()
    app[keys.registry] = registry
    app[keys.http_metrics] = HttpMetrics.create(registry)
    app[keys.tokens] = TokenService(settings.handlers.auth)
    app[keys.backends] = {}
    app[keys.ws_admission] = UnauthenticatedSockets(
        settings.handlers.ws.max_unauthenticated_per_ip, lambda conn: conn.principal is not None
    )
    app.on_response_prepare.append(security_headers)
    app.cleanup_ctx.append(lifecycle.database)
    app.cleanup_ctx.append(lifecycle.redis_client)
    app.cleanup_ctx.append(lifecycle.mail)
    app.cleanup_ctx.append(lifecycle.auth_janitor)
    app.cleanup_ctx.append(lifecycle.channels)
    app.cleanup_ctx.append(lifecycle.outbox_relay)
    app.cleanup_ctx.append(lifecycle.analyses)
    app.on_shutdown.append(lifecycle.close_websockets)
    for module in (
        ops,
        ws_handler,
        publish_api,
        auth_api,
        static_files,
        dashboard,
        openapi,
        requests_api,
        proposals_api,
        analysis_api,
        strategies_api,
        alerts_api,
        webhooks,
    ):
        module.setup_routes(app)
    cors.setup_cors(app)
    return app
