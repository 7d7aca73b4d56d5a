"""Every process's /metrics has no ``*_created`` series (issue 15's small ops fixes): each counter and
histogram child used to export one more series, a timestamp no alert or dashboard reads."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from consumers.dashboard.metrics import DashboardMetrics
from producers.gateway.metrics import GatewayMetrics
from streams.metrics import WorkerMetrics


def test_no_created_series_in_any_process() -> None:
    worker, gateway, dashboard = (m(CollectorRegistry()) for m in (WorkerMetrics, GatewayMetrics, DashboardMetrics))
    worker.events_consumed.labels("orders", "order.placed").inc()
    worker.processing_latency.labels("stock").observe(0.01)
    gateway.records.inc()
    for m in (worker, gateway, dashboard):
        text = generate_latest(m.registry).decode()
        assert "_total" in text or "_count" in text  # something was exported
        assert "_created" not in text, [line for line in text.splitlines() if "_created" in line][:3]
