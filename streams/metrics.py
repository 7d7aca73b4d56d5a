"""Worker metrics, built on an injected registry (tests get a fresh one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """Every series a worker exports; labels are low-cardinality (never user or order ids)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No *_created series: one more series per counter and histogram child that no alert or
        # dashboard reads (prometheus-client's switch is process-wide and idempotent).
        disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_consumed = Counter(
            "flashsale_events_consumed_total", "Events consumed, by topic and type", ["topic", "type"], registry=r)
        self.client_time_clamped = Counter(
            "flashsale_client_time_clamped_total", "Events whose own time strayed more than the allowed skew from "
            "their record's timestamp (decided and counted on the pipeline's clock), by topic", ["topic"], registry=r)
        self.dead_letters = Counter(
            "flashsale_dead_letters_total", "Records routed to the dead-letter topic, by reason",
            ["reason"], registry=r)
        self.unsigned_outputs_dropped = Counter(
            "flashsale_unsigned_outputs_dropped_total", "Output records read without a valid signature (none, "
            "a wrong key, a changed value) and dropped, by topic", ["topic"], registry=r)
        self.processing_latency = Histogram(
            "flashsale_processing_latency_seconds", "Event time to Redis write, per agent", ["agent"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "flashsale_batch_events", "Events per processed batch, per agent", ["agent"],
            buckets=(1, 10, 50, 100, 500, 1000, 5000, 20000), registry=r)
        self.consumed_messages = Counter(
            "flashsale_consumed_messages_total", "Faust messages handed to an agent, by agent: with coalescing "
            "(FLASHSALE_COALESCE_RECORDS) one message carries a run of a partition's records", ["agent"], registry=r)
        self.consumed_records = Counter(
            "flashsale_consumed_records_total", "Kafka records handed to an agent, by agent", ["agent"], registry=r)
        self.consumer_lag = Gauge(
            "flashsale_consumer_lag", "Records behind the high watermark", ["topic", "partition"], registry=r)
        self.redis_latency = Histogram(
            "flashsale_redis_call_seconds", "Redis round trips, by operation", ["op"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=r)
        self.redis_errors = Counter(
            "flashsale_redis_errors_total", "Redis calls that failed, by operation", ["op"], registry=r)
        self.broker_errors = Counter(
            "flashsale_broker_errors_total", "Broker requests that failed, by operation", ["op"], registry=r)
        self.decisions = Counter(
            "flashsale_order_decisions_total", "Order decisions, by outcome and reason",
            ["outcome", "reason"], registry=r)
        self.order_updates = Counter(
            "flashsale_order_updates_total", "order.paid / order.cancelled / sale control outcomes",
            ["op", "status"], registry=r)
        self.reservations_expired = Counter(
            "flashsale_reservations_expired_total", "Reservations released, by cause", ["cause"], registry=r)
        self.sweep_budget_exhausted = Counter(
            "flashsale_sweep_budget_exhausted_total",
            "Sweeper ticks that stopped at their time budget with reservations still due", registry=r)
        self.sales_sold_out = Counter(
            "flashsale_sales_sold_out_total", "Sales that sold out", registry=r)
        self.spikes = Counter(
            "flashsale_spike_alerts_total", "Spike alerts emitted, by scope", ["scope"], registry=r)
        self.spikes_active = Gauge(
            "flashsale_spikes_active", "Rooms or sales in an open spike episode (this worker's partitions)",
            ["scope", "metric"], registry=r)
        self.late_events = Counter(
            "flashsale_late_events_total", "Events older than the allowed lateness, by agent", ["agent"],
            registry=r)
        self.handler_errors = Counter(
            "flashsale_handler_errors_total", "Batches whose handler raised, by agent", ["agent"], registry=r)
        self.invariant_violations = Gauge(
            "flashsale_stock_invariant_violations", "Active sales where allotted != available+reserved+sold",
            registry=r)
        self.sale_available = Gauge(
            "flashsale_sale_available_units", "Units available, active sales only", ["sale_id"], registry=r)
        self.sale_reserved = Gauge(
            "flashsale_sale_reserved_units", "Units reserved, active sales only", ["sale_id"], registry=r)
        self.sale_sold = Gauge(
            "flashsale_sale_sold_units", "Units sold, active sales only", ["sale_id"], registry=r)
        self.up = Gauge("flashsale_worker_ready", "1 when the worker has joined its group", registry=r)
