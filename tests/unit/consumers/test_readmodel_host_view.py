"""The read model's host-view rules (issue 15): sale phases, the order of the cards, funnel rates, spike ratios."""

from __future__ import annotations

from typing import Any

import pytest

from consumers import readmodel
from consumers.readmodel import JUST_SOLD_OUT_MS, order_sales, sale_group, sale_phase, spike_ratio

NOW = 1_800_000_000_000
MIN = 60_000


def phase(**kw: Any) -> str:
    args: dict[str, Any] = {"status": "open", "starts_at": NOW - MIN, "ends_at": NOW + 60 * MIN, "allotted": 10,
                            "available": 5, "sold_out_at": None, "now_ms": NOW}
    return sale_phase(**{**args, **kw})


def test_phases_as_a_host_reads_them() -> None:
    assert phase() == "live"
    assert phase(starts_at=NOW + MIN) == "upcoming"  # announced for later: not LIVE
    assert phase(available=0) == "sold_out"
    assert phase(available=3, sold_out_at=NOW - MIN) == "back_in_stock"  # units back after a sell-out: not LIVE
    assert phase(status="closed") == "closed"
    assert phase(status="closed", starts_at=NOW + MIN) == "closed"
    assert phase(ends_at=NOW) == "closed"  # the window is over
    assert phase(allotted=0, available=0) == "live"  # opened with nothing yet (stock to come): not sold out


def test_just_sold_out_stays_pinned_then_moves_to_earlier() -> None:
    assert sale_group("sold_out", NOW - JUST_SOLD_OUT_MS, NOW) == "now"
    assert sale_group("sold_out", NOW - JUST_SOLD_OUT_MS - 1, NOW) == "earlier"
    assert [sale_group(p, None, NOW) for p in ("live", "back_in_stock", "upcoming", "closed")] == [
        "now", "now", "upcoming", "earlier"]


def view(sale_id: str, phase_: str, **kw: Any) -> dict[str, Any]:
    v: dict[str, Any] = {"sale_id": sale_id, "phase": phase_, "opened_at": None, "starts_at": None,
                         "sold_out_at": None, "closed_at": None, "ends_at": None, **kw}
    v["group"] = sale_group(phase_, v["sold_out_at"], NOW)
    return v


def test_cards_follow_the_show_not_the_sale_ids() -> None:
    views = [
        view("a", "closed", closed_at=NOW - 30 * MIN),
        view("b", "closed", closed_at=NOW - 5 * MIN),
        view("c", "upcoming", starts_at=NOW + 30 * MIN),
        view("d", "upcoming", starts_at=NOW + 10 * MIN),
        view("e", "sold_out", opened_at=NOW - 9 * MIN, sold_out_at=NOW - 2 * MIN),
        view("f", "sold_out", opened_at=NOW - 50 * MIN, sold_out_at=NOW - 40 * MIN),  # long ago: earlier
        view("g", "live", opened_at=NOW - 20 * MIN),
        view("h", "back_in_stock", opened_at=NOW - 3 * MIN, sold_out_at=NOW - MIN),
    ]
    assert [v["sale_id"] for v in order_sales(views)] == ["h", "g", "e", "d", "c", "b", "a", "f"]


def test_funnel_rate_after_an_empty_stage_is_none_not_zero() -> None:
    rows = readmodel._stage_rows([10, 0, 0, 4, 2])
    assert [r["rate_from_prev"] for r in rows] == [None, 0.0, None, None, 0.5]


@pytest.mark.parametrize(("rate", "baseline", "ratio"), [(40.0, 5.0, 8.0), (12.5, 3.0, 4.17), (9.0, 0.0, None),
                                                         (None, 1.0, None)])
def test_spike_ratio_is_measured(rate: Any, baseline: Any, ratio: float | None) -> None:
    assert spike_ratio(rate, baseline) == ratio
