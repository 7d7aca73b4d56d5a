"""Gateway metrics, built on an injected registry (tests get a fresh one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECORD_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10_000)


class GatewayMetrics:
    """Labels are low-cardinality: route templates, status codes, fixed outcome and reason sets."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No *_created series: one more series per counter and histogram child that no alert or
        # dashboard reads (prometheus-client's switch is process-wide and idempotent).
        disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "flashsale_gateway_requests_total", "HTTP requests, by route template and status", ["route", "status"],
            registry=r)
        self.latency = Histogram(
            "flashsale_gateway_request_seconds", "HTTP request handling time, by route template", ["route"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.events = Counter(
            "flashsale_gateway_events_total",
            "Events received: accepted (published), invalid, forbidden (outside the caller's scopes, or a "
            "pipeline output), or rejected with their request", ["outcome"],
            registry=r)
        self.records = Counter(
            "flashsale_gateway_records_total", "Kafka records published (a record holds one event or a batch)",
            registry=r)
        self.rejected = Counter(
            "flashsale_gateway_rejected_total", "Requests refused, by reason", ["reason"], registry=r)
        self.decisions = Counter(
            "flashsale_gateway_order_decisions_total",
            "Order requests answered: accepted, rejected, or pending (no decision within the timeout)", ["outcome"],
            registry=r)
        self.decision_wait = Histogram(
            "flashsale_gateway_decision_wait_seconds", "Publish-to-decision time seen by the orders endpoint",
            buckets=LATENCY_BUCKETS, registry=r)
        self.commands = Counter(
            "flashsale_gateway_commands_total",
            "Control and payment requests answered, by command (open, close, stock, pay, cancel) and outcome "
            "(done, refused, pending)", ["command", "outcome"], registry=r)
        self.order_record_events = Histogram(
            "flashsale_gateway_order_record_events", "Orders per Kafka record the orders endpoint published "
            "(coalesced: concurrent orders of one SKU share a record)", buckets=RECORD_BUCKETS, registry=r)
        self._request_series: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self.order_published = self.events.labels("accepted")  # the orders endpoint's one event
        self._decided = {o: self.decisions.labels(o) for o in ("accepted", "rejected", "pending")}
        self.ready = Gauge("flashsale_gateway_ready", "1 when the producer and decision reader are connected",
                           registry=r)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count a request and its time; the labelled series are looked up once per (route, status)."""
        series = self._request_series.get((route, status))
        if series is None:
            series = self._request_series[(route, status)] = (self.requests.labels(route, str(status)),
                                                              self.latency.labels(route))
        series[0].inc()
        series[1].observe(seconds)

    def decided(self, outcome: str) -> Counter:
        """The orders-answered series of ``outcome`` (accepted, rejected or pending)."""
        return self._decided.get(outcome) or self.decisions.labels(outcome)
