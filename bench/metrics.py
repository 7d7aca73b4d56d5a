"""``python -m bench metrics``: engagement events/s sustained, event→Redis latency, Redis memory per room.

Three measurements against a counters-only worker (``FLASHSALE_AGENTS=counters``):

* **fixed rate**, once per worker profile (the default settings, and shorter consumer waits): an
  open-loop generator publishes viewer / cart events at ``rate`` events/s for ``duration_s``
  seconds, one batched record per room per tick, each event stamped with the time its batch was
  built. Latency is event time → the moment the worker's Lua call for it returned,
  read from the worker's own ``flashsale_processing_latency_seconds`` histogram (every event is
  observed; the percentile is interpolated inside a bucket), plus an outside probe: every 100 ms a
  one-event record to a probe room, whose arrival in Redis a poller timestamps.
* **backlog drain** (the ceiling): publish ``backlog`` events first, then start the worker and
  time first → last applied event.
* **memory per room**: ``MEMORY USAGE`` of every key of one room after the run, by key family,
  and the steady-state estimate for the dedupe sets (they hold one window of event ids).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from bench.load import Pending, producer
from bench.markdown import table
from bench.options import options_from
from bench.stack import BenchStack
from bench.stats import ProcSampler, now_ms, percentile
from schemas import keys
from schemas.topics import TopicNames

Log = Callable[[str], None]
MIX = (
    ("viewer.liked", 45),
    ("product.clicked", 15),
    ("cart.added", 15),
    ("viewer.joined", 10),
    ("viewer.commented", 10),
    ("viewer.shared", 3),
    ("viewer.left", 2),
)
CHANNELS = ("live_room", "community_group", "mini_program", "share_link")
AGENT = "counters_engagement"
HIST = "flashsale_processing_latency_seconds"
# Rates below the target (issue 14: 50,000 events/s), run with the default settings: where latency still
# holds on this machine when the target rate does not.
KNEE_RATES: tuple[float, ...] = (25_000.0,)
TARGET_P99_MS = 100.0
# The steady-state memory run applies 12 minutes of event time for one room without the broker; above this
# rate per room it costs more bench time than it tells (memory grows with the dedupe window's ids).
STEADY_RATE_PER_ROOM = 1250
# Worker settings per fixed-rate run: the defaults, and a shorter consumer fetch wait (10 ms
# instead of 50 ms; the batch window is 5 ms in both).
PROFILES: tuple[tuple[str, dict[str, str]], ...] = (
    ("defaults", {}),
    ("low latency", {"FLASHSALE_FETCH_MAX_WAIT_MS": "10"}),
)


@dataclass(frozen=True)
class Options:
    rate: float = 50_000.0
    duration_s: float = 15.0
    rooms: int = 20
    users_per_room: int = 5_000
    tick_s: float = 0.05
    backlog: int = 300_000
    drain_timeout_s: float = 60.0


class Generator:
    """Builds engagement events as plain dicts (the worker validates them; this side must be cheap)."""

    def __init__(self, rooms: list[str], users: int, seed: int = 1) -> None:
        self.rooms = rooms
        self.users = users
        self.rng = random.Random(seed)
        self.n = 0
        self.kinds = [k for k, w in MIX for _ in range(w)]

    def event(self, room: str, ts: int) -> dict[str, Any]:
        self.n += 1
        r = self.rng.random
        kind = self.kinds[int(r() * len(self.kinds))]
        data: dict[str, Any] = {}
        if kind == "viewer.liked":
            data = {"count": 1 + int(r() * 3)}
        elif kind in ("product.clicked", "cart.added"):
            data = {"sku": f"sku-{int(r() * 8)}"}
        elif kind == "viewer.commented":
            data = {"text": "666"}
        return {
            "type": kind,
            "v": 1,
            "event_id": f"m{self.n}",
            "ts": ts,
            "room_id": room,
            "user_id": f"u{int(r() * self.users)}",
            "channel": CHANNELS[int(r() * 4)],
            "data": data,
        }

    def batch(self, room: str, count: int, ts: int) -> bytes:
        return orjson.dumps([self.event(room, ts) for _ in range(count)])


async def applied(client: aioredis.Redis, rooms: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for room in rooms:
        pipe.hget(keys.room_base(room), "events")
    return sum(int(v or 0) for v in await pipe.execute())


def scrape(port: int) -> dict[float, float]:
    """Cumulative bucket counts (le → count) of the engagement agent's latency histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(HIST + "_bucket") and f'agent="{AGENT}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def hist_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Quantile (ms) of the observations between two scrapes, linear inside the bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    want = q * total
    prev_b, prev_c = 0.0, 0.0
    for b, c in zip(bounds, counts, strict=False):
        if c >= want:
            if b == float("inf"):
                return round(prev_b * 1000, 1)
            frac = (want - prev_c) / (c - prev_c) if c > prev_c else 1.0
            return round((prev_b + (b - prev_b) * frac) * 1000, 1)
        prev_b, prev_c = b, c
    return None


