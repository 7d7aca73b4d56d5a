"""``python -m bench limit``: what this box could at most decide per second, built from measured parts.

For each record shape (batched envelopes, and one event per Kafka record) a backlog of order attempts is
published, then a stock worker drains it. Measured in the same run:

* the producer's CPU per attempt (this process, while it publishes) and the broker's CPU per attempt taken in;
* over the drain window (first to last decision), the worker's, the broker's and Redis's CPU per decision
  (psutil), and the stock script's own cost from Redis's ``INFO commandstats`` (``usec`` of evalsha/fcall
  per call and per decision).

The estimate: every decision needs the sum of those CPU costs, the box has ``cores`` x 1,000,000 µs of CPU
per second, and a single-threaded process (the worker's event loop, Redis) cannot use more than one core.
The smallest of those bounds is the box's limit, and the part that sets it is named.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import psutil
import redis.asyncio as aioredis

from bench.load import LatencyMeter, Pending, attempt, open_sales, producer
from bench.options import options_from
from bench.stack import BenchStack
from bench.stats import ProcSampler, now_ms
from schemas.topics import TopicNames

Log = Callable[[str], None]
SCRIPT_COMMANDS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall", "cmdstat_evalsha_ro", "cmdstat_fcall_ro")
SALES = [(f"limit-s{i}", f"limit-sku-{i}") for i in range(8)]
# Processes that can use at most one core: one Python event loop, one Redis main thread. Tansu (Rust,
# multi-threaded) is bounded only by the box.
SINGLE_THREADED = ("worker", "redis")


@dataclass(frozen=True)
class Options:
    batched_attempts: int = 100_000
    per_record: int = 500
    single_attempts: int = 30_000
    timeout_s: float = 120.0


async def script_stats(client: aioredis.Redis) -> dict[str, float]:
    """Calls and µs of the stock script's commands so far (all of them summed)."""
    info = await client.info("commandstats")
    calls = sum(float(info[c]["calls"]) for c in SCRIPT_COMMANDS if c in info)
    usec = sum(float(info[c]["usec"]) for c in SCRIPT_COMMANDS if c in info)
    return {"calls": calls, "usec": usec}


def _cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def _publish(stack: BenchStack, attempts: int, per_record: int) -> dict[str, float]:
    """Publish the backlog, ``per_record`` attempts per Kafka record; the producer's and broker's CPU."""
    names = TopicNames(stack.prefix)
    await open_sales(stack.bootstrap, names, SALES, 100_000_000)
    p = producer(stack.bootstrap, linger_ms=5, max_request_size=8 << 20)
    await p.start()
    me, broker = os.getpid(), stack.procs["broker"].pid
    try:
        pending = Pending(p, limit=5000 if per_record == 1 else 50)
        ts = now_ms()
        mine0, broker0, t0 = _cpu_s(me), _cpu_s(broker), time.monotonic()
        n = 0
        records = 0
        while n < attempts:
            sale_id, sku = SALES[records % len(SALES)]
            k = min(per_record, attempts - n)
            evs = [attempt(n + i, sale_id, sku, ts, users=attempts) for i in range(k)]
            await pending.send(names.orders, orjson.dumps(evs if per_record > 1 else evs[0]), key=sku.encode())
            n += k
            records += 1
        await pending.flush()
        return {
            "records": records,
            "publish_s": round(time.monotonic() - t0, 2),
            "producer_cpu_s": _cpu_s(me) - mine0,
            "broker_cpu_s": _cpu_s(broker) - broker0,
        }
    finally:
        await p.stop()


