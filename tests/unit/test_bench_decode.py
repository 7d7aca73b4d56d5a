"""The decode benchmark measures the worker's decode path on records that decode cleanly (no timing asserted)."""

from __future__ import annotations

from bench.decode import bench


def test_decode_bench_reports_both_figures_for_each_batch() -> None:
    lines: list[str] = []
    out = bench(None, {}, lines.append)
    assert set(out["results"]) == {"order.placed", "engagement (likes, carts)", "decisions (gateway reader)"}
    for r in out["results"].values():
        assert r["orjson_loads_us"] > 0 and r["decode_validate_us"] > 0 and r["batch_events"] == 500
    assert out["results"]["decisions (gateway reader)"]["full_validate_us"] > 0
    assert "orjson.loads" in out["markdown"] and len(out["summary"]) == 3 and lines
