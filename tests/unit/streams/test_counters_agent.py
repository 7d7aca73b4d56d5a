"""The counters agents' batch chunking (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from streams.counters.agent import chunks


@dataclass
class Ev:
    value: bytes | None


def test_chunks_split_by_bytes_keep_order_and_never_drop_a_record() -> None:
    events = [Ev(None if n is None else b"x" * n) for n in (400, 400, 400, 1500, 10, None, 600)]
    out = chunks(events, max_bytes=1000)
    assert [len(c) for c in out] == [2, 1, 1, 3]  # an oversized record travels alone
    assert [e for c in out for e in c] == events
    assert chunks([], 1000) == []
    assert chunks(events, max_bytes=10**9) == [events]
