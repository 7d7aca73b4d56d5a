"""The pipeline's clock is the record timestamp; a client's own time is clamped near it (issue 12, item 3)."""

from __future__ import annotations

from typing import Any

from kernel.clock import MAX_CLIENT_SKEW_MS, clamped_time_ms, pipeline_time_ms
from schemas.codec import encode_batch
from schemas.events import ViewerLiked, make_event
from schemas.topics import ENGAGEMENT
from streams.counters.params import CounterParams
from streams.counters.service import CountersService
from streams.emit import Record
from streams.metrics import WorkerMetrics

NOW = 1_764_600_000_000


def like(i: int, ts: int) -> Any:
    return make_event(ViewerLiked(), event_id=f"l{i}", ts=ts, room_id="r1", user_id=f"u{i}")


def test_times_without_a_record_timestamp_are_the_events_own() -> None:
    rec = Record(ENGAGEMENT, 0, 0, b"")
    assert pipeline_time_ms(NOW + 5, rec.timestamp_ms) == clamped_time_ms(NOW + 5, rec.timestamp_ms) == NOW + 5


def test_an_event_stamped_far_ahead_is_counted_at_the_bound() -> None:
    metrics = WorkerMetrics()
    svc = CountersService(None, CounterParams(), metrics, None, ENGAGEMENT)  # type: ignore[arg-type]  # prepare: no I/O
    events = [like(0, NOW), like(1, NOW + 365 * 86_400_000), like(2, NOW - 3_600_000)]
    prepared = svc.prepare([Record(ENGAGEMENT, 0, 7, encode_batch(events), timestamp_ms=NOW)])
    assert [it.event.ts for it in prepared.items] == [NOW, NOW + MAX_CLIENT_SKEW_MS, NOW - MAX_CLIENT_SKEW_MS]
    assert [it.event.event_id for it in prepared.items] == ["l0", "l1", "l2"]
    assert metrics.client_time_clamped.labels(ENGAGEMENT)._value.get() == 2
