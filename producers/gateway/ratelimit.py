"""Per-client token buckets: ``rate`` events per second refill, ``burst`` capacity."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucketLimiter:
    """One bucket per client key. A request of ``n`` events passes when the bucket holds
    ``min(n, burst)`` tokens and then costs ``n`` (the bucket may go negative), so a batch larger
    than the burst is allowed when the client has been quiet, and pays for itself afterwards."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, last refill time)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def retry_after(self, key: str, n: int = 1) -> float:
        """Seconds until ``n`` events would pass (0 = now), without taking anything."""
        if not self.enabled:
            return 0.0
        need = min(float(n), self.burst)
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= need else (need - tokens) / self.rate

    def take(self, key: str, n: int = 1) -> float:
        """Take ``n`` tokens and return 0, or take nothing and return the seconds to wait."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens = self._tokens(key, now)
        need = min(float(n), self.burst)
        if tokens < need:
            return (need - tokens) / self.rate
        if key not in self._buckets and len(self._buckets) >= self._max_clients and not self._prune(now):
            return 1.0 / self.rate  # every tracked client owes tokens: a new one waits for the table to drain
        self._buckets[key] = (tokens - n, now)
        return 0.0

    def _prune(self, now: float) -> bool:
        """Make room; True if there is room. A forgotten client comes back with a full bucket, so only
        clients without debt are forgotten (full buckets first, then the oldest of the rest): dropping a
        client that owes tokens would reset its debt."""
        full = [k for k in self._buckets if self._tokens(k, now) >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self._max_clients:
            solvent = sorted((k for k in self._buckets if self._tokens(k, now) >= 0), key=lambda k: self._buckets[k][1])
            for k in solvent[: max(1, len(self._buckets) // 2)]:
                del self._buckets[k]
        return len(self._buckets) < self._max_clients

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
