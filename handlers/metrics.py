"""HTTP and WebSocket metrics, created on the registry the server passes in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True, slots=True)
class HttpMetrics:
    requests: Counter
    latency: Histogram
    ws_connections: Gauge
    ws_disconnects: Counter
    ws_commands: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> HttpMetrics:
        return cls(
            requests=Counter(
                "arena_http_requests",
                "HTTP requests by method, route template and status",
                ["method", "route", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "arena_http_request_seconds",
                "HTTP request latency by method and route template",
                ["method", "route"],
                registry=registry,
            ),
            ws_connections=Gauge(
                "arena_ws_connections",
                "Open WebSocket connections",
                registry=registry,
                multiprocess_mode="liveall",
            ),
            ws_disconnects=Counter(
                "arena_ws_disconnects",
                "WebSocket connections closed, by close code",
                ["code"],
                registry=registry,
            ),
            ws_commands=Counter(
                "arena_ws_commands",
                "WebSocket commands by type and outcome",
                ["type", "outcome"],
                registry=registry,
            ),
        )
