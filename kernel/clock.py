"""Wall-clock time in epoch milliseconds, the unit of every timestamp in the pipeline."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
