"""Scale-out test helpers: multi-sale bursts, worker /metrics scraping, stable-assignment waits, checks."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka.partitioner import murmur2

from flashsale.embedded import free_port
from schemas import keys as rk
from schemas.events import Event
from schemas.order_record import parse_order_record
from schemas.topics import TopicNames
from tests.harness.kafka import produce_events, read_topic
from tests.harness.workers import (
    Samples,
    WorkerHandle,
    assigned_partitions,
    scrape,
    start_worker,
    total,
    wait_stable_assignment,
)
from tests.integration.stock.helpers import order, sale_opened

ALLOTMENT = 250
LIMIT = 2


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the Kafka default partitioner (murmur2, as aiokafka and the Java client) picks."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def skus_one_per_partition(partitions: int, prefix: str = "sku-") -> list[str]:
    """One SKU per partition, so that every partition (and so every worker) gets a sale."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions and n < 10_000:
        sku = f"{prefix}{n}"
        found.setdefault(partition_of(sku.encode(), partitions), sku)
        n += 1
    assert len(found) == partitions, "no SKU set covering every partition"
    return [found[p] for p in range(partitions)]


@dataclass
class MultiBurst:
    sales: dict[str, str]  # sale_id → sku
    opens: list[Event] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # order.placed in send order, exact duplicates included
    attempts: set[tuple[str, str]] = field(default_factory=set)  # distinct (sale_id, order_id)
    duplicates: int = 0

    @property
    def all_events(self) -> list[Event]:
        return self.opens + self.events

    def events_per_sku(self) -> Counter[str]:
        return Counter(str(e.data.sku) for e in self.all_events)  # type: ignore[attr-defined]


def multi_burst(sales: dict[str, str], attempts_per_sale: int, now_ms: int, users: int = 4000, seed: int = 11,
                dup_rate: float = 0.05, retry_rate: float = 0.3, big_qty_rate: float = 0.05,
                chunk: int = 250) -> MultiBurst:
    """Attempts on several sales at once, interleaved in chunks: retries (same user, new order id),
    some qty 3 (over the limit of 2) and exact duplicate sends of the same event."""
    rng = random.Random(seed)
    b = MultiBurst(dict(sales))
    per_sale: dict[str, list[Event]] = {}
    for sale_id, sku in sales.items():
        b.opens.append(sale_opened(sale_id=sale_id, sku=sku, allotment=ALLOTMENT, limit=LIMIT, ttl_s=3600,
                                   ts=now_ms, starts=now_ms - 1000, ends=now_ms + 3_600_000,
                                   room=f"room-{sale_id}"))
        seq: list[Event] = []
        recent: list[str] = []
        n = 0
        while n < attempts_per_sale:
            if recent and rng.random() < retry_rate:
                user = rng.choice(recent[-500:])
            else:
                user = f"u{rng.randrange(users)}"
                recent.append(user)
            qty = 3 if rng.random() < big_qty_rate else 1
            ev = order(f"{sale_id}-o{n}", user, now_ms + n // 50, sale_id=sale_id, sku=sku, qty=qty,
                       room=f"room-{sale_id}")
            n += 1
            seq.append(ev)
            b.attempts.add((sale_id, ev.data.order_id))  # type: ignore[attr-defined]
            if rng.random() < dup_rate:
                seq.append(ev)
                b.duplicates += 1
        per_sale[sale_id] = seq
    offsets = dict.fromkeys(per_sale, 0)
    while any(offsets[s] < len(per_sale[s]) for s in per_sale):
        for sale_id, seq in per_sale.items():
            b.events.extend(seq[offsets[sale_id]:offsets[sale_id] + chunk])
            offsets[sale_id] += chunk
    return b


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def answered(items: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["data"]["sale_id"], d["data"]["order_id"]) for d in items
            if d["type"] in ("order.accepted", "order.rejected")}


async def run_burst(bootstrap: str, prefix: str, b: MultiBurst,
                    limit_s: float = 300.0) -> tuple[list[Any], float, float]:
    """Publish the burst and read decisions until every attempt is answered; returns the decisions,
    the seconds from the first publish to the last answer seen and the seconds publishing took
    (measurements, never asserted)."""
    names = TopicNames(prefix)
    started = time.monotonic()
    finished: list[float] = []

    def done(xs: list[dict[str, Any]]) -> bool:
        if answered(xs) >= b.attempts:
            finished.append(time.monotonic())
            return True
        return False

    reader = asyncio.create_task(read_topic(bootstrap, names.decisions, done, timeout=limit_s))
    try:
        await produce_events(bootstrap, prefix, b.all_events)
        published = time.monotonic() - started
        decisions = await reader
    finally:
        if not reader.done():
            reader.cancel()
    return decisions, (finished[0] - started) if finished else float("nan"), published