async def _measure(
    stack: BenchStack, o: Options, shape: str, attempts: int, per_record: int, log: Log
) -> dict[str, Any]:
    log(f"  limit ({shape}): publishing {attempts:,} attempts, {per_record} per record ...")
    pub = await _publish(stack, attempts, per_record)
    meter = LatencyMeter(stack.bootstrap, TopicNames(stack.prefix).decisions)
    await meter.start()
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: stack.start_worker("limit-worker", env={"FLASHSALE_AGENTS": "stock"})
        )
        pids = stack.pids("limit-worker", "broker", "redis")
        sampler = ProcSampler(pids)
        sampler.start()
        deadline = time.monotonic() + o.timeout_s
        while meter.decided == 0 and time.monotonic() < deadline:
            sampler.sample()
            await asyncio.sleep(0.005)
        # the window opens at the first decision: the worker's start-up and group join are not in it
        cpu0 = {n: _cpu_s(p) for n, p in pids.items()}
        stats0, d0, t0 = await script_stats(client), meter.decided, time.monotonic()
        while meter.decided < attempts and time.monotonic() < deadline:
            sampler.sample()
            await asyncio.sleep(0.02)
        cpu1 = {n: _cpu_s(p) for n, p in pids.items()}
        stats1, d1, t1 = await script_stats(client), meter.decided, time.monotonic()
        procs = sampler.stop()
    finally:
        await meter.stop()
        await client.aclose()
        stack.stop("limit-worker")
    decided = max(1, d1 - d0)
    calls = stats1["calls"] - stats0["calls"]
    us = {("worker" if n == "limit-worker" else n): (cpu1[n] - cpu0[n]) / decided * 1e6 for n in pids}
    out: dict[str, Any] = {
        "shape": shape,
        "attempts": attempts,
        "per_record": per_record,
        "records": pub["records"],
        "decided": meter.decided,
        "repeated_decisions": meter.repeated,
        "window_decisions": d1 - d0,
        "window_s": round(t1 - t0, 3),
        "decisions_per_s": round((d1 - d0) / max(1e-9, t1 - t0), 1),
        "publish_s": pub["publish_s"],
        "producer_us_per_attempt": round(pub["producer_cpu_s"] / attempts * 1e6, 2),
        "broker_in_us_per_attempt": round(pub["broker_cpu_s"] / attempts * 1e6, 2),
        "worker_us_per_decision": round(us["worker"], 2),
        "broker_us_per_decision": round(us["broker"], 2),
        "redis_us_per_decision": round(us["redis"], 2),
        "script_calls": int(calls),
        "decisions_per_script_call": round((d1 - d0) / calls, 1) if calls else None,
        "script_us_per_call": round((stats1["usec"] - stats0["usec"]) / calls, 1) if calls else None,
        "script_us_per_decision": round((stats1["usec"] - stats0["usec"]) / decided, 2),
        "processes": procs,
    }
    out["estimate"] = est = estimate(out, psutil.cpu_count() or 1)
    log(
        f"    measured {out['decisions_per_s']:,.0f} decisions/s; the box could at most do "
        f"{est['limit_per_s']:,.0f}/s: {est['because']}"
    )
    return out


def estimate(m: dict[str, Any], cores: int) -> dict[str, Any]:
    """The most decisions/s the measured per-decision CPU costs allow on ``cores`` cores, and why."""
    parts = {
        "producer": m["producer_us_per_attempt"],
        "broker (ingest)": m["broker_in_us_per_attempt"],
        "worker": m["worker_us_per_decision"],
        "broker (drain)": m["broker_us_per_decision"],
        "redis": m["redis_us_per_decision"],
    }
    total = sum(parts.values())
    bounds = {"the cores": cores * 1e6 / total if total > 0 else float("inf")}
    for name in SINGLE_THREADED:
        key = f"{name}_us_per_decision"
        if m[key] > 0:
            bounds[f"the {name} (one core)"] = 1e6 / m[key]
    limit_by = min(bounds, key=lambda k: bounds[k])
    limit = bounds[limit_by]
    breakdown = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
    if limit_by == "the cores":
        because = (
            f"each decision costs {total:.1f} µs of CPU in all ({breakdown} µs) and {cores} cores give "
            f"{cores * 1e6:,.0f} µs/s"
        )
    else:
        name = limit_by.split()[1]
        because = (
            f"the {name} needs {m[f'{name}_us_per_decision']:.1f} µs of CPU per decision and cannot use "
            f"more than one core (all parts: {breakdown} µs, {total:.1f} µs in all, which {cores} cores "
            f"would allow {bounds['the cores']:,.0f}/s)"
        )
    return {
        "limit_per_s": round(limit, 0),
        "limited_by": limit_by,
        "because": because,
        "us_per_decision": {k: round(v, 2) for k, v in parts.items()},
        "total_us_per_decision": round(total, 2),
        "bounds_per_s": {k: round(v, 0) for k, v in bounds.items()},
        "measured_share": round(m["decisions_per_s"] / limit * 100, 1) if limit else None,
    }


def bench(stack: BenchStack, opts: dict[str, Any], log: Log) -> dict[str, Any]:
    """Entry point of ``python -m bench limit`` (bench.report): runs on the given stack. ``opts`` may carry
    batched_attempts, per_record, single_attempts, timeout_s (``limit_<name>`` wins)."""
    o = options_from(Options, opts, "limit")

    shapes = [("batched", o.batched_attempts, o.per_record), ("one event per record", o.single_attempts, 1)]
    out = []
    for shape, attempts, per_record in shapes:
        if attempts > 0:
            stack.new_prefix(f"limit{per_record}")
            out.append(asyncio.run(_measure(stack, o, shape, attempts, per_record, log)))
    return {"name": "limit", "params": asdict(o), "shapes": out}