async def _probe(
    client: aioredis.Redis, producer: AIOKafkaProducer, topic: str, room: str, stop: asyncio.Event, samples: list[float]
) -> None:
    """Every 100 ms one event to the probe room; poll Redis every 2 ms until it is applied."""
    n = 0
    base = keys.room_base(room)
    while not stop.is_set():
        n += 1
        ts = now_ms()
        ev = {
            "type": "viewer.liked",
            "v": 1,
            "event_id": f"probe{n}-{ts}",
            "ts": ts,
            "room_id": room,
            "user_id": "probe",
            "channel": "live_room",
            "data": {"count": 1},
        }
        await producer.send(topic, orjson.dumps([ev]), key=room.encode())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            seen = await client.hget(base, "ne")
            if seen is not None and int(seen) >= ts:
                samples.append(time.time() * 1000 - ts)  # float ms: the probe resolves below 1 ms
                break
            await asyncio.sleep(0.002)
        await asyncio.sleep(max(0.0, 0.1 - (now_ms() - ts) / 1000))


async def _fixed_rate(stack: BenchStack, opts: Options, port: int, log: Log, worker: str) -> dict[str, Any]:
    names = TopicNames(stack.prefix)
    rooms = [f"mb{stack.prefix.rstrip('.')}-{i}" for i in range(opts.rooms)]
    probe_room = f"mb{stack.prefix.rstrip('.')}-probe"
    gen = Generator(rooms, opts.users_per_room)
    client = aioredis.Redis.from_url(stack.redis_url)
    prod = producer(stack.bootstrap, linger_ms=5, max_request_size=4 << 20)
    await prod.start()
    pending = Pending(prod)  # flushed every 10 ticks below
    sampler = ProcSampler(
        {"worker": stack.procs[worker].pid, **stack.pids("broker", "redis"), "load generator": os.getpid()}
    )
    probe_samples: list[float] = []
    stop = asyncio.Event()
    try:
        hist0 = await asyncio.to_thread(scrape, port)
        sampler.start()
        probe = asyncio.create_task(_probe(client, prod, names.engagement, probe_room, stop, probe_samples))
        produced = 0
        carry = 0.0
        t0 = time.monotonic()
        ticks = int(opts.duration_s / opts.tick_s)
        late_ticks = 0
        for i in range(ticks):
            delay = t0 + i * opts.tick_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -opts.tick_s:
                late_ticks += 1
            carry += opts.rate * opts.tick_s
            count, carry = int(carry), carry - int(carry)
            ts = now_ms()
            per_room, extra = divmod(count, len(rooms))
            for j, room in enumerate(rooms):
                k = per_room + (1 if j < extra else 0)
                if k:
                    await pending.send(names.engagement, gen.batch(room, k, ts), key=room.encode())
            produced += count
            if i % 10 == 9:
                sampler.sample()
                await pending.flush()
        await pending.flush()
        send_s = time.monotonic() - t0
        stop.set()
        await probe
        drain_started = time.monotonic()
        done = await applied(client, rooms)
        while done < produced and time.monotonic() - drain_started < opts.drain_timeout_s:
            await asyncio.sleep(0.05)
            done = await applied(client, rooms)
        drain_s = time.monotonic() - drain_started
        procs = sampler.stop()
        hist1 = await asyncio.to_thread(scrape, port)
        memory = await room_memory(client, rooms[0], opts.rate / opts.rooms)
    finally:
        stop.set()
        await prod.stop()
        await client.aclose()
    log(f"  fixed rate {opts.rate:.0f}/s: applied {done}/{produced} events, drain {drain_s:.2f}s after send")
    return {
        "target_rate": opts.rate,
        "duration_s": opts.duration_s,
        "rooms": opts.rooms,
        "produced": produced,
        "applied": done,
        "send_s": round(send_s, 2),
        "achieved_send_rate": round(produced / send_s, 1),
        "applied_rate": round(done / (send_s + drain_s), 1),
        "drain_after_send_s": round(drain_s, 2),
        "late_ticks": late_ticks,
        "kept_up": done >= produced and drain_s < 2.0,
        "latency_ms": {
            "p50": hist_quantile(hist0, hist1, 0.50),
            "p99": hist_quantile(hist0, hist1, 0.99),
            "observations": int(hist1.get(float("inf"), 0) - hist0.get(float("inf"), 0)),
        },
        "probe_latency_ms": {
            "p50": percentile(probe_samples, 0.5),
            "p99": percentile(probe_samples, 0.99),
            "max": round(max(probe_samples), 1) if probe_samples else None,
            "samples": len(probe_samples),
        },
        "memory": memory,
        "processes": procs,
    }