# --- worker logs ------------------------------------------------------------------------------------

_LINE = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]? (.*)$")


def rebalance_window(logs: Sequence[Path], since: float) -> float | None:
    """Seconds from the first revocation of held partitions to the last 'assigned N pipeline
    partitions' line, over the workers' logs, after ``since`` (epoch s): the time the group was
    not processing the moved partitions. None if the logs show no such rebalance."""
    revoked: list[float] = []
    assigned: list[float] = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            m = _LINE.match(line)
            if not m:
                continue
            ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if ts < since:
                continue
            text = m.group(2)
            if "Revoking previously assigned partitions" in text and "set()" not in text:
                revoked.append(ts)
            elif re.search(r"assigned \d+ pipeline partitions", text):
                assigned.append(ts)
    if not revoked or not assigned or max(assigned) < min(revoked):
        return None
    return max(assigned) - min(revoked)


def record(artifacts: Path, entry: dict[str, Any]) -> None:
    """Append a measurement to test-artifacts/scaleout.jsonl (docs/SCALE_OUT.md quotes these)."""
    with open(artifacts / "scaleout.jsonl", "a") as f:
        f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **entry}) + "\n")


# --- invariants ------------------------------------------------------------------------------------

StateReader = Callable[[str], Awaitable[dict[str, str]]]
HashReader = Callable[[str], Awaitable[dict[str, str]]]


async def check_sales(b: MultiBurst, decisions: list[dict[str, Any]], sale_state: StateReader,
                      read_hash: HashReader) -> dict[str, dict[str, str]]:
    """0 oversold, exact counters, per-user limits, every attempt answered; returns the sale states."""
    assert answered(decisions) == b.attempts, "every attempt answered, and only those"
    accepted = {(d["data"]["sale_id"], d["data"]["order_id"]): d for d in decisions if d["type"] == "order.accepted"}
    rejected = {(d["data"]["sale_id"], d["data"]["order_id"]): d for d in decisions if d["type"] == "order.rejected"}
    assert not accepted.keys() & rejected.keys(), "no order both accepted and rejected"
    states = {}
    for sale_id in b.sales:
        st = await sale_state(sale_id)
        states[sale_id] = st
        n = {k: int(st.get(k, 0)) for k in ("allotted", "available", "reserved", "sold", "refunded", "attempts",
                                            "accepted", "rej_sold_out", "rej_limit_exceeded", "rej_sale_not_active",
                                     "rej_duplicate", "rej_invalid")}
        mine = {o for s, o in b.attempts if s == sale_id}
        assert n["allotted"] == n["available"] + n["reserved"] + n["sold"] + n["refunded"] == ALLOTMENT, (sale_id, n)
        assert n["available"] == 0, f"{sale_id}: the burst is far larger than the allotment"
        assert n["attempts"] == len(mine), f"{sale_id}: attempts counter = distinct order ids"
        assert n["attempts"] == n["accepted"] + sum(n[k] for k in n if k.startswith("rej_")), (sale_id, n)
        acc = [d for (s, _), d in accepted.items() if s == sale_id]
        assert len(acc) == n["accepted"], f"{sale_id}: accepted decisions = accepted counter"
        units = Counter[str]()
        for d in acc:
            units[d["user_id"]] += d["data"]["qty"]
        assert sum(units.values()) == ALLOTMENT, f"{sale_id}: exactly the allotment accepted, 0 oversold"
        assert max(units.values()) <= LIMIT, f"{sale_id}: per-user limit held in decisions"
        held = {u: int(v) for u, v in (await read_hash(rk.sale_users(sale_id))).items()}
        assert held == dict(units), f"{sale_id}: the users hash holds exactly the accepted units"
        orders = await read_hash(rk.sale_orders(sale_id))
        assert set(orders) == mine, f"{sale_id}: one order record per attempt"
        states_seen = Counter(parse_order_record(v).state for v in orders.values())
        assert states_seen["reserved"] == n["accepted"] and states_seen["rejected"] == len(mine) - n["accepted"]
    return states


