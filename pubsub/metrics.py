"""Prometheus metrics of the channel engine, created on the registry the server passes in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True, slots=True)
class HubMetrics:
    channels: Gauge
    subscriptions: Gauge
    publications: Counter
    deliveries: Counter
    drops: Counter
    recoveries: Counter
    gaps: Counter
    history_reads: Counter
    latency: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> HubMetrics:
        """Register the engine's metrics on ``registry`` (a private one when None)."""
        registry = registry if registry is not None else CollectorRegistry()
        return cls(
            channels=Gauge(
                "arena_channels",
                "Channels with local subscribers",
                registry=registry,
                multiprocess_mode="liveall",
            ),
            subscriptions=Gauge(
                "arena_subscriptions",
                "Local channel subscriptions",
                registry=registry,
                multiprocess_mode="liveall",
            ),
            publications=Counter(
                "arena_publications", "Publications received from the broker", registry=registry
            ),
            deliveries=Counter(
                "arena_deliveries", "Publications handed to local connections", registry=registry
            ),
            drops=Counter(
                "arena_duplicate_drops",
                "Publications dropped because their offset was already delivered",
                registry=registry,
            ),
            recoveries=Counter(
                "arena_recoveries",
                "Subscribe-with-since outcomes",
                ["outcome"],
                registry=registry,
            ),
            gaps=Counter(
                "arena_gaps",
                "Offset gaps seen on the live stream, by outcome (filled or lost)",
                ["outcome"],
                registry=registry,
            ),
            history_reads=Counter(
                "arena_history_reads",
                "History reads wanted by subscribes and refills: 'broker' went to the broker, "
                "'shared' waited for a read already in flight (single-flight)",
                ["source"],
                registry=registry,
            ),
            latency=Histogram(
                "arena_publish_deliver_seconds",
                "Time from publish to hand-off to local connections",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )
