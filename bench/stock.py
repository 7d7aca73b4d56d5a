"""``python -m bench stock``: decision latency at fixed rates and the sustained ceiling."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench.load import LatencyMeter, Pending, attempt, drive, open_sales, producer
from bench.stack import BenchStack
from bench.stats import ProcSampler, now_ms, percentile
from schemas import keys as rk
from schemas.topics import TopicNames

SALES = [(f"bench-s{i}", f"bench-sku-{i}") for i in range(8)]


async def run_rate(stack: BenchStack, rate: float, duration: float, drain_s: float = 15.0,
                   sales: list[tuple[str, str]] = SALES) -> dict[str, Any]:
    names = TopicNames(stack.prefix)
    # Tansu's end offsets can lag the true end: the meter may start inside the previous step's tail
    meter = LatencyMeter(stack.bootstrap, names.decisions, since_ms=now_ms())
    await meter.start()
    # this process is the load generator and the decision reader: it shares the cores, so it is measured
    sampler = ProcSampler({**stack.pids(), "loadgen": os.getpid()})
    sampler.start()
    started = time.monotonic()
    await drive(stack.bootstrap, names, sales, rate, duration, start_n=now_ms() * 10)  # unique ids
    produced = int(rate * duration)
    send_s = time.monotonic() - started
    deadline = time.monotonic() + drain_s
    while meter.decided < produced and time.monotonic() < deadline:
        sampler.sample()
        await asyncio.sleep(0.1)
    behind_s = time.monotonic() - started - send_s
    procs = sampler.stop()
    await meter.stop()
    lat = meter.latencies_ms
    return {
        "target_rate": rate, "duration_s": duration, "attempts": produced, "decided": meter.decided,
        "repeated_decisions": meter.repeated,
        "achieved_rate": round(meter.decided / max(1e-9, send_s + behind_s), 1),
        "p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99), "max_ms": float(max(lat)) if lat else None,
        "drain_after_send_s": round(behind_s, 2), "kept_up": meter.decided >= produced and behind_s < 2.0,
        "processes": procs,
    }


async def _backlog(stack: BenchStack, attempts: int, sales: list[tuple[str, str]]) -> LatencyMeter:
    names = TopicNames(stack.prefix)
    await open_sales(stack.bootstrap, names, sales, 100_000_000)
    await drive(stack.bootstrap, names, sales, rate=attempts / 2.0, duration=2.0, start_n=10**12)
    meter = LatencyMeter(stack.bootstrap, names.decisions)
    await meter.start()
    return meter


async def _drain(stack: BenchStack, meter: LatencyMeter, attempts: int, name: str,
                 timeout: float) -> dict[str, Any]:
    sampler = ProcSampler(stack.pids(name, "broker", "redis"))
    sampler.start()
    deadline = time.monotonic() + timeout
    while meter.decided < attempts and time.monotonic() < deadline:
        sampler.sample()
        await asyncio.sleep(0.05)
    procs = sampler.stop()
    await meter.stop()
    span = max(1e-9, (meter.last_ms - meter.first_ms) / 1000)
    return {"attempts": attempts, "decided": meter.decided, "drain_s": round(span, 2),
            "attempts_per_s": round(meter.decided / span, 1), "processes": procs}


def run_backlog(stack: BenchStack, attempts: int, start: Any, name: str, timeout: float = 180,
                sales: list[tuple[str, str]] = SALES) -> dict[str, Any]:
    """Sustained throughput: publish a backlog of ``attempts``, then start the consumer ``start()``
    and time first → last decision (start-up and group join excluded)."""

    async def go() -> dict[str, Any]:
        meter = await _backlog(stack, attempts, sales)
        await asyncio.get_running_loop().run_in_executor(None, start)
        return await _drain(stack, meter, attempts, name, timeout)

    return asyncio.run(go())


async def prepare(stack: BenchStack, sales: list[tuple[str, str]] = SALES, allotment: int = 100_000_000) -> None:
    await open_sales(stack.bootstrap, TopicNames(stack.prefix), sales, allotment)


def bench_stock(stack: BenchStack, rates: list[float], duration: float, ceiling_attempts: int,
                log: Any = print, **worker_env: str) -> dict[str, Any]:
    stack.new_prefix("stock")
    stack.start_worker("worker", env={"FLASHSALE_AGENTS": "stock", **worker_env})
    asyncio.run(prepare(stack))
    time.sleep(1.0)
    results = []
    for rate in rates:
        log(f"  stock: {rate:.0f} attempts/s for {duration:.0f}s ...")
        r = asyncio.run(run_rate(stack, rate, duration))
        log(f"    decided {r['decided']}/{r['attempts']}  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms"
            f"  kept up: {r['kept_up']}  repeated decisions: {r['repeated_decisions']}")
        results.append(r)
    stack.stop("worker")
    log(f"  stock: sustained, a backlog of {ceiling_attempts} attempts ...")
    stack.new_prefix("stockmax")
    sustained = run_backlog(stack, ceiling_attempts, lambda: stack.start_worker(
        "worker", env={"FLASHSALE_AGENTS": "stock", **worker_env}), "worker")
    log(f"    {sustained['attempts_per_s']:.0f} attempts/s")
    stack.stop("worker")
    return {"rates": results, "sustained": sustained}


# The reference consumers: a module run with the stack's settings, its backlog option, its log line.
REFERENCES = (
    ("aiokafka_batch_lua", "ceiling", "bench.ceiling_loop", "backlog",
     "plain aiokafka loop, one Lua call per batch"),
    ("naive_faust", "naive", "bench.naive_agent", "naive_backlog",
     "naive Faust agent, one awaited Redis call per event"),
)


def bench_reference(stack: BenchStack, attempts: int, naive_attempts: int, log: Any = print) -> dict[str, Any]:
    """The same backlog workload through the two reference consumers."""
    backlogs = {"backlog": attempts, "naive_backlog": naive_attempts}
    out = {}
    for key, name, module, backlog, what in REFERENCES:
        log(f"  reference: {what}, backlog {backlogs[backlog]} ...")
        stack.new_prefix(name)
        out[key] = run_backlog(stack, backlogs[backlog], lambda name=name, module=module: stack.start_worker(
            name, module=module, ready_path=""), name)
        stack.stop(name)
        log(f"    {out[key]['attempts_per_s']:.0f} attempts/s")
    return out


SINGLE_SALES = [(f"single-s{i}", f"single-sku-{i}") for i in range(8)]


async def _load_single(stack: BenchStack, attempts: int, allotment: int,
                       sales: list[tuple[str, str]]) -> None:
    """Open ``sales`` with ``allotment`` units each, then publish ``attempts`` order.placed, ONE event
    per Kafka record (what the gateway and any plain producer sends), awaiting every ack."""
    names = TopicNames(stack.prefix)
    await open_sales(stack.bootstrap, names, sales, allotment)
    p = producer(stack.bootstrap, linger_ms=5)
    await p.start()
    try:
        pending = Pending(p, limit=5000)
        ts = now_ms()
        for n in range(attempts):
            sale_id, sku = sales[n % len(sales)]
            value = orjson.dumps(attempt(n, sale_id, sku, ts, users=attempts))  # one user per attempt
            await pending.send(names.orders, value, key=sku.encode())
        await pending.flush()
    finally:
        await p.stop()


async def _sale_totals(stack: BenchStack, sales: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    client = aioredis.from_url(stack.redis_url)
    try:
        out = {}
        for sale_id, _ in sales:
            raw = await client.hgetall(rk.sale(sale_id))
            out[sale_id] = {str(k, "utf-8") if isinstance(k, bytes) else k: int(v) for k, v in raw.items()
                            if v.isdigit()}
        return out
    finally:
        await client.aclose()


def _batch_shape(port: int) -> dict[str, float]:
    """From the worker's /metrics: mean events per stock batch and mean stock-script round trip."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("flashsale_batch_events_", "flashsale_redis_call_seconds_")) and " " in line:
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    out = {}
    n = values.get('flashsale_batch_events_count{agent="stock"}', 0.0)
    if n:
        out["events_per_batch"] = round(values['flashsale_batch_events_sum{agent="stock"}'] / n, 1)
    for name, v in values.items():
        if name.startswith("flashsale_redis_call_seconds_count") and v:
            op = name[name.index("{"):]
            out[f"redis_ms_mean{op}"] = round(values[f"flashsale_redis_call_seconds_sum{op}"] / v * 1000, 2)
    return out


