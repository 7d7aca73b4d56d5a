"""The bench's own logic: its help, the correctness checks of an HTTP run, targets and the limit estimate."""

from __future__ import annotations

import pytest

from bench.__main__ import main
from bench.http_orders import checks
from bench.limit import estimate
from bench.load import DecisionTally
from bench.markdown import _gap, limit_of


def test_help_lists_every_benchmark_and_the_http_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in ("http", "limit", "single", "stock", "metrics", "dashboard"):
        assert name in text
    assert "(default 64,1000)" in text and "--http-duration" in text and "(default 50000)" in text


def test_bad_connection_list_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["http", "--http-connections", "64,many"]) == 2
    assert "--http-connections" in capsys.readouterr().err


def _stock(**over: int) -> dict[str, object]:
    s: dict[str, object] = {
        "allotted": 10,
        "available": 4,
        "reserved": 5,
        "sold": 1,
        "attempts": 6,
        "order_records": 3,
        "oversold": 0,
        "balanced": True,
    }
    s.update(over)
    return s


def _tally(*decisions: tuple[str, str]) -> DecisionTally:
    t = DecisionTally()
    for order_id, outcome in decisions:
        t.add(order_id, outcome)
    return t


def test_decisions_run_is_ok_when_each_answered_order_has_one_decision() -> None:
    tally = _tally(("a", "accepted"), ("b", "accepted"), ("c", "rejected"), ("a", "accepted"))
    c = checks("decisions", 4, {"200": 3}, 3, _stock(), tally)
    assert c["ok"] and c["decided_once"] and c["repeated_decisions"] == 1 and c["spurious_202"] == 0


def test_conflicting_decisions_fail_the_run() -> None:
    tally = _tally(("a", "accepted"), ("b", "accepted"), ("c", "rejected"), ("a", "rejected"))
    c = checks("decisions", 4, {"200": 3}, 3, _stock(), tally)
    assert not c["ok"] and c["conflicting"] == 1


def test_oversold_stock_fails_the_run() -> None:
    tally = _tally(("a", "accepted"), ("b", "accepted"), ("c", "accepted"))
    c = checks("decisions", 4, {"200": 3}, 3, _stock(oversold=2, balanced=False), tally)
    assert not c["ok"]


def test_an_answered_order_without_a_decision_fails_the_run() -> None:
    tally = _tally(("a", "accepted"), ("b", "accepted"))
    c = checks("decisions", 4, {"200": 3}, 3, _stock(order_records=2), tally)
    assert not c["ok"] and not c["decided_once"]


def test_pending_answers_are_counted_as_spurious_once_decided() -> None:
    tally = _tally(("a", "accepted"), ("b", "accepted"), ("c", "accepted"))
    c = checks("decisions", 4, {"200": 2, "202": 1}, 3, _stock(), tally)
    assert c["pending_202"] == 1 and c["spurious_202"] == 1


def test_sold_out_run_must_publish_nothing() -> None:
    assert checks("sold_out", 4, {"409": 5}, 5, _stock(attempts=0), _tally())["ok"]
    assert not checks("sold_out", 4, {"409": 5}, 5, _stock(attempts=1), _tally(("a", "rejected")))["ok"]
    assert not checks("sold_out", 4, {"409": 4, "500": 1}, 5, _stock(attempts=0), _tally())["ok"]


def test_target_verdict_says_met_or_missed_and_by_how_much() -> None:
    assert _gap(1500.0, 6000.0, True) == ("missed", "4,500.0 short (75% below)")
    assert _gap(7500.0, 6000.0, True) == ("met", "25% to spare")
    assert _gap(180.0, 150.0, False) == ("missed", "30.0 over (20% above)")
    assert _gap(0.0, 0.0, False) == ("met", "")
    assert _gap(3.0, 0.0, False) == ("missed", "3 over")


def _measured(worker: float, redis: float) -> dict[str, float]:
    return {
        "producer_us_per_attempt": 4.0,
        "broker_in_us_per_attempt": 1.0,
        "worker_us_per_decision": worker,
        "broker_us_per_decision": 6.0,
        "redis_us_per_decision": redis,
        "decisions_per_s": 5000.0,
    }


def test_limit_is_the_smallest_bound_and_names_it() -> None:
    e = estimate(_measured(worker=150.0, redis=20.0), cores=2)
    assert e["limited_by"] == "the worker (one core)" and e["limit_per_s"] == round(1e6 / 150.0)
    e = estimate(_measured(worker=10.0, redis=15.0), cores=2)
    assert e["limited_by"] == "the cores" and e["limit_per_s"] == round(2e6 / 35.0)
    e = estimate(_measured(worker=5.0, redis=200.0), cores=8)
    assert e["limited_by"] == "the Redis (one core)" and e["because"].startswith("the Redis needs 200.0 µs")


def test_bottleneck_names_the_process_at_its_limit_or_none() -> None:
    at = limit_of({"gateway": {"cpu_percent": 97.0}, "worker": {"cpu_percent": 30.0}}, 2)
    assert at.startswith("the gateway is at its limit")
    full = limit_of({"broker": {"cpu_percent": 120.0}, "worker": {"cpu_percent": 70.0}}, 2)
    assert full.startswith("the 2 cores are full")
    idle = limit_of({"gateway": {"cpu_percent": 40.0}, "worker": {"cpu_percent": 30.0}}, 2)
    assert idle.startswith("no process is at a core's limit")
