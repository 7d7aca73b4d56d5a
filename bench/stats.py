"""The bench's one percentile, its latency summary and its process sampler (psutil: CPU % and peak RSS)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil


def now_ms() -> int:
    """Wall-clock epoch milliseconds: the unit of event ``ts``, comparable across processes."""
    return int(time.time() * 1000)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank ``q`` quantile (0..1) rounded to 0.1; ``None`` (JSON null) without samples."""
    if not values:
        return None
    ordered = sorted(values)
    return round(float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]), 1)


def percentiles(values: Sequence[float]) -> dict[str, float | int]:
    """p50 / p95 / p99 / max / mean of ``values`` and how many there were."""
    if not values:
        return {"samples": 0}
    out: dict[str, float | int] = {"samples": len(values)}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        out[name] = percentile(values, q) or 0.0
    out["max"] = round(float(max(values)), 1)
    out["mean"] = round(sum(values) / len(values), 1)
    return out


@dataclass
class ProcSampler:
    """CPU % (user + system, of one core) over the window and peak RSS per process.

    ``start()``, any number of ``sample()`` calls (RSS is a point reading), then ``stop()``.
    A process that is gone reads as NaN CPU and its last RSS seen.
    """

    pids: dict[str, int]
    peak_rss: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, psutil.Process] = field(default_factory=dict)
    _cpu0: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        for name, pid in self.pids.items():
            try:
                self._procs[name] = proc = psutil.Process(pid)
                self._cpu0[name] = _cpu_s(proc)
            except psutil.Error:
                continue
        self.sample()

    def sample(self) -> None:
        for name, proc in self._procs.items():
            try:
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), proc.memory_info().rss)
            except psutil.Error:
                continue

    async def sample_until(self, until: float, every_s: float = 1.0) -> None:
        """Sample every ``every_s`` until ``time.monotonic()`` reaches ``until`` (run beside a measurement)."""
        while time.monotonic() < until:
            self.sample()
            await asyncio.sleep(every_s)

    def stop(self) -> dict[str, dict[str, float]]:
        self.sample()
        elapsed = max(1e-9, time.monotonic() - self._t0)
        out = {}
        for name in self.pids:
            try:
                cpu = (_cpu_s(self._procs[name]) - self._cpu0[name]) / elapsed * 100
            except (KeyError, psutil.Error):
                cpu = float("nan")
            out[name] = {"cpu_percent": round(cpu, 1), "rss_mb": round(self.peak_rss.get(name, 0) / 1e6, 1)}
        return out


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)
