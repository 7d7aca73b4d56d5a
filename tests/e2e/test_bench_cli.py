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
    """Orders through the real gateway (one process, then two sharing the port) and the minimal handler with
    wrk: every answer counted, every order decided once, nothing oversold, the sold-out sale answered 409
    without publishing."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "http", "--http-connections", "8", "--http-duration", "1",
         "--gateway-processes", "1,2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    http = json.loads(out.read_text())["http"]
    runs = {(r["kind"], r["gateway_processes"]): r for r in http["runs"]}
    assert set(runs) == {("minimal", 0), ("decisions", 1), ("sold_out", 1), ("decisions", 2), ("sold_out", 2)}
    for r in runs.values():
        assert r["checks"]["ok"], r["checks"]
        assert r["requests"] > 0 and sum(r["statuses"].values()) == r["requests"]
    minimal = runs[("minimal", 0)]
    assert minimal["statuses"] == {"200": minimal["requests"]}
    for procs in (1, 2):
        dec = runs[("decisions", procs)]
        answered = dec["statuses"].get("200", 0) + dec["statuses"].get("202", 0)
        assert answered <= dec["decisions"]["orders"] <= answered + 8  # at most one in flight per connection
        assert dec["decisions"]["conflicting"] == 0 and dec["stock"]["oversold"] == 0 and dec["stock"]["balanced"]
        assert dec["stock"]["order_records"] == dec["decisions"]["orders"]
        assert {"gateway", "worker", "broker", "redis", "wrk"} <= set(dec["processes"])
        sold_out = runs[("sold_out", procs)]
        assert sold_out["statuses"] == {"409": sold_out["requests"]}
        assert sold_out["stock"]["attempts"] == 0 and sold_out["decisions"]["orders"] == 0
    assert runs[("decisions", 2)]["processes"]["gateway"]["procs"] >= 3  # the parent and its two children
    assert "HTTP, gateway, orders with decisions @ 8 connections" in proc.stdout
