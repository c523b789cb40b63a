"""The application factory: wires settings, resources, middlewares and routes."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web, web_response
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest, multiprocess

from handlers import (
    alerts_api,
    analysis_api,
    auth_api,
    centrifugo_http_api,
    cors,
    dashboard,
    invites_api,
    keys,
    openapi,
    ops,
    proposals_api,
    publish_api,
    requests_api,
    static_files,
    strategies_api,
    trailing_slash,
    users_api,
    webhooks,
)
from handlers.auth_context import service_signatures
from handlers.http_caching import conditional_get_and_gzip
from handlers.metrics import DbPoolCollector, HttpMetrics, TokenCacheCollector
from handlers.middlewares import error_envelope, request_context, security_headers
from handlers.realtime import sse as realtime_sse
from handlers.realtime import uni as realtime_uni
from handlers.realtime import websocket as realtime_websocket
from server import lifecycle
from server.settings import Settings
from services.alerts.signatures import SecretBox
from services.auth.tokens import TokenService
from services.realtime.admission import UnauthenticatedSockets


def metrics_exposition(settings: Settings, registry: CollectorRegistry) -> Callable[[], bytes]:
    """What ``/metrics`` renders: ``registry``, or, when workers share a prometheus-client
    multiprocess folder, the series of every worker (counters summed, gauges per ``pid``)."""
    folder = settings.prometheus_multiproc_dir
    if folder is None:
        return lambda: generate_latest(registry)

    def every_worker() -> bytes:
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(folder))  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    return every_worker


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
        middlewares=[request_context, conditional_get_and_gzip, error_envelope, service_signatures],
        client_max_size=settings.handlers.http.max_body_bytes,
    )
    app[lifecycle.settings_key] = settings
    app[keys.config] = settings.handlers
    registry = CollectorRegistry()
    app[keys.registry] = registry
    app[keys.metrics_text] = metrics_exposition(settings, registry)
    app[keys.http_metrics] = HttpMetrics.create(registry)
    app[keys.tokens] = TokenService(settings.handlers.auth)
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, _resident_memory_bytes, ...
    registry.register(DbPoolCollector(lambda: app.get(keys.pool)))
    registry.register(TokenCacheCollector(app[keys.tokens]))
    app[keys.secret_box] = SecretBox(settings.handlers.auth.service_secret)
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
        realtime_websocket,
        realtime_sse,
        realtime_uni,
        publish_api,
        centrifugo_http_api,
        auth_api,
        static_files,
        dashboard,
        openapi,
        requests_api,
        proposals_api,
        invites_api,
        users_api,
        analysis_api,
        strategies_api,
        alerts_api,
        webhooks,
    ):
        module.setup_routes(app)
    cors.setup_cors(app)
    trailing_slash.setup(app)  # last: it only sees paths no route matched
    return app
