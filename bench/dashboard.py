"""Dashboard benchmark: event→browser freshness at the simulator's default load, and many concurrent
SSE viewers on one dashboard process (push latency, fan-out spread, dashboard CPU and RSS).

``bench(stack, opts, log)`` (``python -m bench dashboard``) starts a worker, the dashboard and the
simulator on the bench stack's broker and Redis, measures, stops them and returns a dict of numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.markdown import table
from bench.options import options_from
from bench.stack import BenchStack
from bench.stats import ProcSampler, percentiles
from consumers.access import Signer
from flashsale.embedded import ManagedProcess


@dataclass(frozen=True)
class Options:
    clients: int = 200
    freshness_s: float = 30.0
    fanout_s: float = 30.0
    push_interval_s: float = 1.0
    simulate_args: tuple[str, ...] = ()
    ready_timeout_s: float = 90.0


SIM_ROOM = re.compile(r"room-\d+")  # producers/simulation/plan.py names its rooms so


async def wait_room(
    session: aiohttp.ClientSession, base: str, simulator: ManagedProcess, limit_s: float, token: str
) -> str:
    """The first simulator room (``room-<n>``) the read model lists once the simulator's events flow.
    Other rooms in the same Redis (left by other benchmarks of ``bench all``) get no new events."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not simulator.alive() and simulator.popen.returncode != 0:
            raise RuntimeError(f"simulator failed; see {simulator.log_path}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(f"{base}/api/rooms", headers={"Authorization": f"Bearer {token}"}) as resp:
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
                            received = time.time() * 1000  # float ms, like the server's push stamps
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


async def measure(
    session: aiohttp.ClientSession, base: str, pid: int, room: str, opts: Options, token: str
) -> dict[str, Any]:
    url = f"{base}/live/rooms/{room}?t={token}"  # viewers hold a signed room link, as hosts do

    # Phase 1: one viewer, freshness at the simulator's load.
    solo = Viewer()
    sampler = ProcSampler({"dashboard": pid})
    sampler.start()
    until = time.monotonic() + opts.freshness_s
    await asyncio.gather(watch(session, url, solo, until, probe=True), sampler.sample_until(until))
    solo_proc = sampler.stop()["dashboard"]

    # Phase 2: N concurrent viewers of the same room, plus the freshness probe.
    m0 = await scrape(session, base)
    sampler = ProcSampler({"dashboard": pid})
    sampler.start()
    t0 = time.monotonic()
    until = t0 + opts.fanout_s
    viewers = [Viewer() for _ in range(opts.clients)]
    probe = Viewer()
    await asyncio.gather(
        *(watch(session, url, v, until) for v in viewers),
        watch(session, url, probe, until, True),
        sampler.sample_until(until),
    )
    elapsed = time.monotonic() - t0
    fan_proc = sampler.stop()["dashboard"]
    m1 = await scrape(session, base)
    by_seq: dict[int, list[float]] = {}
    for v in viewers:
        for seq, at in v.arrivals.items():
            by_seq.setdefault(seq, []).append(at)
    spreads = [max(ts) - min(ts) for ts in by_seq.values() if len(ts) == len(viewers)]
    frames = sum(v.frames for v in viewers)
    return {
        "room_id": room,
        "freshness_ms": percentiles(solo.fresh_ms),
        "solo": {
            "duration_s": opts.freshness_s,
            "frames": solo.frames,
            "push_latency_ms": percentiles(solo.push_ms),
            "dashboard_cpu_percent": solo_proc["cpu_percent"],
            "dashboard_rss_mb": solo_proc["rss_mb"],
        },
        "fanout": {
            "clients": opts.clients,
            "duration_s": round(elapsed, 1),
            "frames_received": frames,
            "bytes_per_frame": round(sum(v.bytes for v in viewers) / max(1, frames)),
            "frames_per_client_per_s": round(frames / max(1, len(viewers)) / elapsed, 2),
            "push_latency_ms": percentiles([x for v in viewers for x in v.push_ms]),
            "fanout_spread_ms": percentiles(spreads),
            "freshness_ms": percentiles(probe.fresh_ms),
            "client_errors": sum(v.errors for v in viewers),
            "dashboard_cpu_percent": fan_proc["cpu_percent"],
            "dashboard_rss_mb_max": fan_proc["rss_mb"],
            "dashboard_ticks_per_s": round((m1["ticks_total"] - m0["ticks_total"]) / elapsed, 2),
            "dashboard_pushes_per_s": round((m1["pushes_total"] - m0["pushes_total"]) / elapsed, 1),
            "dropped_frames": int(m1["dropped_frames_total"] - m0["dropped_frames_total"]),
        },
    }


async def _run(stack: BenchStack, base: str, opts: Options, signer: Signer) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        room = await wait_room(
            session, base, stack.procs["dashboard-simulator"], opts.ready_timeout_s, signer.mint(None, 3600)
        )
        return await measure(session, base, stack.procs["dashboard"].pid, room, opts, signer.mint(room, 3600))


def bench(stack: BenchStack, opts: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """``python -m bench dashboard``. ``opts`` may carry clients, freshness_s, fanout_s, push_interval_s,
    simulate_args and ready_timeout_s (``dashboard_<name>`` wins)."""
    o = options_from(Options, opts, "dashboard")
    log(
        f"dashboard: freshness at the simulator's default load, then {o.clients} "
        "concurrent live viewers on one dashboard process"
    )
    started = time.monotonic()
    stack.new_prefix("benchdash", partitions=8)
    names = ("dashboard-worker", "dashboard", "dashboard-simulator")
    try:
        stack.start_worker(names[0], timeout=o.ready_timeout_s)
        key = secrets.token_hex(32)
        port = stack.start(
            names[1],
            "consumers.dashboard",
            port_var="FLASHSALE_DASHBOARD_PORT",
            timeout=30,
            env={"FLASHSALE_DASHBOARD_PUSH_INTERVAL_S": str(o.push_interval_s), "FLASHSALE_DASHBOARD_KEY": key},
        )
        stack.start(names[2], "producers.simulator", o.simulate_args)
        result = asyncio.run(_run(stack, f"http://127.0.0.1:{port}", o, Signer(key.encode())))
    finally:
        for name in reversed(names):
            stack.stop(name)
    result.update(
        {
            "name": "dashboard",
            "params": {
                "clients": o.clients,
                "freshness_s": o.freshness_s,
                "fanout_s": o.fanout_s,
                "push_interval_s": o.push_interval_s,
                "simulate_args": list(o.simulate_args),
                "cpus": os.cpu_count(),
            },
            "wall_s": round(time.monotonic() - started, 1),
        }
    )
    fan = result["fanout"]
    log(
        f"dashboard: freshness p50 {result['freshness_ms'].get('p50')} ms, {fan['clients']} viewers: push p95 "
        f"{fan['push_latency_ms'].get('p95')} ms, CPU {fan['dashboard_cpu_percent']}%, "
        f"RSS {fan['dashboard_rss_mb_max']} MB"
    )
    result["summary"] = summary(result)
    result["markdown"] = markdown(result)
    return result


def summary(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    fresh, fan = r["freshness_ms"], r["fanout"]
    return [
        (
            "dashboard: event -> browser freshness p50 / p99",
            f"{fresh.get('p50')} / {fresh.get('p99')} ms",
            "target <= 1000 ms",
        ),
        (
            f"dashboard: {fan['clients']} live viewers, push latency p95",
            f"{fan['push_latency_ms'].get('p95')} ms",
            f"CPU {fan['dashboard_cpu_percent']}%, RSS {fan['dashboard_rss_mb_max']} MB, "
            f"{fan['frames_per_client_per_s']} frames/client/s, {fan['dropped_frames']} dropped",
        ),
    ]


def markdown(r: dict[str, Any]) -> str:
    fan = r["fanout"]
    rows = [
        ("freshness, 1 viewer", r["freshness_ms"]),
        (f"freshness, with {fan['clients']} viewers", fan["freshness_ms"]),
        (f"push latency, {fan['clients']} viewers", fan["push_latency_ms"]),
        (f"spread of one tick across {fan['clients']} viewers", fan["fanout_spread_ms"]),
    ]
    lines = [
        "## Dashboard",
        "",
        "Freshness is event time of the newest applied event to the moment an SSE client "
        "receives the frame that reflects it, at the simulator's default load.",
        "",
        *table(
            ("measure", "p50 ms", "p95 ms", "p99 ms"),
            [(name, p.get("p50"), p.get("p95"), p.get("p99")) for name, p in rows],
            "lrrr",
        ),
    ]
    lines += [
        "",
        f"{fan['clients']} viewers: {fan['frames_per_client_per_s']} frames per client per second, "
        f"{fan['dropped_frames']} dropped, {fan['client_errors']} client errors; dashboard process "
        f"{fan['dashboard_cpu_percent']}% CPU, {fan['dashboard_rss_mb_max']} MB RSS.",
    ]
    return "\n".join(lines)
