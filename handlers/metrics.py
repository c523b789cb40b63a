"""HTTP, WebSocket and webhook metrics, created on the registry the server passes in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.auth.tokens import TokenService


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


#: histogram buckets for the webhook acknowledgement's parts (milliseconds matter there)
COMMIT_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AlertCommitMetrics:
    """Where a webhook's acknowledgement waits in the group commit
    (:class:`services.alerts.group_commit.CommitTimings`)."""

    wait: Histogram
    commit: Histogram
    group: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AlertCommitMetrics:
        return cls(
            wait=Histogram(
                "arena_alert_commit_wait_seconds",
                "Per alert: from reaching the group commit to its group's transaction starting",
                registry=registry,
                buckets=COMMIT_BUCKETS,
            ),
            commit=Histogram(
                "arena_alert_commit_seconds",
                "Per committed group: pooled connection, statement and commit (disk flush)",
                registry=registry,
                buckets=COMMIT_BUCKETS,
            ),
            group=Histogram(
                "arena_alert_commit_group_size",
                "Alerts per committed group transaction",
                registry=registry,
                buckets=(1, 2, 4, 8, 16, 32, 64),
            ),
        )

    def waited(self, seconds: float) -> None:
        self.wait.observe(seconds)

    def committed(self, seconds: float, size: int) -> None:
        self.commit.observe(seconds)
        self.group.observe(size)


class DbPoolCollector(Collector):
    """The PostgreSQL pool's connections, read from asyncpg at scrape time.

    asyncpg has no public count of callers waiting for a connection, so there is no
    "waiting" gauge: ``arena_db_pool_in_use`` staying at ``arena_db_pool_max`` means requests
    queue for connections (their time shows in ``arena_http_request_seconds``).
    """

    def __init__(self, pool: Callable[[], asyncpg.Pool | None]) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        pool = self._pool()
        if pool is None:  # not started yet, or already closed
            return
        size, idle = pool.get_size(), pool.get_idle_size()
        for name, text, value in (
            ("arena_db_pool_size", "Open PostgreSQL connections in the pool", size),
            ("arena_db_pool_idle", "Pool connections not lent to anyone", idle),
            ("arena_db_pool_in_use", "Pool connections lent to a request or task", size - idle),
            ("arena_db_pool_max", "Largest pool size (DB_POOL_MAX)", pool.get_max_size()),
        ):
            yield GaugeMetricFamily(name, text, value=value)


class TokenCacheCollector(Collector):
    """Hits and misses of the verified-token cache of
    :class:`~services.auth.tokens.TokenService`."""

    def __init__(self, tokens: TokenService) -> None:
        self._tokens = tokens

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "arena_token_cache_hits",
            "Access/service tokens accepted from the cache without verifying the signature",
            value=self._tokens.cache_hits,
        )
        yield CounterMetricFamily(
            "arena_token_cache_misses",
            "Access/service tokens that had to be verified (first use, expired entry, invalid)",
            value=self._tokens.cache_misses,
        )