async def room_memory(
    client: aioredis.Redis, room: str, rate_per_room: float, dedupe_window_s: float = 600.0
) -> dict[str, Any]:
    """MEMORY USAGE of every key of ``room`` by family; the dedupe sets' steady state extrapolated."""
    families: dict[str, int] = {}
    dedupe_members = 0
    intset_bytes = intset_members = 0
    async for key in client.scan_iter(match=f"*{{r:{room}}}*", count=1000):
        k = key.decode()
        fam = (
            "dedupe sets"
            if ":dd:" in k
            else "funnel minute HLLs"
            if ":uw:" in k
            else "funnel HLLs"
            if ":u:" in k
            else "per-second series"
            if k.endswith(":sec")
            else "online viewers"
            if k.endswith(":on")
            else "other"
        )
        size = int(await client.memory_usage(key, samples=0) or 0)
        families[fam] = families.get(fam, 0) + size
        if fam == "dedupe sets":
            members = int(await client.scard(key))
            dedupe_members += members
            if (await client.object("encoding", key)) in (b"intset", "intset"):
                intset_bytes += size
                intset_members += members
    total = sum(families.values())
    per_id = families.get("dedupe sets", 0) / dedupe_members if dedupe_members else 0.0
    # A partition's first 10 s bucket has no history to size its shards from, so it is one big
    # hashtable set; every later bucket is sharded into integer sets: that is the steady state.
    steady_per_id = intset_bytes / intset_members if intset_members else per_id
    steady_dedupe = steady_per_id * rate_per_room * dedupe_window_s
    return {
        "room": room,
        "bytes": total,
        "by_family": families,
        "dedupe_ids_held": dedupe_members,
        "rate_per_room": rate_per_room,
        "bytes_per_dedupe_id": round(per_id, 1),
        "bytes_per_dedupe_id_sharded": round(steady_per_id, 1),
        "steady_state_bytes": int(total - families.get("dedupe sets", 0) + steady_dedupe),
        "steady_state_assumes": f"{rate_per_room:.0f} events/s in the room, {dedupe_window_s:.0f} s dedupe window",
    }


async def _steady_memory(stack: BenchStack, rate: int, minutes: int, log: Log) -> dict[str, Any]:
    """Memory of one room once every window is full: ``minutes`` of event time at ``rate`` events/s
    applied straight through the counters' service (no broker: this measures Redis, not speed)."""
    from streams.counters.params import CounterParams
    from streams.counters.service import CountersService
    from streams.counters.store import CountersStore
    from streams.emit import Record
    from streams.metrics import WorkerMetrics

    client = aioredis.Redis.from_url(stack.redis_url)
    room = f"mbsteady{int(time.time())}"
    params = CounterParams()
    metrics = WorkerMetrics()

    async def no_send(topic: str, key: bytes, value: bytes) -> Any:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    svc = CountersService(CountersStore(client, params, metrics), params, metrics, no_send, "engagement")
    gen = Generator([room], 5_000, seed=3)
    t0 = now_ms() - minutes * 60_000
    try:
        for sec in range(minutes * 60):
            await svc.handle([Record("engagement", 0, sec, gen.batch(room, rate, t0 + sec * 1000))])
        memory = await room_memory(client, room, rate, params.dedupe_ms / 1000)
    finally:
        await client.aclose()
    log(f"  steady state: {memory['bytes'] / 1e6:.1f} MB for one room at {rate}/s after {minutes} min")
    memory["event_minutes"] = minutes
    return memory


