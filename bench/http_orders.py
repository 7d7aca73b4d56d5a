"""``python -m bench http``: orders over HTTP as users send them, through the real gateway, worker, broker and Redis.

wrk (the Debian package) drives ``POST /v1/sales/{sale_id}/orders`` with one order per request, each with its
own order_id (``bench/wrk_orders.lua``), at each connection count, against three servers on the same box and
under the same wrk settings:

* **minimal**: the smallest aiohttp POST handler (``bench.minimal_http``), the reference;
* **decisions**: the gateway on an open sale with stock for every order, so each request is published to
  Kafka and waits for the worker's decision;
* **sold out**: the gateway on a sale opened with no stock, answered 409 from the sold-out flag, no Kafka.

Every run is checked, not only timed: every answer's status is counted by wrk's ``response`` hook; after a
decisions run the decisions topic is read from where the run started (every order decided once, none
twice with different outcomes), Redis's stock must balance (allotted = available + reserved + sold,
sold <= allotted), and every 202 "pending" is counted: all orders are decided, so every 202 is spurious.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench.load import DecisionTally, end_offsets, open_sales, read_decisions
from bench.options import options_from
from bench.stack import BenchStack
from bench.stats import BoxCpu, ProcSampler
from schemas import keys
from schemas.topics import TopicNames

Log = Callable[[str], None]
SCRIPT = Path(__file__).with_name("wrk_orders.lua")
PRICE = 100  # bench.load.sale_opened's price: an order must name it
KINDS = ("minimal", "decisions", "sold_out")
STOCK_FIELDS = ("allotted", "available", "reserved", "sold", "refunded", "attempts", "accepted")


@dataclass(frozen=True)
class Options:
    duration_s: float = 10.0
    connections: tuple[str, ...] = ("64", "1000")
    threads: int = 2
    warmup_s: float = 2.0
    timeout_s: float = 10.0  # wrk --timeout: a slower answer is a timeout error, not a latency sample
    settle_timeout_s: float = 60.0
    gateway_processes: tuple[str, ...] = ("1", "2")  # FLASHSALE_GATEWAY_PROCESSES of each gateway run
    gateway_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sale:
    sale_id: str
    sku: str
    allotment: int


def wrk(
    url: str, connections: int, o: Options, duration_s: float, run: str, sku: str, log_path: Path
) -> dict[str, Any]:
    """One wrk run; its own ``BENCH`` line parsed, and its CPU seconds from the kernel's rusage of the child."""
    argv = [
        "wrk",
        f"-t{min(o.threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        f"{max(1, round(o.timeout_s))}s",
        "--latency",
        "-s",
        str(SCRIPT),
        url,
        "--",
        run,
        sku,
        str(PRICE),
    ]
    with log_path.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(popen.pid, 0)
        popen.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text()
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH ")), None)
    if popen.returncode != 0 or line is None:
        raise RuntimeError(f"wrk exited {popen.returncode} without a result: {text[-1500:]}")
    result: dict[str, Any] = orjson.loads(line.removeprefix("BENCH "))
    result["wrk_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
    return result


async def stock_of(client: aioredis.Redis, sale: Sale) -> dict[str, Any]:
    """The sale's stock and counters from Redis, the order records it holds, and the balance checks."""
    raw = await client.hgetall(keys.sale(sale.sale_id))
    h = {_text(k): _text(v) for k, v in raw.items()}
    out: dict[str, Any] = {f: int(float(h.get(f, 0) or 0)) for f in STOCK_FIELDS}
    out["rejected"] = sum(int(float(v or 0)) for k, v in h.items() if k.startswith("rej_"))
    out["order_records"] = int(await client.hlen(keys.sale_orders(sale.sale_id)))
    out["status"] = h.get("status")
    held = out["available"] + out["reserved"] + out["sold"] + out["refunded"]
    out["balanced"] = out["allotted"] == held and out["sold"] <= out["allotted"] and out["available"] >= 0
    out["oversold"] = max(0, out["reserved"] + out["sold"] - out["allotted"])
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def wait_open(client: aioredis.Redis, sales: list[Sale], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for sale in sales:
        while (await client.hget(keys.sale(sale.sale_id), "status")) != b"open":
            if time.monotonic() > deadline:
                raise RuntimeError(f"sale {sale.sale_id} was not opened by the worker in {timeout:.0f}s")
            await asyncio.sleep(0.1)


async def settle(client: aioredis.Redis, sale: Sale, timeout: float, quiet_s: float = 1.0) -> None:
    """Wait until the sale's order records and outbox stop changing (the worker finished the run's tail)."""
    deadline = time.monotonic() + timeout
    last: tuple[int, int] | None = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        now = (
            int(await client.hlen(keys.sale_orders(sale.sale_id))),
            int(await client.zcard(keys.sale_outbox(sale.sale_id))),
        )
        if now != last:
            last, since = now, time.monotonic()
        elif now[1] == 0 and time.monotonic() - since >= quiet_s:
            return
        await asyncio.sleep(0.1)


def checks(
    kind: str,
    connections: int,
    statuses: dict[str, int],
    requests: int,
    stock: dict[str, Any] | None,
    tally: DecisionTally | None,
) -> dict[str, Any]:
    """The run's correctness: each figure, and ``ok`` when all hold."""
    answered = {
        "minimal": statuses.get("200", 0),
        "decisions": statuses.get("200", 0),
        "sold_out": statuses.get("409", 0),
    }[kind]
    pending = statuses.get("202", 0)
    out: dict[str, Any] = {"answered": answered, "pending_202": pending, "other_status": requests - answered - pending}
    ok = out["other_status"] == 0 and sum(statuses.values()) == requests
    if kind == "decisions" and stock is not None and tally is not None:
        t = tally.summary()
        # every answered or pending order was published, so it has exactly one decision; wrk's stop leaves at
        # most one request per connection unanswered, which the gateway may still have published
        out.update(
            decided_orders=t["orders"],
            repeated_decisions=t["repeated"],
            conflicting=t["conflicting"],
            order_records=stock["order_records"],
            oversold=stock["oversold"],
            balanced=stock["balanced"],
            spurious_202=pending if t["orders"] >= answered + pending else None,
        )
        out["decided_once"] = (
            t["conflicting"] == 0
            and t["orders"] == stock["order_records"]
            and answered + pending <= t["orders"] <= answered + pending + connections
        )
        ok = ok and out["decided_once"] and stock["balanced"] and stock["oversold"] == 0
    if kind == "sold_out" and stock is not None and tally is not None:
        t = tally.summary()
        out.update(
            decided_orders=t["orders"],
            attempts_published=stock["attempts"],
            oversold=stock["oversold"],
            balanced=stock["balanced"],
            spurious_202=pending,
        )
        ok = ok and t["orders"] == 0 and stock["attempts"] == 0 and stock["balanced"]
    out["ok"] = bool(ok)
    return out


def _sales(tag: str, conns: list[int], procs: int) -> dict[tuple[str, int], Sale]:
    out = {}
    for c in conns:
        out[("decisions", c)] = Sale(f"h{tag}-p{procs}-dec{c}", f"h{tag}-sku-p{procs}-dec{c}", 100_000_000)
        out[("sold_out", c)] = Sale(f"h{tag}-p{procs}-out{c}", f"h{tag}-sku-p{procs}-out{c}", 0)
    out[("warmup", 0)] = Sale(f"h{tag}-p{procs}-warm", f"h{tag}-sku-p{procs}-warm", 100_000_000)
    return out


async def _one(
    stack: BenchStack,
    o: Options,
    kind: str,
    c: int,
    url: str,
    sale: Sale | None,
    pids: dict[str, int],
    client: aioredis.Redis,
    log: Log,
    gateway_processes: int = 0,
) -> dict[str, Any]:
    names = TopicNames(stack.prefix)
    start = await end_offsets(stack.bootstrap, names.decisions)
    sampler = ProcSampler(pids)
    box = BoxCpu()
    sampler.start()
    box.start()
    run = f"{kind}{c}-{int(time.time() * 1000) % 10**9}"
    task = asyncio.create_task(
        asyncio.to_thread(wrk, url, c, o, o.duration_s, run, sale.sku if sale else "sku", stack.root / f"wrk-{run}.log")
    )
    while not task.done():
        sampler.sample()
        await asyncio.wait({task}, timeout=0.5)
    res = task.result()
    procs = sampler.stop()
    box_cpu = box.stop()
    seconds = res["duration_us"] / 1e6
    procs["wrk"] = {
        "cpu_percent": round(res["wrk_cpu_s"] / seconds * 100, 1),
        "cpu_s": res["wrk_cpu_s"],
        "rss_mb": 0.0,
        "procs": 1,
    }
    stock = tally = None
    if sale is not None:
        await settle(client, sale, o.settle_timeout_s)
        stock = await stock_of(client, sale)
        tally = (await read_decisions(stack.bootstrap, names.decisions, start, {sale.sale_id}))[sale.sale_id]
    lat = res["latency_us"]
    server = procs.get("gateway") or procs.get("minimal") or {}
    out = {
        "kind": kind,
        "connections": c,
        "gateway_processes": gateway_processes,
        "threads": min(o.threads, c),
        "duration_s": round(seconds, 2),
        "requests": res["requests"],
        "req_per_s": round(res["requests"] / seconds, 1),
        "p50_ms": round(lat["p50"] / 1000, 1),
        "p90_ms": round(lat["p90"] / 1000, 1),
        "p99_ms": round(lat["p99"] / 1000, 1),
        "max_ms": round(lat["max"] / 1000, 1),
        "statuses": res["statuses"],
        "wrk_errors": res["errors"],
        "processes": procs,
        "box_cpu": box_cpu,
        "server_us_per_request": round(float(server.get("cpu_s", 0.0)) / max(1, res["requests"]) * 1e6, 1),
        "sale": asdict(sale) if sale else None,
        "stock": stock,
        "decisions": tally.summary() if tally is not None else None,
    }
    out["checks"] = checks(kind, c, res["statuses"], res["requests"], stock, tally)
    log(
        f"    {kind}{f' ({gateway_processes} gateway processes)' if gateway_processes else ''} @ {c} connections: "
        f"{out['req_per_s']:,.0f} req/s, p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms,"
        f" statuses {res['statuses']}, errors {res['errors']}, checks {'ok' if out['checks']['ok'] else 'FAILED'}"
    )
    return out


async def _warm(o: Options, url: str, c: int, sku: str, root: Path) -> None:
    """First requests pay for connections, imports and caches: a short unmeasured wrk run."""
    if o.warmup_s > 0:
        await asyncio.to_thread(
            wrk, url, c, o, o.warmup_s, f"warm{int(time.time() * 1000)}", sku, root / "wrk-warm.log"
        )


async def _minimal_runs(stack: BenchStack, o: Options, port: int, log: Log) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/v1/sales/bench/orders"
    conns = [int(c) for c in o.connections]
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        await _warm(o, url, conns[0], "sku", stack.root)
        runs = []
        for c in conns:
            log(f"  http: minimal aiohttp handler, {c} connections, {o.duration_s:.0f}s")
            runs.append(await _one(stack, o, "minimal", c, url, None, stack.pids("minimal"), client, log))
        return runs
    finally:
        await client.aclose()


async def _gateway_runs(stack: BenchStack, o: Options, port: int, procs: int, log: Log) -> list[dict[str, Any]]:
    conns = [int(c) for c in o.connections]
    sales = _sales(stack.prefix.rstrip("."), conns, procs)
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        names = TopicNames(stack.prefix)
        for allotment in (100_000_000, 0):
            group = [(s.sale_id, s.sku) for s in sales.values() if s.allotment == allotment]
            await open_sales(stack.bootstrap, names, group, allotment)
        await wait_open(client, list(sales.values()))
        gw = f"http://127.0.0.1:{port}/v1/sales/{{}}/orders"
        warm = sales[("warmup", 0)]
        await _warm(o, gw.format(warm.sale_id), conns[0], warm.sku, stack.root)
        pids = stack.pids("gateway", "worker", "broker", "redis")
        runs = []
        for c in conns:
            log(f"  http: gateway ({procs} process{'es' if procs > 1 else ''}), {c} connections, {o.duration_s:.0f}s")
            for kind in ("decisions", "sold_out"):
                sale = sales[(kind, c)]
                url = gw.format(sale.sale_id)
                runs.append(await _one(stack, o, kind, c, url, sale, pids, client, log, gateway_processes=procs))
        return runs
    finally:
        await client.aclose()


def _procs(run: dict[str, Any]) -> str:
    n = int(run.get("gateway_processes") or 1)
    return f" ({n} gateway process{'es' if n > 1 else ''})"


def targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 14's HTTP targets against this run's figures (of each path, the gateway configuration that served
    the most req/s; the row says which)."""
    by: dict[tuple[str, int], dict[str, Any]] = {}
    for r in runs:
        key = (r["kind"], r["connections"])
        if key not in by or r["req_per_s"] > by[key]["req_per_s"]:
            by[key] = r
    out: list[dict[str, Any]] = []
    dec = by.get(("decisions", 1000))
    if dec is not None:
        spurious = dec["checks"].get("spurious_202")
        out.append(
            {
                "target": f"HTTP orders with decisions at 1,000 connections{_procs(dec)}: >= 6,000 req/s",
                "figure": dec["req_per_s"],
                "goal": 6000.0,
                "unit": "req/s",
                "higher_is_better": True,
                "connections": 1000,
            }
        )
        out.append(
            {
                "target": f"HTTP orders with decisions at 1,000 connections{_procs(dec)}: p99 <= 150 ms",
                "figure": dec["p99_ms"],
                "goal": 150.0,
                "unit": "ms",
                "higher_is_better": False,
                "connections": 1000,
            }
        )
        out.append(
            {
                "target": f"HTTP orders with decisions at 1,000 connections{_procs(dec)}: 0 spurious 202 'pending'",
                "figure": spurious if spurious is not None else dec["checks"]["pending_202"],
                "goal": 0.0,
                "unit": "answers",
                "higher_is_better": False,
                "connections": 1000,
            }
        )
    for (kind, c), r in by.items():
        ref = by.get(("minimal", c))
        if kind == "sold_out" and ref is not None and ref["req_per_s"] > 0:
            out.append(
                {
                    "target": f"sold-out path at {c:,} connections{_procs(r)}: >= 85 % of the minimal handler's req/s",
                    "figure": round(r["req_per_s"] / ref["req_per_s"] * 100, 1),
                    "goal": 85.0,
                    "unit": "%",
                    "higher_is_better": True,
                    "connections": c,
                }
            )
    return out


def bench(stack: BenchStack, opts: dict[str, Any], log: Log) -> dict[str, Any]:
    """Entry point of ``python -m bench http`` (bench.report): runs on the given stack. ``opts`` may carry
    duration_s, connections, threads, warmup_s, timeout_s, settle_timeout_s, gateway_processes, gateway_args
    (``http_<name>`` wins)."""
    o = options_from(Options, opts, "http")
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk (the Debian package)")
    from producers.gateway.settings import GatewaySettings

    counts = [int(n) for n in o.gateway_processes]
    if any(n > 1 for n in counts) and "processes" not in GatewaySettings.model_fields:
        log("  http: this gateway has no FLASHSALE_GATEWAY_PROCESSES: one process only")
        counts = [1]
    stack.new_prefix("http")
    runs: list[dict[str, Any]] = []
    try:
        min_port = stack.start("minimal", "bench.minimal_http", port_var="BENCH_MINIMAL_PORT")
        runs += asyncio.run(_minimal_runs(stack, o, min_port, log))
        stack.stop("minimal")
        stack.start_worker("worker", env={"FLASHSALE_AGENTS": "stock"})
        for procs in counts:
            env = {
                "FLASHSALE_GATEWAY_RATE_LIMIT": "0",
                **({"FLASHSALE_GATEWAY_PROCESSES": str(procs)} if procs > 1 else {}),
            }
            port = stack.start(
                "gateway", "producers.gateway", o.gateway_args, port_var="FLASHSALE_GATEWAY_PORT", env=env
            )
            try:
                runs += asyncio.run(_gateway_runs(stack, o, port, procs, log))
            finally:
                stack.stop("gateway")
    finally:
        for name in ("minimal", "gateway", "worker"):
            stack.stop(name)
    return {
        "name": "http",
        "params": asdict(o),
        "runs": runs,
        "targets": targets(runs),
        "ok": all(r["checks"]["ok"] for r in runs),
    }
