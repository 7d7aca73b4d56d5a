"""Spike detection on event time: a sliding 10 s rate against an EWMA baseline of earlier windows.

Every second ``t`` (once the stream is ``settle_s`` past it) the detector computes the rate of
the window ``[t-w+1, t]`` and compares it with ``threshold = max(factor * baseline, min_rate)``.
The baseline is a bias-corrected EWMA of the rates of the window just before, ``[t-2w+1, t-w]``,
so the window under test never feeds its own baseline. An episode opens when the rate exceeds
the threshold (after ``warmup`` baseline updates) and emits one alert; it closes after
``cooldown_s`` consecutive seconds under the threshold. Because the baseline keeps learning
during an episode, a lasting new level ends the episode instead of alerting forever. A subject
silent for longer than ``catchup_s`` starts over, warm-up included.

The state is a small JSON document stored next to the counters; the detector is a pure function
of (state, per-second counts), so replays that bring no new seconds change nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import orjson


@dataclass(frozen=True)
class SpikeConfig:
    factor: float = 3.0
    min_rate: float = 5.0
    window_s: int = 10
    baseline_s: float = 60.0
    cooldown_s: int = 10
    warmup: int = 10
    settle_s: int = 2
    catchup_s: int = 240

    @property
    def alpha(self) -> float:
        return 1.0 - math.exp(-1.0 / self.baseline_s)

    @property
    def lookback_s(self) -> int:
        """Seconds of counts the detector needs to evaluate ``catchup_s`` seconds."""
        return self.catchup_s + 2 * self.window_s + self.settle_s


@dataclass
class SpikeState:
    t: int | None = None  # last evaluated second
    first: int | None = None  # first second with any event: windows before it are not history
    num: float = 0.0  # EWMA numerator / denominator (bias correction)
    den: float = 0.0
    n: int = 0  # baseline updates so far
    active: bool = False
    start: int = 0  # second the current / last episode started
    quiet: int = 0  # consecutive seconds under the threshold while active
    peak: float = 0.0

    @property
    def baseline(self) -> float:
        return self.num / self.den if self.den > 0 else 0.0

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> SpikeState:
        if not raw:
            return cls()
        try:
            obj = orjson.loads(raw)
            return cls(**{k: obj[k] for k in cls.__dataclass_fields__ if k in obj})
        except (orjson.JSONDecodeError, TypeError):
            return cls()


@dataclass(frozen=True)
class SpikeAlert:
    second: int  # the evaluated second at which the episode opened
    rate: float
    baseline: float
    threshold: float


@dataclass
class Outcome:
    state: SpikeState
    alerts: list[SpikeAlert] = field(default_factory=list)
    advanced: bool = False  # whether any second was evaluated (the state must be stored)


def evaluate(state: SpikeState, lo: int, counts: Sequence[int], newest_s: int, cfg: SpikeConfig) -> Outcome:
    """Evaluate every second after ``state.t`` up to ``newest_s - settle_s``.

    ``counts[i]`` is the number of events in second ``lo + i``; seconds outside the slice count 0.
    """
    s = SpikeState(**asdict(state))
    out = Outcome(s)
    w = cfg.window_s
    end = newest_s - cfg.settle_s
    hi = lo + len(counts)

    def window(last: int) -> float:
        a, b = max(last - w + 1, lo), min(last + 1, hi)
        return sum(counts[a - lo:b - lo]) / w if b > a else 0.0

    if s.t is not None and end - s.t > cfg.catchup_s:
        # Silent for longer than we can look back: start over (warm-up included), like a new subject.
        s = SpikeState()
        out.state = s
    if s.t is None:
        first = next((lo + i for i, c in enumerate(counts) if c > 0), None)
        if first is None or first > end:
            return out
        s.first = first
        s.t = max(first - 1, end - cfg.catchup_s)
    first_s = s.first if s.first is not None else lo
    alpha = cfg.alpha
    for t in range(s.t + 1, end + 1):
        rate = window(t)
        base = s.baseline
        threshold = max(cfg.factor * base, cfg.min_rate)
        if s.active:
            s.peak = max(s.peak, rate)
            if rate < threshold:
                s.quiet += 1
                if s.quiet >= cfg.cooldown_s:
                    s.active = False
            else:
                s.quiet = 0
        elif s.n >= cfg.warmup and rate > threshold:
            s.active, s.start, s.quiet, s.peak = True, t, 0, rate
            out.alerts.append(SpikeAlert(t, round(rate, 3), round(base, 3), round(threshold, 3)))
        if t - 2 * w + 1 >= first_s:
            s.num = (1 - alpha) * s.num + alpha * window(t - w)
            s.den = (1 - alpha) * s.den + alpha
            s.n += 1
        s.t = t
        out.advanced = True
    return out