def sale_of_partition(b: MultiBurst, partitions: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for sale_id, sku in b.sales.items():
        out[partition_of(sku.encode(), partitions)].append(sale_id)
    return dict(out)


# --- the scenario both tests run -------------------------------------------------------------------


@dataclass
class Outcome:
    assignment: list[set[int]]  # partitions of the orders topic per worker, before the burst
    after: list[set[int]]  # ... and after it
    decisions: list[dict[str, Any]]
    seconds: float  # first publish → last answer
    publish_s: float  # first publish → last publish acknowledged
    samples: list[Samples]  # each worker's /metrics after the burst
    join_s: float | None  # second worker: spawn → stable split seen (includes its start-up)
    rebalance_s: float | None  # from the logs: first revocation → last assignment, as the second worker joined
    records: int


async def burst_with_workers(env: dict[str, str], workers: int, log_dir: Path, bootstrap: str, prefix: str,
                             b: MultiBurst, partitions: int) -> Outcome:
    """Start ``workers`` stock workers in one group, wait for a stable split, run the burst, scrape."""
    orders = TopicNames(prefix).orders
    handles: list[WorkerHandle] = []
    join_s = rebalance_s = None
    try:
        for i in range(workers):
            wenv = {**env, "FLASHSALE_WORKER_PORT": str(free_port()), "FLASHSALE_AGENTS": "stock"}
            spawned_wall, spawned = time.time(), time.monotonic()
            handles.append(await asyncio.to_thread(start_worker, wenv, log_dir, f"worker-{i}", 60.0))
            assignment = await wait_stable_assignment(handles, orders, partitions)
            if i == workers - 1 and i > 0:
                join_s = time.monotonic() - spawned
                rebalance_s = rebalance_window([h.process.log_path for h in handles], spawned_wall)
        decisions, seconds, publish_s = await run_burst(bootstrap, prefix, b)
        samples = [await scrape(h.port) for h in handles]
        after = [await assigned_partitions(h.port, orders) for h in handles]
    finally:
        for h in reversed(handles):
            h.process.stop()
    return Outcome(assignment, after, decisions, seconds, publish_s, samples, join_s, rebalance_s,
                   len(b.all_events))


def measurement(out: Outcome, b: MultiBurst) -> dict[str, Any]:
    return {"attempts": len(b.attempts), "events": out.records, "burst_s": round(out.seconds, 2),
            "publish_s": round(out.publish_s, 2), "split": [sorted(p) for p in out.assignment],
            "join_s": out.join_s and round(out.join_s, 2), "rebalance_s": out.rebalance_s and round(out.rebalance_s, 2)}


def check_ownership(out: Outcome, b: MultiBurst, states: dict[str, dict[str, str]], partitions: int) -> None:
    """Each SKU's partition belongs to exactly one worker, and that worker (alone) consumed the SKU's
    events and made its decisions: per-worker counters equal the sums over the SKUs it owns."""
    assert out.after == out.assignment, f"no rebalance during the burst: {out.assignment} → {out.after}"
    owners = {p: [i for i, parts in enumerate(out.assignment) if p in parts] for p in range(partitions)}
    assert all(len(ws) == 1 for ws in owners.values()), f"one owner per partition: {owners}"
    per_sku = b.events_per_sku()
    for i, samples in enumerate(out.samples):
        owned = [s for s, sku in b.sales.items() if partition_of(sku.encode(), partitions) in out.assignment[i]]
        assert owned, f"worker {i} owns at least one SKU"
        consumed = total(samples, "flashsale_events_consumed_total", topic="orders")
        assert consumed == sum(per_sku[b.sales[s]] for s in owned), f"worker {i} consumed exactly its SKUs' events"
        decided = total(samples, "flashsale_order_decisions_total")
        assert decided == sum(int(states[s]["attempts"]) for s in owned), f"worker {i} decided exactly its SKUs"
        # The reservation sweeper walks only owned sales, so each sale's stock gauges come from one worker.
        gauged = {lab["sale_id"] for n, lab, _ in samples if n == "flashsale_sale_available_units"}
        assert gauged == set(owned), f"worker {i} sweeps and reports exactly its own sales: {gauged} vs {owned}"