def bench_single_record(stack: BenchStack, attempts: int, log: Any = print, **worker_env: str) -> dict[str, Any]:
    """The one-event-per-record drain: a backlog of ``attempts`` order.placed, one event per Kafka
    record, then a stock worker is started and first → last decision is timed. Half the attempts can
    be accepted (each sale's allotment is half its attempts), so both decisions and the oversell
    check are exercised; every attempt must be decided exactly once."""
    sales = SINGLE_SALES
    allotment = max(1, attempts // len(sales) // 2)
    stack.new_prefix("single")

    async def go() -> dict[str, Any]:
        log(f"  stock: one event per record, loading a backlog of {attempts} attempts ...")
        await _load_single(stack, attempts, allotment, sales)
        meter = LatencyMeter(stack.bootstrap, TopicNames(stack.prefix).decisions)
        await meter.start()
        port = await asyncio.get_running_loop().run_in_executor(None, lambda: stack.start_worker(
            "worker", env={"FLASHSALE_AGENTS": "stock", **worker_env}))
        sampler = ProcSampler(stack.pids("worker", "broker", "redis"))
        sampler.start()
        deadline = time.monotonic() + max(60.0, attempts / 1000)
        while meter.decided < attempts and time.monotonic() < deadline:
            sampler.sample()
            await asyncio.sleep(0.05)
        span = max(1e-9, (meter.last_ms - meter.first_ms) / 1000)
        await asyncio.sleep(1.0)  # late duplicates, if any, are counted too
        procs = sampler.stop()
        elapsed = time.monotonic() - sampler._t0  # noqa: SLF001 - the sampler's own window
        await meter.stop()
        shape = await asyncio.get_running_loop().run_in_executor(None, _batch_shape, port)
        totals = await _sale_totals(stack, sales)
        oversold = sum(max(0, t.get("reserved", 0) + t.get("sold", 0) - allotment) for t in totals.values())
        oversold += sum(max(0, t.get("accepted", 0) - allotment) for t in totals.values())
        cpu_s = procs["worker"]["cpu_percent"] / 100 * elapsed
        return {
            "attempts": attempts, "decided": meter.decided, "repeated_decisions": meter.repeated,
            "decided_once": meter.decided == attempts and meter.repeated == 0,
            "oversold": oversold, "drain_s": round(span, 2),
            "decisions_per_s": round(meter.decided / span, 1),
            # the worker's CPU over the whole window (drain plus its idle tail) per decision
            "worker_cpu_us_per_decision": round(cpu_s / max(1, meter.decided) * 1e6, 1),
            "processes": procs,
            **shape,
        }

    try:
        r = asyncio.run(go())
    finally:
        stack.stop("worker")
    log(f"    {r['decisions_per_s']:.0f} decisions/s, worker {r['worker_cpu_us_per_decision']} µs CPU/decision, "
        f"decided once: {r['decided_once']}, oversold: {r['oversold']}")
    return r
