"""``python -m bench limit``: what this box could at most decide per second, built from measured parts.

For each record shape (batched envelopes, and one event per Kafka record) a ready stock worker gets order
attempts published as fast as one producer goes, and decides them as they come. Measured in the same run,
from the first attempt published to the last decision (the worker's start-up is not in it):

* the CPU per decision of the producer (this process, while it publishes), the broker (taking the attempts
  in, serving them to the worker, taking the decisions in), the worker and Redis (psutil);
* the stock script's own cost from Redis's ``INFO commandstats`` (``usec`` of evalsha/fcall per call and per
  decision).

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

from bench.load import Pending, attempt, open_sales, producer
from bench.options import options_from
from bench.stack import BenchStack
from bench.stats import ProcSampler, now_ms
from schemas import keys
from schemas.topics import TopicNames

Log = Callable[[str], None]
SCRIPT_COMMANDS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall", "cmdstat_evalsha_ro", "cmdstat_fcall_ro")
Sales = list[tuple[str, str]]


def sales_of(prefix: str) -> Sales:
    """Eight sales of their own per measurement (the stack's Redis keeps earlier ones): one SKU per partition."""
    tag = prefix.rstrip(".")
    return [(f"{tag}-s{i}", f"{tag}-sku-{i}") for i in range(8)]


# Processes that can use at most one core: one Python event loop, one Redis main thread. Tansu (Rust,
# multi-threaded) is bounded only by the box.
SINGLE_THREADED = ("worker", "redis")
LABEL = {"worker": "worker", "redis": "Redis"}


@dataclass(frozen=True)
class Options:
    batched_attempts: int = 100_000
    per_record: int = 500
    single_attempts: int = 10_000
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


async def decided(client: aioredis.Redis, sales: Sales) -> int:
    """Decisions the stock script made for the bench's sales so far (accepted plus every rejection)."""
    pipe = client.pipeline(transaction=False)
    for sale_id, _ in sales:
        pipe.hgetall(keys.sale(sale_id))
    total = 0
    for h in await pipe.execute():
        for k, v in h.items():
            name = k.decode() if isinstance(k, bytes) else k
            if name == "accepted" or name.startswith("rej_"):
                total += int(float(v))
    return total


async def _publish(stack: BenchStack, sales: Sales, attempts: int, per_record: int) -> int:
    """Publish the attempts as fast as the producer goes, ``per_record`` per Kafka record; returns the records."""
    names = TopicNames(stack.prefix)
    p = producer(stack.bootstrap, linger_ms=5, max_request_size=8 << 20)
    await p.start()
    try:
        pending = Pending(p, limit=5000 if per_record == 1 else 50)
        ts = now_ms()
        n = records = 0
        while n < attempts:
            sale_id, sku = sales[records % len(sales)]
            k = min(per_record, attempts - n)
            evs = [attempt(n + i, sale_id, sku, ts, users=attempts) for i in range(k)]
            await pending.send(names.orders, orjson.dumps(evs if per_record > 1 else evs[0]), key=sku.encode())
            n += k
            records += 1
        await pending.flush()
        return records
    finally:
        await p.stop()


async def _measure(
    stack: BenchStack, o: Options, shape: str, attempts: int, per_record: int, log: Log
) -> dict[str, Any]:
    """The worker is started and ready first (its start-up is not measured); then every CPU counter is read,
    the attempts are published as fast as the producer can and the worker decides them as they come; the
    counters are read again when the last one is decided. Decisions are counted in Redis, so no reader
    shares this process with the producer."""
    log(f"  limit ({shape}): {attempts:,} attempts, {per_record} per record ...")
    names = TopicNames(stack.prefix)
    sales = sales_of(stack.prefix)
    await open_sales(stack.bootstrap, names, sales, 100_000_000)
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: stack.start_worker("limit-worker", env={"FLASHSALE_AGENTS": "stock"})
        )
        pids = {**stack.pids("limit-worker", "broker", "redis"), "producer": os.getpid()}
        base = await decided(client, sales)
        sampler = ProcSampler(pids)
        sampler.start()
        cpu0 = {n: _cpu_s(p) for n, p in pids.items()}
        stats0, t0 = await script_stats(client), time.monotonic()
        records = await _publish(stack, sales, attempts, per_record)
        producer_s = _cpu_s(os.getpid()) - cpu0["producer"]
        publish_s = time.monotonic() - t0
        deadline = t0 + o.timeout_s
        done = await decided(client, sales) - base
        while done < attempts and time.monotonic() < deadline:
            sampler.sample()
            await asyncio.sleep(0.01)
            done = await decided(client, sales) - base
        t1 = time.monotonic()
        cpu1 = {n: _cpu_s(p) for n, p in pids.items()}
        stats1 = await script_stats(client)
        procs = sampler.stop()
    finally:
        await client.aclose()
        stack.stop("limit-worker")
    if done < attempts:
        raise RuntimeError(f"limit ({shape}): {done} of {attempts} attempts decided in {o.timeout_s:.0f}s")
    calls = stats1["calls"] - stats0["calls"]
    us = {("worker" if n == "limit-worker" else n): (cpu1[n] - cpu0[n]) / done * 1e6 for n in pids}
    out: dict[str, Any] = {
        "shape": shape,
        "attempts": attempts,
        "per_record": per_record,
        "records": records,
        "decided": done,
        "publish_s": round(publish_s, 3),
        "window_s": round(t1 - t0, 3),
        "decisions_per_s": round(done / (t1 - t0), 1),
        "producer_us_per_attempt": round(producer_s / attempts * 1e6, 2),
        "worker_us_per_decision": round(us["worker"], 2),
        "broker_us_per_decision": round(us["broker"], 2),
        "redis_us_per_decision": round(us["redis"], 2),
        "script_calls": int(calls),
        "decisions_per_script_call": round(done / calls, 1) if calls else None,
        "script_us_per_call": round((stats1["usec"] - stats0["usec"]) / calls, 1) if calls else None,
        "script_us_per_decision": round((stats1["usec"] - stats0["usec"]) / done, 2),
        "processes": procs,
    }
    out["estimate"] = est = estimate(out, psutil.cpu_count() or 1)
    log(
        f"    {out['decisions_per_s']:,.0f} decisions/s published and decided; the box could at most do "
        f"{est['limit_per_s']:,.0f}/s: {est['because']}"
    )
    return out