async def _publish_backlog(stack: BenchStack, opts: Options) -> list[str]:
    names = TopicNames(stack.prefix)
    rooms = [f"mb{stack.prefix.rstrip('.')}-{i}" for i in range(opts.rooms)]
    gen = Generator(rooms, opts.users_per_room, seed=2)
    prod = producer(stack.bootstrap, linger_ms=5, max_request_size=4 << 20)
    await prod.start()
    try:
        pending = Pending(prod, limit=200)
        per_record = 500
        left = opts.backlog
        i = 0
        while left > 0:
            k = min(per_record, left)
            room = rooms[i % len(rooms)]
            await pending.send(names.engagement, gen.batch(room, k, now_ms()), key=room.encode())
            left -= k
            i += 1
        await pending.flush()
    finally:
        await prod.stop()
    return rooms


async def _drain(stack: BenchStack, rooms: list[str], total: int, timeout: float) -> dict[str, Any]:
    client = aioredis.Redis.from_url(stack.redis_url)
    sampler = ProcSampler({"worker": stack.procs["metrics-drain"].pid, **stack.pids("broker", "redis")})
    sampler.start()
    try:
        deadline = time.monotonic() + timeout
        first = last = 0.0
        done = 0
        while done < total and time.monotonic() < deadline:
            done = await applied(client, rooms)
            if done and not first:
                first = time.monotonic()
            last = time.monotonic()
            sampler.sample()
            await asyncio.sleep(0.05)
        procs = sampler.stop()
    finally:
        await client.aclose()
    span = max(1e-9, last - first)
    return {
        "events": total,
        "applied": done,
        "drain_s": round(span, 2),
        "events_per_s": round(done / span, 1),
        "processes": procs,
    }


def _summary(
    runs: list[dict[str, Any]], drain: dict[str, Any] | None, steady: dict[str, Any]
) -> list[tuple[str, str, str]]:
    rows = []
    for fixed in runs:
        lat, probe = fixed["latency_ms"], fixed["probe_latency_ms"]
        kept = "kept up" if fixed["kept_up"] else f"fell behind: drained {fixed['drain_after_send_s']} s after send"
        rows += [
            (
                f"counters ({fixed['profile']}): engagement events at {fixed['target_rate']:.0f}/s",
                f"{fixed['applied_rate']:.0f} /s",
                kept,
            ),
            (
                f"counters ({fixed['profile']}) @ {fixed['target_rate']:.0f}/s: p99 event→Redis, worker histogram",
                f"{lat['p99']} ms",
                f"p50 {lat['p50']} ms; target <= {TARGET_P99_MS:.0f}",
            ),
            (
                f"counters ({fixed['profile']}) @ {fixed['target_rate']:.0f}/s: p99 event→Redis, outside probe",
                f"{probe['p99']} ms",
                f"p50 {probe['p50']} ms",
            ),
        ]
    rows.append(
        (
            "counters: Redis memory per room, windows full",
            f"{steady['bytes'] / 1e6:.1f} MB",
            f"{steady['rate_per_room']:.0f} events/s, {steady['event_minutes']} min of event time; "
            f"{steady['by_family'].get('dedupe sets', 0) / 1e6:.1f} MB of it dedupe sets",
        )
    )
    if drain:
        cpu = drain["processes"]["worker"]["cpu_percent"]
        rows.append(("counters: backlog drain (ceiling)", f"{drain['events_per_s']:.0f} /s", f"worker {cpu}% CPU"))
    return rows


