"""The spike detector: pure function of (state, per-second counts)."""

from __future__ import annotations

import random

from streams.counters.spike import Outcome, SpikeConfig, SpikeState, evaluate

CFG = SpikeConfig(factor=3.0, min_rate=5.0, window_s=10, baseline_s=60.0, cooldown_s=10, warmup=10, settle_s=2,
                  catchup_s=240)
T0 = 1_700_000_000


def run(counts: list[int], cfg: SpikeConfig = CFG, step: int | None = None) -> tuple[SpikeState, list[int]]:
    """Feed ``counts`` (second T0+i has counts[i]) as a stream whose newest second grows by ``step``
    (at most the detector's catch-up span, as a worker that keeps up does)."""
    state = SpikeState()
    alerts: list[int] = []
    n = len(counts)
    step = step or 100
    for hi in range(step, n + step, step):
        hi = min(hi, n)
        lo = max(0, hi - cfg.lookback_s)
        out: Outcome = evaluate(state, T0 + lo, counts[lo:hi], T0 + hi - 1, cfg)
        state = out.state
        alerts += [a.second - T0 for a in out.alerts]
    return state, alerts


def steady_then_burst(base: int = 8, burst: int = 60, burst_at: int = 120, burst_len: int = 15,
                      total: int = 300) -> list[int]:
    return [burst if burst_at <= i < burst_at + burst_len else base for i in range(total)]


def test_one_alert_per_burst_episode() -> None:
    _, alerts = run(steady_then_burst())
    assert len(alerts) == 1
    # the sliding 10 s window crosses 3 x 8/s = 24/s a few seconds into the burst
    assert 120 <= alerts[0] < 130


def test_steady_traffic_never_alerts() -> None:
    rng = random.Random(7)
    counts = [rng.randint(5, 15) for _ in range(600)]
    _, alerts = run(counts)
    assert alerts == []


def test_quiet_room_below_the_floor_does_not_alert() -> None:
    counts = [0] * 100 + [3] + [0] * 50 + [1, 1, 1] + [0] * 100  # "3 events" after silence
    _, alerts = run(counts)
    assert alerts == []


def test_two_separate_bursts_give_two_episodes() -> None:
    counts = [8] * 400
    for i in range(120, 135):
        counts[i] = 60
    for i in range(300, 315):
        counts[i] = 60
    _, alerts = run(counts)
    assert len(alerts) == 2
    assert alerts[0] < 135 < 300 <= alerts[1] < 315


def test_incremental_evaluation_equals_one_shot() -> None:
    counts = steady_then_burst(total=400)
    one_state, one = run(counts)
    for step in (1, 3, 7, 50):
        state, alerts = run(counts, step=step)
        assert alerts == one
        assert state.t == one_state.t
        assert abs(state.baseline - one_state.baseline) < 1e-9


def test_reevaluating_the_same_seconds_changes_nothing() -> None:
    counts = steady_then_burst()
    state, alerts = run(counts)
    again = evaluate(state, T0, counts, T0 + len(counts) - 1, CFG)
    assert not again.advanced and again.alerts == []
    assert again.state == state


def test_room_needs_warmup_but_sale_rush_alerts_at_once() -> None:
    rush = [0] * 5 + [40] * 60
    _, room_alerts = run(rush)
    assert room_alerts == []
    _, sale_alerts = run(rush, SpikeConfig(warmup=0))
    assert len(sale_alerts) == 1 and 5 <= sale_alerts[0] < 10


def test_a_lasting_new_level_ends_the_episode() -> None:
    counts = [8] * 120 + [60] * 600
    state, alerts = run(counts)
    assert len(alerts) == 1
    assert not state.active  # the baseline learned the new level
    assert state.baseline > 40


def test_settle_delay_holds_the_newest_seconds() -> None:
    counts = [8] * 50
    state, _ = run(counts)
    assert state.t == T0 + 49 - CFG.settle_s


def test_after_a_long_silence_the_subject_starts_over() -> None:
    state, _ = run([8] * 100)
    out = evaluate(state, T0 + 5000, [8] * 30, T0 + 5029, CFG)
    assert out.state.first == T0 + 5000
    assert out.state.t == T0 + 5029 - CFG.settle_s
    assert out.alerts == []  # warm-up again: coming back is not a spike for a room


def test_state_round_trips_through_json() -> None:
    state, _ = run(steady_then_burst())
    assert SpikeState.from_json(state.to_json()) == state
    assert SpikeState.from_json(b"not json") == SpikeState()
    assert SpikeState.from_json(None) == SpikeState()
