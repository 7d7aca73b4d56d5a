"""The bench's one percentile, its latency summary and its process sampler (psutil: CPU % and peak RSS)."""

from __future__ import annotations

import asyncio
import os
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
    """CPU % (user + system, of one core) over the window, CPU seconds and peak RSS per process.

    ``start()``, any number of ``sample()`` calls (RSS is a point reading), then ``stop()``.
    A process that is gone reads as NaN CPU and its last RSS seen. Each name covers the process and
    the children it has at ``start()`` (a pre-forking server is one row: its processes summed).
    """

    pids: dict[str, int]
    peak_rss: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, list[psutil.Process]] = field(default_factory=dict)
    _cpu0: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        for name, pid in self.pids.items():
            try:
                proc = psutil.Process(pid)
                # this process's children are the stack itself: its own row is this process alone
                kids = proc.children(recursive=True) if pid != os.getpid() else []
                self._procs[name] = tree = [proc, *kids]
                self._cpu0[name] = sum(_cpu_s(p) for p in tree)
            except psutil.Error:
                continue
        self.sample()

    def sample(self) -> None:
        for name, tree in self._procs.items():
            try:
                rss = sum(p.memory_info().rss for p in tree)
            except psutil.Error:
                continue
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)

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
                cpu_s = sum(_cpu_s(p) for p in self._procs[name]) - self._cpu0[name]
            except (KeyError, psutil.Error):
                cpu_s = float("nan")
            out[name] = {
                "cpu_percent": round(cpu_s / elapsed * 100, 1),
                "cpu_s": round(cpu_s, 3),
                "procs": len(self._procs.get(name, ())) or 1,
                "rss_mb": round(self.peak_rss.get(name, 0) / 1e6, 1),
            }
        return out


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


@dataclass
class BoxCpu:
    """The whole machine's busy CPU over a window, in % of one core (the box has ``cores`` x 100 %): shows
    when the cores, not one process, are the limit, and what else (not sampled) used them."""

    _t0: float = 0.0
    _busy0: float = 0.0

    def start(self) -> None:
        self._t0, self._busy0 = time.monotonic(), _busy_s()

    def stop(self) -> dict[str, float]:
        elapsed = max(1e-9, time.monotonic() - self._t0)
        cores = psutil.cpu_count() or 1
        return {"busy_percent": round((_busy_s() - self._busy0) / elapsed * 100, 1), "cores": cores}


def _busy_s() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))
