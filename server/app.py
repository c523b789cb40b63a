"""The application factory: wires settings, resources, middlewares and routes."""

from __future__ import annotations

from aiohttp import web
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
)
from handlers.analysis import api as analysis_api
from handlers.metrics import HttpMetrics
from handlers.middlewares import error_envelope, request_context, security_headers
from handlers.realtime import websocket as realtime_websocket
from handlers.tokens import TokenService
from server import lifecycle
from server.settings import Settings


def create_app(settings: Settings) -> web.Application:
    """Build the service for ``settings``; resources open when the app starts."""
    app = web.Application(
        middlewares=[request_context, error_envelope],
        client_max_size=settings.handlers.http.max_body_bytes,
    )
    app[lifecycle.settings_key] = settings
    app[keys.config] = settings.handlers
    registry = CollectorRegistry()
    app[keys.registry] = registry
    app[keys.http_metrics] = HttpMetrics.create(registry)
    app[keys.tokens] = TokenService(settings.handlers.auth)
    app[keys.backends] = {}
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
        realtime_websocket,
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
