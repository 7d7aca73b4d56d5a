"""Dashboard metrics, built on an injected registry (tests get a fresh one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

PUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class DashboardMetrics:
    """Every series the dashboard exports; no room or user labels (unbounded cardinality)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No *_created series: one more series per counter and histogram child that no alert or
        # dashboard reads (prometheus-client's switch is process-wide and idempotent).
        disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "flashsale_dashboard_connections", "Open live (SSE) connections", registry=r)
        self.rooms_watched = Gauge(
            "flashsale_dashboard_rooms_watched", "Rooms with at least one live subscriber", registry=r)
        self.pushes = Counter(
            "flashsale_dashboard_pushes_total", "Live payloads queued to subscribers", registry=r)
        self.ticks = Counter(
            "flashsale_dashboard_ticks_total", "Room snapshots computed (one per watched room per tick)",
            registry=r)
        self.push_duration = Histogram(
            "flashsale_dashboard_push_duration_seconds",
            "One room tick: read the snapshot from Redis, encode it, fan it out", buckets=PUSH_BUCKETS,
            registry=r)
        self.dropped = Counter(
            "flashsale_dashboard_dropped_frames_total",
            "Payloads replaced before a slow subscriber took them (it gets the newer one)", registry=r)
        self.errors = Counter(
            "flashsale_dashboard_tick_errors_total", "Room ticks whose Redis read failed", registry=r)
        self.rejected = Counter(
            "flashsale_dashboard_rejected_connections_total", "Live connections refused at the limit",
            registry=r)
