"""``python -m bench stock`` runs end to end on its own throwaway stack and accounts for every attempt.

Only correctness is asserted here (every attempt decided once, the JSON complete); the speed
figures are what the benchmark reports, never a test assertion.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def test_bench_stock_small_run_decides_every_attempt(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "stock", "--rates", "400", "--duration", "2",
         "--backlog", "3000", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stock @ 400 attempts/s" in proc.stdout
    assert "JSON written to" in proc.stdout

    result = json.loads(out.read_text())
    assert result["machine"]["cores"] >= 1
    [step] = result["stock"]["rates"]
    assert step["attempts"] == 800
    assert step["decided"] == 800, step  # each order's first decision, counted once
    assert step["p50_ms"] <= step["p99_ms"] <= step["max_ms"]
    assert {"worker", "broker", "redis"} <= set(step["processes"])
    sustained = result["stock"]["sustained"]
    assert sustained["decided"] == sustained["attempts"] == 3000
    assert sustained["attempts_per_s"] > 0


def test_bench_http_small_run_checks_every_answer(tmp_path: Path) -> None:
    """Orders through the real gateway and the minimal handler with wrk: every answer counted, every order
    decided once, nothing oversold, the sold-out sale answered 409 without publishing."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "http", "--http-connections", "8", "--http-duration", "1",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    http = json.loads(out.read_text())["http"]
    runs = {r["kind"]: r for r in http["runs"]}
    assert set(runs) == {"minimal", "decisions", "sold_out"}
    for r in runs.values():
        assert r["checks"]["ok"], r["checks"]
        assert r["requests"] > 0 and sum(r["statuses"].values()) == r["requests"]
    assert runs["minimal"]["statuses"] == {"200": runs["minimal"]["requests"]}
    dec = runs["decisions"]
    answered = dec["statuses"].get("200", 0) + dec["statuses"].get("202", 0)
    assert answered <= dec["decisions"]["orders"] <= answered + 8  # at most one in flight per connection
    assert dec["decisions"]["conflicting"] == 0 and dec["stock"]["oversold"] == 0 and dec["stock"]["balanced"]
    assert dec["stock"]["order_records"] == dec["decisions"]["orders"]
    out_run = runs["sold_out"]
    assert out_run["statuses"] == {"409": out_run["requests"]}
    assert out_run["stock"]["attempts"] == 0 and out_run["decisions"]["orders"] == 0
    assert {"gateway", "worker", "broker", "redis", "wrk"} <= set(dec["processes"])
    assert "HTTP decisions @ 8 connections" in proc.stdout
