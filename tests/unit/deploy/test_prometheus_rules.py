"""deploy/prometheus: the scrape config and rules load in promtool, and the rule unit tests pass."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
PROM = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))



def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # No skip when it is missing: `make test` installs it (scripts/system-deps.sh), so absence is a setup bug.
    assert Path(PROMTOOL).exists(), "promtool is not installed: apt-get install prometheus"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_rules_are_valid() -> None:
    out = promtool("check", "rules", str(PROM / "alerts.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_scrape_config_is_valid_and_loads_the_rules() -> None:
    out = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout


def test_there_are_rule_unit_tests() -> None:
    assert len(RULE_TESTS) >= 3


@pytest.mark.parametrize("path", RULE_TESTS, ids=[p.name for p in RULE_TESTS])
def test_rule_unit_tests_pass(path: Path) -> None:
    out = promtool("test", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def _alerts() -> dict[str, dict]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_every_alert_has_severity_summary_and_runbook_anchor_in_operations_doc() -> None:
    ops = (ROOT / "docs" / "OPERATIONS.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+\s+(.+)$", ops, flags=re.M)}
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in ("page", "ticket", "warning"), name
        assert rule["annotations"]["summary"], name
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("docs/OPERATIONS.md#"), name
        assert runbook.split("#", 1)[1] in anchors, f"{name}: no heading for {runbook}"
        assert name in ops, f"{name} is not described in docs/OPERATIONS.md"


def test_the_important_alerts_are_unit_tested() -> None:
    tested = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    must = {"FlashsaleConsumerLagGrowing", "FlashsaleDecisionLatencyBudgetBurnFast",
            "FlashsaleDecisionLatencyBudgetBurnSlow", "FlashsaleProcessingLatencyBudgetBurnFast",
            "FlashsaleDeadLettersRising", "FlashsaleRedisErrors", "FlashsaleWorkerDown", "FlashsaleNoWorkers",
            "FlashsaleStockInvariantBroken", "FlashsaleGateway5xxRatio"}
    assert must <= set(_alerts()), must - set(_alerts())
    assert must <= tested, f"no firing test for {sorted(must - tested)}"


def declared_metrics() -> set[str]:
    """Every flashsale_* series name the code declares (string literals), with histogram children."""
    names: set[str] = set()
    for package in ("streams", "producers", "consumers"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r'"(flashsale_[a-z0-9_]+)"', path.read_text()))
    return names | {f"{n}_{suffix}" for n in names for suffix in ("bucket", "count", "sum")}


def test_series_used_by_rules_are_declared_by_the_code() -> None:
    """A renamed metric would silently disable its alert; catch it here."""
    used = set(re.findall(r"\b(flashsale_[a-z0-9_]+)", (PROM / "alerts.yml").read_text()))
    assert used, "no flashsale series in alerts.yml?"
    assert used <= declared_metrics(), sorted(used - declared_metrics())