def estimate(m: dict[str, Any], cores: int) -> dict[str, Any]:
    """The most decisions/s the measured per-decision CPU costs allow on ``cores`` cores, and why."""
    parts = {
        "producer": m["producer_us_per_attempt"],
        "broker": m["broker_us_per_decision"],
        "worker": m["worker_us_per_decision"],
        "redis": m["redis_us_per_decision"],
    }
    total = sum(parts.values())
    bounds = {"the cores": cores * 1e6 / total if total > 0 else float("inf")}
    for name in SINGLE_THREADED:
        key = f"{name}_us_per_decision"
        if m[key] > 0:
            bounds[f"the {LABEL[name]} (one core)"] = 1e6 / m[key]
    limit_by = min(bounds, key=lambda k: bounds[k])
    limit = bounds[limit_by]
    breakdown = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
    if limit_by == "the cores":
        because = (
            f"each decision costs {total:.1f} µs of CPU in all ({breakdown} µs) and {cores} cores give "
            f"{cores * 1e6:,.0f} µs/s"
        )
    else:
        name = next(n for n in SINGLE_THREADED if limit_by == f"the {LABEL[n]} (one core)")
        because = (
            f"the {LABEL[name]} needs {m[f'{name}_us_per_decision']:.1f} µs of CPU per decision and cannot use "
            f"more than one core (all parts: {breakdown} µs, {total:.1f} µs in all, which {cores} cores "
            f"would allow {bounds['the cores']:,.0f}/s)"
        )
    # a backlog already in Kafka needs no producer: the drain's own limit
    drain_total = total - parts["producer"]
    drain = min(
        [
            cores * 1e6 / drain_total if drain_total > 0 else float("inf"),
            *(b for k, b in bounds.items() if k != "the cores"),
        ]
    )
    return {
        "limit_per_s": round(limit, 0),
        "drain_limit_per_s": round(drain, 0),
        "limited_by": limit_by,
        "because": because,
        "us_per_decision": {k: round(v, 2) for k, v in parts.items()},
        "total_us_per_decision": round(total, 2),
        "bounds_per_s": {k: round(v, 0) for k, v in bounds.items()},
        "measured_share": round(m["decisions_per_s"] / limit * 100, 1) if limit and m["decisions_per_s"] else None,
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
