"""streams.web: the worker's /metrics, /healthz, /readyz pages and lag bookkeeping, on a Faust app not started
(with a real Redis: tests/integration/test_web.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from flashsale.embedded import free_port
from streams import web
from streams.metrics import WorkerMetrics
from tests.harness.worker_web import WebWorker, sample, web_worker


@pytest.fixture
async def worker_without_redis() -> AsyncIterator[WebWorker]:
    async for w in web_worker(f"redis://127.0.0.1:{free_port()}/0"):  # nothing listens there
        yield w


async def test_healthz_answers_while_the_process_runs(worker_without_redis: WebWorker) -> None:
    resp = await worker_without_redis.client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


async def test_metrics_page_serves_the_worker_registry(worker_without_redis: WebWorker) -> None:
    w = worker_without_redis
    w.pipeline.metrics.events_consumed.labels(topic="unit.orders", type="order.placed").inc(3)
    resp = await w.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert 'flashsale_events_consumed_total{topic="unit.orders",type="order.placed"} 3.0' in text
    assert "flashsale_worker_ready 0.0" in text


async def test_metrics_page_speaks_openmetrics_when_asked(worker_without_redis: WebWorker) -> None:
    resp = await worker_without_redis.client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")


async def test_readyz_is_503_with_reasons_before_join_and_without_redis(worker_without_redis: WebWorker) -> None:
    w = worker_without_redis
    resp = await w.client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["ready"] is False
    assert body["group_joined"] is False
    assert "consumer group not joined" in body["reason"]
    assert "redis" in body["reason"]
    assert sample(w.pipeline, "flashsale_redis_errors_total", {"op": "ping"}) == 1.0


async def test_readyz_stays_503_without_redis_after_join(worker_without_redis: WebWorker) -> None:
    w = worker_without_redis
    await w.pipeline.app.on_partitions_assigned.send({TP("unit.orders", 0)})
    resp = await w.client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["group_joined"] is True
    assert "consumer group" not in body["reason"]
    assert body["reason"].startswith("redis")


async def test_revocation_drops_lag_series_of_revoked_partitions(worker_without_redis: WebWorker) -> None:
    w = worker_without_redis
    lag = w.pipeline.metrics.consumer_lag
    a, b = TP("unit.orders", 0), TP("unit.orders", 1)
    await w.pipeline.app.on_partitions_assigned.send({a, b})
    # Series are labelled with the logical topic name, whatever the deployment's prefix.
    la, lb = TP("orders", 0), TP("orders", 1)
    w.health._exported = web.apply_lag(lag, {la, lb}, {la: 5, lb: 7}, set())
    await w.pipeline.app.on_partitions_revoked.send({b})
    assert sample(w.pipeline, "flashsale_consumer_lag", {"topic": "orders", "partition": "0"}) == 5.0
    assert sample(w.pipeline, "flashsale_consumer_lag", {"topic": "orders", "partition": "1"}) is None


def test_lag_of() -> None:
    assert web.lag_of(120, 100) == 20
    assert web.lag_of(100, 100) == 0
    assert web.lag_of(100, 105) == 0  # position can pass a stale highwater between fetches
    assert web.lag_of(None, 10) is None
    assert web.lag_of(10, None) is None


def test_apply_lag_sets_keeps_and_removes_series() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    gauge = metrics.consumer_lag
    o0, o1, e2 = TP("orders", 0), TP("orders", 1), TP("engagement", 2)

    def lag(tp: TP) -> float | None:
        return metrics.registry.get_sample_value("flashsale_consumer_lag",
                                                 {"topic": tp.topic, "partition": str(tp.partition)})

    exported = web.apply_lag(gauge, {o0, o1, e2}, {o0: 3, o1: 0, e2: 9}, set())
    assert exported == {("orders", "0"), ("orders", "1"), ("engagement", "2")}
    assert lag(e2) == 9

    # o1 unreadable this round: keeps its last value; e2 was reassigned elsewhere: its series goes.
    exported = web.apply_lag(gauge, {o0, o1}, {o0: 4}, exported)
    assert exported == {("orders", "0"), ("orders", "1")}
    assert (lag(o0), lag(o1), lag(e2)) == (4, 0, None)

    # A measurement for a partition that is not assigned is ignored.
    exported = web.apply_lag(gauge, set(), {o0: 1}, exported)
    assert exported == set()
    assert lag(o0) is None