def _markdown(runs: list[dict[str, Any]], drain: dict[str, Any] | None, steady: dict[str, Any]) -> str:
    mem = runs[0]["memory"]
    lines = [
        "## Counters: engagement events",
        "",
        f"{runs[0]['rooms']} rooms, viewer/cart mix, one batched record per room every "
        f"{runs[0]['tick_s'] * 1000:.0f} ms; a counters-only worker. Latency: event time (when the generator built "
        "the record) to the end of the Lua call that applied it, from the worker's histogram (interpolated "
        "inside its bucket) and from an outside probe (one event every 100 ms, Redis polled every 2 ms).",
        "",
        *table(
            (
                "worker settings",
                "target/s",
                "sent/s",
                "applied/s",
                "drained after send",
                "p50 ms",
                "p99 ms (histogram)",
                "p99 ms (probe)",
                "worker CPU %",
                "broker CPU %",
                "redis CPU %",
                "generator CPU %",
            ),
            [
                (
                    f"{f['profile']} {f['settings'] or ''}",
                    f"{f['target_rate']:.0f}",
                    f"{f['achieved_send_rate']:.0f}",
                    f"{f['applied_rate']:.0f}",
                    f"{f['drain_after_send_s']} s",
                    f["latency_ms"]["p50"],
                    f["latency_ms"]["p99"],
                    f["probe_latency_ms"]["p99"],
                    p["worker"]["cpu_percent"],
                    p["broker"]["cpu_percent"],
                    p["redis"]["cpu_percent"],
                    p["load generator"]["cpu_percent"],
                )
                for f in runs
                for p in (f["processes"],)
            ],
            "l" + "r" * 11,
        ),
    ]
    lines += [
        "",
        f"Memory of one room after the run: {mem['bytes']:,} bytes: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(mem["by_family"].items()))
        + ". "
        f"The dedupe sets hold every event id of the dedupe window ({mem['bytes_per_dedupe_id_sharded']} bytes per "
        f"id in the sharded integer sets, {mem['bytes_per_dedupe_id']} over all, first bucket included); "
        f"steady state at {mem['steady_state_assumes']}: ~{mem['steady_state_bytes']:,} bytes.",
        "",
        f"Measured steady state (one room, {steady['rate_per_room']:.0f} events/s for {steady['event_minutes']} "
        f"minutes of event time, applied without the broker, so every window and the dedupe horizon are full): "
        f"{steady['bytes']:,} bytes: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(steady["by_family"].items()))
        + f" ({steady['bytes_per_dedupe_id_sharded']} bytes per dedupe id).",
    ]
    if drain:
        d = drain["processes"]
        lines += [
            "",
            f"Backlog drain: {drain['applied']:,} events in {drain['drain_s']} s = "
            f"{drain['events_per_s']:,.0f} events/s (worker {d['worker']['cpu_percent']}% CPU, "
            f"redis {d['redis']['cpu_percent']}%, broker {d['broker']['cpu_percent']}%).",
        ]
    return "\n".join(lines)


def _profile_run(stack: BenchStack, o: Options, profile: str, extra: dict[str, str], log: Log) -> dict[str, Any]:
    """One fixed-rate run on a fresh worker started with ``extra`` settings."""
    log(f"metrics ({profile}): {o.rate:.0f} events/s for {o.duration_s:.0f}s over {o.rooms} rooms")
    stack.new_prefix("mbench")
    port = stack.start_worker("metrics-worker", env={"FLASHSALE_AGENTS": "counters", **extra})
    try:
        fixed = asyncio.run(_fixed_rate(stack, o, port, log, "metrics-worker"))
    finally:
        stack.stop("metrics-worker")
    fixed.update(profile=profile, settings=" ".join(f"{k}={v}" for k, v in extra.items()), tick_s=o.tick_s)
    return fixed


def bench(stack: BenchStack, opts: dict[str, Any], log: Log) -> dict[str, Any]:
    """Entry point of ``python -m bench metrics`` (bench.report): runs on the given stack. ``opts`` may carry
    rate, duration_s, rooms, users_per_room, tick_s, backlog, drain_timeout_s (``metrics_<name>`` wins)."""
    o = options_from(Options, opts, "metrics")
    runs = [_profile_run(stack, o, profile, extra, log) for profile, extra in PROFILES]
    runs += [_profile_run(stack, replace(o, rate=rate), *PROFILES[0], log) for rate in KNEE_RATES if rate < o.rate]
    per_room = int(min(o.rate / o.rooms, STEADY_RATE_PER_ROOM))
    log(f"metrics: Redis memory of one room at {per_room} events/s, windows full")
    steady = asyncio.run(_steady_memory(stack, per_room, 12, log))
    drain = None
    if o.backlog > 0:
        log(f"metrics: backlog of {o.backlog} events")
        stack.new_prefix("mdrain")
        rooms = asyncio.run(_publish_backlog(stack, o))
        stack.start_worker("metrics-drain", env={"FLASHSALE_AGENTS": "counters"})
        try:
            drain = asyncio.run(_drain(stack, rooms, o.backlog, o.drain_timeout_s * 3))
        finally:
            stack.stop("metrics-drain")
    return {
        "name": "metrics",
        "params": asdict(o),
        "fixed_rate": runs,
        "backlog": drain,
        "steady_memory": steady,
        "summary": _summary(runs, drain, steady),
        "markdown": _markdown(runs, drain, steady),
    }
