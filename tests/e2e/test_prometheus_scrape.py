"""A real Prometheus server scrapes a running worker (python -m streams) and loads the alert rules.

Events are published to the real broker; the assertions go through Prometheus's HTTP API, so they
cover the whole path: agent -> registry -> /metrics -> scrape -> TSDB -> PromQL.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flashsale.embedded import ManagedProcess, free_port, spawn
from schemas.events import Event, OrderPlaced, SaleOpened, make_event
from schemas.topics import ORDERS
from tests.harness.broker import Broker
from tests.harness.kafka import produce_events
from tests.harness.workers import start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
WAIT_S = 60.0


@pytest.fixture
def prometheus_port() -> int:
    return free_port()


def _prometheus_config(tmp: Path, worker_port: int) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "flashsale-worker", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _get(port: int, path: str, params: dict[str, str] | None = None) -> Any:
    url = f"http://127.0.0.1:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def query(port: int, promql: str) -> list[dict[str, Any]]:
    body = _get(port, "/api/v1/query", {"query": promql})
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def scalar(port: int, promql: str) -> float | None:
    result = query(port, promql)
    return float(result[0]["value"][1]) if result else None


def wait_for(port: int, promql: str, ok: Any, what: str) -> float:
    """Poll an instant query (bounded: WAIT_S) until ``ok(value)``; return that value."""
    deadline = time.monotonic() + WAIT_S
    value = None
    while time.monotonic() < deadline:
        value = scalar(port, promql)
        if value is not None and ok(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: {promql} = {value} after {WAIT_S:.0f}s")


@pytest.fixture
def prometheus(tmp_path: Path, prometheus_port: int, request: pytest.FixtureRequest) -> Iterator[ManagedProcess]:
    assert Path(PROMETHEUS).exists(), "prometheus is not installed: apt-get install prometheus"
    worker_port = request.getfixturevalue("worker_env")["FLASHSALE_WORKER_PORT"]
    config = _prometheus_config(tmp_path, int(worker_port))
    proc = spawn("prometheus", [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                                "--storage.tsdb.retention.time=1h"], tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.alive(), proc.log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{prometheus_port}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready in 30s: " + proc.log_path.read_text()[-3000:]
            time.sleep(0.2)
        yield proc
    finally:
        proc.stop()


def _sale_events(sale: str, sku: str, orders: range, now_ms: int) -> list[Event]:
    events = [] if orders.start else [make_event(
        SaleOpened(sale_id=sale, sku=sku, price=1990, allotment=10_000, per_user_limit=5, starts_at=now_ms - 60_000,
                   ends_at=now_ms + 3_600_000, reservation_ttl_s=300),
        event_id=f"open-{sale}", ts=now_ms, room_id="room-e2e", user_id="host")]
    events += [make_event(OrderPlaced(order_id=f"o{i}", sale_id=sale, sku=sku, qty=1, unit_price=1990),
                          event_id=f"e-o{i}", ts=now_ms, room_id="room-e2e", user_id=f"u{i}", channel="live_room")
               for i in orders]
    return events


def test_prometheus_scrapes_a_running_worker(broker: Broker, topics: dict[str, str], worker_env: dict[str, str],
                                            prometheus: ManagedProcess, prometheus_port: int,
                                            tmp_path: Path) -> None:
    env = dict(worker_env)
    have_counters = importlib.util.find_spec("streams.counters.agent") is not None
    env["FLASHSALE_AGENTS"] = "stock,counters" if have_counters else "stock"
    worker = start_worker(env, tmp_path, name="worker")
    try:
        port = prometheus_port
        orders_topic = ORDERS  # series carry the logical topic name, not the prefixed one

        # The rules file loads in a real server, not only in promtool.
        groups = _get(port, "/api/v1/rules")["data"]["groups"]
        loaded = {rule["name"] for g in groups for rule in g["rules"]}
        assert {"FlashsaleStockInvariantBroken", "FlashsaleNoWorkers",
                "flashsale:decision_latency_slow_ratio:rate5m"} <= loaded

        wait_for(port, 'up{job="flashsale-worker"}', lambda v: v == 1, "worker scraped")
        wait_for(port, "flashsale_worker_ready", lambda v: v == 1, "worker joined its group")

        first = _sale_events("sale-e2e", "sku-e2e", range(0, 20), int(time.time() * 1000))
        asyncio.run(produce_events(broker.bootstrap, worker_env["FLASHSALE_TOPIC_PREFIX"], first))
        consumed_1 = wait_for(port, "sum(flashsale_events_consumed_total)", lambda v: v >= len(first),
                              "first batch consumed")

        second = _sale_events("sale-e2e", "sku-e2e", range(20, 50), int(time.time() * 1000))
        asyncio.run(produce_events(broker.bootstrap, worker_env["FLASHSALE_TOPIC_PREFIX"], second))
        consumed_2 = wait_for(port, "sum(flashsale_events_consumed_total)",
                              lambda v: v >= len(first) + len(second), "second batch consumed")
        assert consumed_2 > consumed_1

        by_type = {r["metric"]["type"]: float(r["value"][1]) for r in query(
            port, f'sum by (type) (flashsale_events_consumed_total{{topic="{orders_topic}"}})')}
        assert by_type.get("sale.opened") == 1
        assert by_type.get("order.placed", 0) >= 50
        accepted = wait_for(port, 'sum(flashsale_order_decisions_total{outcome="accepted"})', lambda v: v >= 50,
                            "orders accepted")
        assert accepted >= 50
        latency_n = wait_for(port, 'sum(flashsale_processing_latency_seconds_count{agent="stock"})',
                             lambda v: v >= 50, "decision latency observed")
        assert latency_n >= 50

        # One worker owns every partition of the orders topic: one lag series per partition, all caught up.
        lag = query(port, f'flashsale_consumer_lag{{topic="{orders_topic}"}}')
        deadline = time.monotonic() + WAIT_S
        while len(lag) < int(worker_env["FLASHSALE_PARTITIONS"]) and time.monotonic() < deadline:
            time.sleep(0.5)
            lag = query(port, f'flashsale_consumer_lag{{topic="{orders_topic}"}}')
        assert sorted(r["metric"]["partition"] for r in lag) == [str(p) for p in
                                                                   range(int(worker_env["FLASHSALE_PARTITIONS"]))]
        wait_for(port, f'max(flashsale_consumer_lag{{topic="{orders_topic}"}})', lambda v: v == 0, "lag drained")

        assert scalar(port, 'flashsale_redis_call_seconds_count{op="ping"}') is not None  # readiness pings
        assert scalar(port, "flashsale_stock_invariant_violations") == 0
    finally:
        worker.process.stop()
