"""The pipeline's clocks, in epoch milliseconds: the wall clock, and the time an event is judged by."""

from __future__ import annotations

import time
from typing import Final

# How far an event's own ``ts`` (the client's clock) may stray from its record's Kafka timestamp (the
# pipeline's clock) before it is clamped for counting and windows; decisions use the record's time.
MAX_CLIENT_SKEW_MS: Final = 300_000


def now_ms() -> int:
    return int(time.time() * 1000)


def pipeline_time_ms(event_ts: int, record_ts: int | None) -> int:
    """The time the pipeline decides by: the record's timestamp, or the event's own time without one."""
    return event_ts if record_ts is None else record_ts


def clamped_time_ms(event_ts: int, record_ts: int | None) -> int:
    """The client's time, kept within MAX_CLIENT_SKEW_MS of the record's timestamp."""
    if record_ts is None:
        return event_ts
    return min(max(event_ts, record_ts - MAX_CLIENT_SKEW_MS), record_ts + MAX_CLIENT_SKEW_MS)
