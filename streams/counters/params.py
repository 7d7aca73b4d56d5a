"""The counters' tuning knobs, taken from the worker settings (with defaults for knobs it lacks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SECOND_MS = 1000


@dataclass(frozen=True)
class CounterParams:
    lateness_ms: int = 30_000  # events older than this vs. their partition's newest skip closed windows
    dedupe_ms: int = 600_000  # event_id dedupe horizon (event time); older events are dropped as too old
    stale_viewer_ms: int = 120_000  # a viewer without any event for this long is no longer online
    series_keep_s: int = 310  # per-second buckets kept per room (5 min series + the 10 s rate window)
    sale_series_keep_s: int = 130  # per-second buckets kept per sale (the 60 s rate + margin)
    window_minutes: int = 5  # the funnel's recent window: union of the last N minute buckets
    room_ttl_s: int = 2 * 86_400  # idle expiry of a room's (and a sale's) counter keys
    leaderboard_keep: int = 1000  # referrers kept per room (the top by GMV / orders)
    spikes_keep: int = 50  # recent spikes kept per room / sale for the dashboard
    # spike detection
    spike_factor: float = 3.0
    spike_min_rate: float = 5.0  # events/s below which nothing is a spike (quiet rooms)
    spike_window_s: int = 10
    spike_baseline_s: float = 60.0  # EWMA time constant of the baseline
    spike_cooldown_s: int = 10  # seconds under the threshold that end an episode
    spike_warmup: int = 10  # baseline updates needed before the first alert
    spike_settle_s: int = 2  # a second is evaluated once the stream is this far past it
    spike_catchup_s: int = 240  # at most this many seconds are evaluated after a gap

    @property
    def window_ttl_s(self) -> int:
        """Wall-clock TTL of minute-bucket keys: the window plus lateness plus a margin."""
        return self.window_minutes * 60 + self.lateness_ms // SECOND_MS + 120

    @property
    def dedupe_ttl_s(self) -> int:
        """Wall-clock TTL of the dedupe sets: the idle TTL of the room or sale, like the state (each
        partition's newest event time) that defines their horizon. They are deleted by event time once
        behind the horizon; a shorter wall-clock TTL would let a quiet room forget ids its horizon still
        covers, and a republish of them would count twice."""
        return self.room_ttl_s

    @classmethod
    def from_settings(cls, settings: Any) -> CounterParams:
        """Knobs the worker settings carry override the defaults (unknown ones keep the default)."""
        d = cls()

        def get(name: str, default: float) -> float:
            return float(getattr(settings, name, default))

        return cls(
            lateness_ms=int(get("lateness_s", d.lateness_ms / 1000) * 1000),
            dedupe_ms=int(get("dedupe_window_s", d.dedupe_ms / 1000) * 1000),
            stale_viewer_ms=int(get("stale_viewer_s", d.stale_viewer_ms / 1000) * 1000),
            room_ttl_s=int(get("counters_ttl_s", d.room_ttl_s)),
            leaderboard_keep=int(get("leaderboard_keep", d.leaderboard_keep)),
            spike_factor=get("spike_factor", d.spike_factor),
            spike_min_rate=get("spike_min_rate", d.spike_min_rate),
            spike_baseline_s=get("spike_baseline_s", d.spike_baseline_s),
            spike_cooldown_s=int(get("spike_cooldown_s", d.spike_cooldown_s)),
        )
