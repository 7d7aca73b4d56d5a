"""CPU and RSS of processes by PID, from /proc (Linux), sampled over a run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / _TICK  # utime + stime


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class ProcSampler:
    """Call ``start()`` then ``stop()``; reports CPU% over the window and peak RSS per process."""

    pids: dict[str, int]
    _cpu0: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0
    peak_rss: dict[str, int] = field(default_factory=dict)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.sample()

    def sample(self) -> None:
        for n, p in self.pids.items():
            try:
                self.peak_rss[n] = max(self.peak_rss.get(n, 0), rss_bytes(p))
            except OSError:
                pass

    def stop(self) -> dict[str, dict[str, float]]:
        self.sample()
        elapsed = max(1e-9, time.monotonic() - self._t0)
        out = {}
        for n, p in self.pids.items():
            try:
                cpu = (cpu_seconds(p) - self._cpu0[n]) / elapsed * 100
            except OSError:
                cpu = float("nan")
            out[n] = {"cpu_percent": round(cpu, 1), "rss_mb": round(self.peak_rss.get(n, 0) / 1e6, 1)}
        return out
