"""Dashboard benchmark: event→browser freshness at the simulator's default load, and many concurrent
SSE viewers on one dashboard process (push latency, fan-out spread, dashboard CPU and RSS).

``run(args)`` starts what it needs on loopback (Tansu and redis-server unless ``args.broker_url`` /
``args.redis_url`` name running ones, a worker, the dashboard, the simulator), measures, stops
every process it started by PID and returns a dict of numbers. ``bench(stack, opts, log)`` is the
``flashsale bench dashboard`` entry: the same run on the harness's broker and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from flashsale.embedded import ManagedProcess, free_port, python_module, start_redis, start_tansu
from kernel.kafka_admin import ensure_topics

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Options:
    clients: int = 200
    freshness_s: float = 30.0
    fanout_s: float = 30.0
    push_interval_s: float = 1.0
    simulate_args: tuple[str, ...] = ()
    broker_url: str | None = None
    redis_url: str | None = None
    log_dir: Path | None = None
    ready_timeout_s: float = 90.0

    @classmethod
    def from_args(cls, args: Any) -> Options:
        def get(name: str, default: Any) -> Any:
            value = getattr(args, name, None)
            return default if value is None else value

        sim = get("simulate_args", ())
        return cls(
            clients=int(get("clients", cls.clients)),
            freshness_s=float(get("freshness_s", get("duration_s", cls.freshness_s))),
            fanout_s=float(get("fanout_s", get("duration_s", cls.fanout_s))),
            push_interval_s=float(get("push_interval_s", cls.push_interval_s)),
            simulate_args=tuple(shlex.split(sim) if isinstance(sim, str) else sim),
            broker_url=get("broker_url", None), redis_url=get("redis_url", None),
            log_dir=Path(get("log_dir", "")) if get("log_dir", None) else None,
        )


def percentiles(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"samples": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"samples": len(ordered), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99),
            "max": round(ordered[-1], 1), "mean": round(sum(ordered) / len(ordered), 1)}


def now_ms() -> float:
    return time.time() * 1000.0


@dataclass
class ProcStats:
    """CPU time and RSS of one process from /proc (Linux)."""

    pid: int
    rss_mb: list[float] = field(default_factory=list)

    def cpu_s(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK_TCK  # utime + stime

    def sample_rss(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    mb = int(line.split()[1]) / 1024
                    self.rss_mb.append(mb)
                    return mb
        return 0.0


@dataclass
class Stack:
    """Processes started for the run, stopped in reverse order."""

    procs: list[ManagedProcess] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    dashboard: ManagedProcess | None = None
    dashboard_url: str = ""
    simulator: ManagedProcess | None = None

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=15)


async def wait_http(session: aiohttp.ClientSession, url: str, proc: ManagedProcess, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready at {url} within {limit_s:.0f}s; see {proc.log_path}")


@contextlib.asynccontextmanager
async def stack(opts: Options, session: aiohttp.ClientSession) -> AsyncIterator[Stack]:
    logs = opts.log_dir or Path(tempfile.mkdtemp(prefix="flashsale-bench-dashboard-"))
    st = Stack()
    try:
        broker_url, redis_url = opts.broker_url, opts.redis_url
        if broker_url is None:
            port = free_port()
            st.procs.append(await asyncio.to_thread(start_tansu, port, logs, name="bench-tansu"))
            broker_url = f"kafka://127.0.0.1:{port}"
        if redis_url is None:
            port = free_port()
            st.procs.append(await asyncio.to_thread(start_redis, port, logs / "redis", logs, name="bench-redis"))
            redis_url = f"redis://127.0.0.1:{port}/0"
        prefix = f"benchdash{uuid.uuid4().hex[:8]}."
        worker_port, dash_port = free_port(), free_port()
        st.env = {**os.environ, "FLASHSALE_BROKER_URL": broker_url, "FLASHSALE_REDIS_URL": redis_url,
                  "FLASHSALE_TOPIC_PREFIX": prefix, "FLASHSALE_APP_ID": f"bench-{prefix.rstrip('.')}",
                  "FLASHSALE_WORKER_PORT": str(worker_port), "FLASHSALE_DASHBOARD_PORT": str(dash_port),
                  "FLASHSALE_DASHBOARD_PUSH_INTERVAL_S": str(opts.push_interval_s),
                  "FLASHSALE_LOG_LEVEL": "warning"}
        await ensure_topics(broker_url.split("://", 1)[1], prefix, int(st.env.get("FLASHSALE_PARTITIONS", "8")))
        worker = python_module("streams", [], logs, "bench-worker", env=st.env)
        st.procs.append(worker)
        st.dashboard = python_module("consumers.dashboard", [], logs, "bench-dashboard", env=st.env)
        st.procs.append(st.dashboard)
        st.dashboard_url = f"http://127.0.0.1:{dash_port}"
        await wait_http(session, f"http://127.0.0.1:{worker_port}/readyz", worker, opts.ready_timeout_s)
        await wait_http(session, f"{st.dashboard_url}/readyz", st.dashboard, 30)
        st.simulator = python_module("producers.simulator", list(opts.simulate_args), logs, "bench-simulator",
                                     env=st.env)
        st.procs.append(st.simulator)
        yield st
    finally:
        await asyncio.to_thread(st.stop)


SIM_ROOM = re.compile(r"room-\d+")  # producers/simulation/plan.py names its rooms so


async def wait_room(session: aiohttp.ClientSession, st: Stack, limit_s: float) -> str:
    """The first simulator room (``room-<n>``) the read model lists once the simulator's events flow.
    Other rooms in the same Redis (left by other benchmarks of ``bench all``) get no new events."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert st.simulator is not None
        if not st.simulator.alive() and st.simulator.popen.returncode != 0:
            raise RuntimeError(f"simulator failed; see {st.simulator.log_path}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(f"{st.dashboard_url}/api/rooms") as resp:
                body = await resp.json()
                rooms = body if isinstance(body, list) else body.get("rooms", [])
                ours = [str(r["room_id"]) for r in rooms if SIM_ROOM.fullmatch(str(r["room_id"]))]
                if ours:
                    return ours[0]
        await asyncio.sleep(0.5)
    raise RuntimeError(f"no room appeared within {limit_s:.0f}s")


@dataclass
class Viewer:
    """One SSE client: records when each payload arrived against its server and event times."""

    push_ms: list[float] = field(default_factory=list)  # receive time - server push time
    fresh_ms: list[float] = field(default_factory=list)  # receive time - newest event time, per new event
    arrivals: dict[int, float] = field(default_factory=dict)  # seq → receive time
    frames: int = 0
    bytes: int = 0
    errors: int = 0
    last_as_of: int = 0


HEAD_RE = re.compile(rb'"seq":(\d+).*?"pushed_ms":(\d+)')


async def watch(session: aiohttp.ClientSession, url: str, viewer: Viewer, until: float, probe: bool = False) -> None:
    """Read the stream until ``until``. Viewers only look at the payload's head (seq and push time come
    first), so 200 clients in one Python process measure the server rather than their own JSON
    parsing; the probe parses every payload for the newest event time."""
    while time.monotonic() < until:
        try:
            async with asyncio.timeout(max(0.1, until - time.monotonic())):
                async with session.get(url) as resp:
                    resp.raise_for_status()
                    kind = b""
                    async for line in resp.content:
                        if line.startswith(b"event: "):
                            kind = line[7:].strip()
                        elif line.startswith(b"data: ") and kind == b"snapshot":
                            received = now_ms()
                            head = HEAD_RE.search(line, 0, 300)
                            if head is None:
                                continue
                            viewer.frames += 1
                            viewer.bytes += len(line)
                            viewer.push_ms.append(received - int(head.group(2)))
                            viewer.arrivals[int(head.group(1))] = received
                            if not probe:
                                continue
                            as_of = (orjson.loads(line[6:]).get("snapshot") or {}).get("as_of_ms") or 0
                            if as_of > viewer.last_as_of:
                                if viewer.last_as_of:  # the first one may be old news
                                    viewer.fresh_ms.append(received - as_of)
                                viewer.last_as_of = as_of
        except TimeoutError:
            return
        except aiohttp.ClientError:
            viewer.errors += 1
            await asyncio.sleep(0.5)


async def scrape(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    out = {}
    for name in ("ticks_total", "pushes_total", "dropped_frames_total", "connections"):
        m = re.search(rf"^flashsale_dashboard_{name} ([0-9.e+-]+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


async def sample_proc(stats: ProcStats, until: float) -> None:
    while time.monotonic() < until:
        with contextlib.suppress(OSError):
            stats.sample_rss()
        await asyncio.sleep(1.0)


async def measure(session: aiohttp.ClientSession, st: Stack, room: str, opts: Options) -> dict[str, Any]:
    assert st.dashboard is not None
    url = f"{st.dashboard_url}/live/rooms/{room}"
    stats = ProcStats(st.dashboard.pid)

    # Phase 1: one viewer, freshness at the simulator's load.
    solo = Viewer()
    cpu0, t0 = stats.cpu_s(), time.monotonic()
    until = t0 + opts.freshness_s
    await asyncio.gather(watch(session, url, solo, until, probe=True), sample_proc(stats, until))
    solo_cpu = 100 * (stats.cpu_s() - cpu0) / (time.monotonic() - t0)
    solo_rss = max(stats.rss_mb, default=0.0)

    # Phase 2: N concurrent viewers of the same room, plus the freshness probe.
    stats.rss_mb.clear()
    m0 = await scrape(session, st.dashboard_url)
    cpu0, t0 = stats.cpu_s(), time.monotonic()
    until = t0 + opts.fanout_s
    viewers = [Viewer() for _ in range(opts.clients)]
    probe = Viewer()
    await asyncio.gather(*(watch(session, url, v, until) for v in viewers), watch(session, url, probe, until, True),
                         sample_proc(stats, until))
    elapsed = time.monotonic() - t0
    fan_cpu = 100 * (stats.cpu_s() - cpu0) / elapsed
    m1 = await scrape(session, st.dashboard_url)
    by_seq: dict[int, list[float]] = {}
    for v in viewers:
        for seq, at in v.arrivals.items():
            by_seq.setdefault(seq, []).append(at)
    spreads = [max(ts) - min(ts) for ts in by_seq.values() if len(ts) == len(viewers)]
    frames = sum(v.frames for v in viewers)
    return {
        "room_id": room,
        "freshness_ms": percentiles(solo.fresh_ms),
        "solo": {"duration_s": opts.freshness_s, "frames": solo.frames, "push_latency_ms": percentiles(solo.push_ms),
                 "dashboard_cpu_percent": round(solo_cpu, 1), "dashboard_rss_mb": round(solo_rss, 1)},
        "fanout": {
            "clients": opts.clients, "duration_s": round(elapsed, 1), "frames_received": frames,
            "bytes_per_frame": round(sum(v.bytes for v in viewers) / max(1, frames)),
            "frames_per_client_per_s": round(frames / max(1, len(viewers)) / elapsed, 2),
            "push_latency_ms": percentiles([x for v in viewers for x in v.push_ms]),
            "fanout_spread_ms": percentiles(spreads),
            "freshness_ms": percentiles(probe.fresh_ms),
            "client_errors": sum(v.errors for v in viewers),
            "dashboard_cpu_percent": round(fan_cpu, 1),
            "dashboard_rss_mb_max": round(max(stats.rss_mb, default=0.0), 1),
            "dashboard_ticks_per_s": round((m1["ticks_total"] - m0["ticks_total"]) / elapsed, 2),
            "dashboard_pushes_per_s": round((m1["pushes_total"] - m0["pushes_total"]) / elapsed, 1),
            "dropped_frames": int(m1["dropped_frames_total"] - m0["dropped_frames_total"]),
        },
    }


async def run(args: Any) -> dict[str, Any]:
    """Run both measurements; ``args`` may carry clients, freshness_s, fanout_s, push_interval_s,
    simulate_args, broker_url, redis_url and log_dir (all optional)."""
    opts = Options.from_args(args)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        async with stack(opts, session) as st:
            room = await wait_room(session, st, opts.ready_timeout_s)
            result = await measure(session, st, room, opts)
    result.update({
        "name": "dashboard",
        "params": {"clients": opts.clients, "freshness_s": opts.freshness_s, "fanout_s": opts.fanout_s,
                   "push_interval_s": opts.push_interval_s, "simulate_args": list(opts.simulate_args),
                   "cpus": os.cpu_count()},
        "wall_s": round(time.monotonic() - started, 1),
    })
    return result


def bench(stack: Any, opts: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """``flashsale bench dashboard``: run() on the harness's broker and Redis (``BenchStack``)."""
    args = argparse.Namespace(
        broker_url=f"kafka://{stack.bootstrap}", redis_url=stack.redis_url,
        log_dir=str(Path(stack.root) / "dashboard"),
        **{k: opts[k] for k in ("clients", "freshness_s", "fanout_s", "push_interval_s", "simulate_args") if k in opts})
    log(f"dashboard: freshness at the simulator's default load, then {args.__dict__.get('clients', 200)} "
        "concurrent live viewers on one dashboard process")
    result = asyncio.run(run(args))
    fan = result["fanout"]
    log(f"dashboard: freshness p50 {result['freshness_ms'].get('p50')} ms, {fan['clients']} viewers: push p95 "
        f"{fan['push_latency_ms'].get('p95')} ms, CPU {fan['dashboard_cpu_percent']}%, "
        f"RSS {fan['dashboard_rss_mb_max']} MB")
    result["summary"] = summary(result)
    result["markdown"] = markdown(result)
    return result


def summary(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    fresh, fan = r["freshness_ms"], r["fanout"]
    return [
        ("dashboard: event -> browser freshness p50 / p99", f"{fresh.get('p50')} / {fresh.get('p99')} ms",
         "target <= 1000 ms"),
        (f"dashboard: {fan['clients']} live viewers, push latency p95", f"{fan['push_latency_ms'].get('p95')} ms",
         f"CPU {fan['dashboard_cpu_percent']}%, RSS {fan['dashboard_rss_mb_max']} MB, "
         f"{fan['frames_per_client_per_s']} frames/client/s, {fan['dropped_frames']} dropped"),
    ]


def markdown(r: dict[str, Any]) -> str:
    fan = r["fanout"]
    rows = [("freshness, 1 viewer", r["freshness_ms"]),
            (f"freshness, with {fan['clients']} viewers", fan["freshness_ms"]),
            (f"push latency, {fan['clients']} viewers", fan["push_latency_ms"]),
            (f"spread of one tick across {fan['clients']} viewers", fan["fanout_spread_ms"])]
    lines = ["## Dashboard", "", "Freshness is event time of the newest applied event to the moment an SSE client "
             "receives the frame that reflects it, at the simulator's default load.", "",
             "| measure | p50 ms | p95 ms | p99 ms |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {p.get('p50')} | {p.get('p95')} | {p.get('p99')} |" for name, p in rows]
    lines += ["", f"{fan['clients']} viewers: {fan['frames_per_client_per_s']} frames per client per second, "
              f"{fan['dropped_frames']} dropped, {fan['client_errors']} client errors; dashboard process "
              f"{fan['dashboard_cpu_percent']}% CPU, {fan['dashboard_rss_mb_max']} MB RSS."]
    return "\n".join(lines)
