"""deploy/grafana: the dashboard's PromQL parses (promtool), names only series the code or the rules
export, covers what operators need, and the provisioning points at the compose Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.envnames import ROOT

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "flashsale.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def declared_series() -> set[str]:
    names: set[str] = set()
    for package in ("streams", "producers", "consumers"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r'"(flashsale_[a-z0-9_]+)"', path.read_text()))
    names |= {f"{n}_{suffix}" for n in names for suffix in ("bucket", "count", "sum")}
    rules = yaml.safe_load(ALERTS.read_text())
    return names | {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def test_panels_have_unique_ids_and_use_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "flashsale-pipeline"
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_every_query_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool has no 'check expr': wrap each query in a recording rule and check the rule file."""
    assert Path(PROMTOOL).exists(), "promtool is not installed: apt-get install prometheus"
    rules = [{"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "1m").replace("$__range", "1h")}
             for i, e in enumerate(exprs(dashboard))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_queries_name_only_exported_series(dashboard: dict[str, Any]) -> None:
    known = declared_series()
    used = {m for e in exprs(dashboard) for m in re.findall(r"\b(flashsale[_:][a-z0-9_:]+)", e)}
    assert used <= known, sorted(used - known)


@pytest.mark.parametrize("series", [
    "flashsale_events_consumed_total", "flashsale_order_decisions_total",
    "flashsale_processing_latency_seconds_bucket", "flashsale_consumer_lag", "flashsale_dead_letters_total",
    "flashsale_redis_call_seconds_bucket", "flashsale_redis_errors_total", "flashsale_sales_sold_out_total",
    "flashsale_spike_alerts_total", "flashsale_gateway_requests_total", "flashsale_dashboard_connections",
    "flashsale_stock_invariant_violations",
])
def test_the_dashboard_shows(dashboard: dict[str, Any], series: str) -> None:
    assert any(series in e for e in exprs(dashboard))


def test_latency_panels_show_p50_and_p99_per_agent(dashboard: dict[str, Any]) -> None:
    latency = [e for e in exprs(dashboard) if "flashsale_processing_latency_seconds_bucket" in e]
    assert any(e.startswith("histogram_quantile(0.5,") and "by (agent, le)" in e for e in latency)
    assert any(e.startswith("histogram_quantile(0.99,") and "by (agent, le)" in e for e in latency)


def test_provisioning_points_at_prometheus_and_the_mounted_dashboard() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "flashsale.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/flashsale.json:{path}/flashsale.json:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
