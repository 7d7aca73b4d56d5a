"""Pass criteria of the fault suite: exact recounts against the ledger of what was published,
the audit, dead letters by reason, room counters, health; and the takeover measurements."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from flashsale.audit import audit
from schemas import keys
from schemas.codec import DEFAULT_MAX_RECORD_BYTES
from schemas.events import OrderPlaced, make_event
from schemas.order_record import OrderRecord, parse_order_record
from tests.faults.traffic import PRICE, ROOM_FIELDS, Ledger, SaleSpec, Traffic, now_ms


@dataclass(frozen=True)
class Item:
    partition: int
    offset: int
    timestamp: int  # the record's timestamp (producer time, epoch ms)
    value: dict[str, Any]


class TopicTail:
    """Reads a topic from the beginning (all partitions, no group) and keeps up with it."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.items: list[Item] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicTail:
        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100,
                             auto_offset_reset="earliest", max_partition_fetch_bytes=8_388_608)
        await c.start()
        self._consumer = c
        parts = None
        deadline = time.monotonic() + 10
        while not parts and time.monotonic() < deadline:
            parts = c.partitions_for_topic(self.topic)
            if not parts:
                await c._client.force_metadata_update()  # noqa: SLF001 - the topic may be new
                await asyncio.sleep(0.1)
        assert parts, f"topic {self.topic} not found"
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> int:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=50_000)
        n = 0
        for msgs in batch.values():
            for m in msgs:
                obj = orjson.loads(m.value)
                for v in obj if isinstance(obj, list) else [obj]:
                    self.items.append(Item(m.partition, m.offset, m.timestamp, v))
                    n += 1
        return n

    async def until(self, done: Callable[[list[Item]], bool], timeout: float) -> bool:
        """Poll until ``done(items)`` or the timeout; returns whether done."""
        deadline = time.monotonic() + timeout
        while True:
            if done(self.items):
                return True
            if time.monotonic() > deadline:
                return False
            await self.poll()

    async def drain(self, idle_s: float = 1.0, timeout: float = 30.0) -> None:
        """Read until nothing new arrived for ``idle_s`` (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < idle_s:
            if await self.poll():
                quiet_since = time.monotonic()


def answered(items: list[Item]) -> set[tuple[str, str]]:
    return {(i.value["data"]["sale_id"], i.value["data"]["order_id"]) for i in items
            if i.value["type"] == "order.accepted"
            or (i.value["type"] == "order.rejected" and i.value["data"]["reason"] != "duplicate")}


async def sale_hash(client: aioredis.Redis, sale_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await client.hgetall(keys.sale(sale_id))).items()}


async def order_records(client: aioredis.Redis, sale_id: str) -> dict[str, OrderRecord]:
    return {k.decode(): parse_order_record(v) for k, v in (await client.hgetall(keys.sale_orders(sale_id))).items()}


# --- the pass criteria ------------------------------------------------------------------------


def check_decisions(ledger: Ledger, decisions: list[Item]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every decidable attempt answered, nothing else answered; an accepted order always carries
    the same data (re-emitted decisions are identical); no order both accepted and rejected.
    Returns the accepted decisions by (sale, order)."""
    got = {k for k in answered(decisions) if k[0] not in ledger.probe_sales}
    missing = set(ledger.attempts) - got
    extra = got - set(ledger.attempts)
    assert not missing, f"{len(missing)} attempts never answered, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} answers for orders never attempted, e.g. {sorted(extra)[:5]}"
    accepted: dict[tuple[str, str], set[bytes]] = defaultdict(set)
    rejected: set[tuple[str, str]] = set()
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for i in decisions:
        v = i.value
        key = (v["data"].get("sale_id"), v["data"].get("order_id"))
        if key[0] in ledger.probe_sales:
            continue
        if v["type"] == "order.accepted":
            accepted[key].add(orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
            first.setdefault(key, v)
        elif v["type"] == "order.rejected" and v["data"]["reason"] != "duplicate":
            rejected.add(key)
    twice = [k for k, bodies in accepted.items() if len(bodies) > 1]
    assert not twice, f"{len(twice)} orders accepted twice with different data, e.g. {twice[:3]}"
    both = set(accepted) & rejected
    assert not both, f"{len(both)} orders both accepted and rejected, e.g. {sorted(both)[:3]}"
    return first


async def check_stock(client: aioredis.Redis, ledger: Ledger, sales: list[SaleSpec],
                      accepted: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per sale: the stock equation, 0 oversold, attempts and accepted counted exactly once, the
    order records agree with the decisions log and with the stock, per-user limits held."""
    out = {}
    for sale in sales:
        if sale.probe:
            continue
        st = await sale_hash(client, sale.sale_id)
        n = {k: int(st.get(k, "0")) for k in ("allotted", "available", "reserved", "sold", "refunded", "attempts",
                                               "accepted", "expired", "cancelled", "per_user_limit")}
        sid = sale.sale_id
        assert n["allotted"] == sale.allotment, (sid, n)
        assert n["allotted"] == n["available"] + n["reserved"] + n["sold"] + n["refunded"], (sid, n)
        assert n["available"] >= 0 and n["sold"] <= n["allotted"], f"{sid} oversold: {n}"
        mine = ledger.attempts_of(sid)
        assert n["attempts"] == len(mine), f"{sid}: attempts counter {n['attempts']} != distinct attempts {len(mine)}"
        acc = {o: v for (s, o), v in accepted.items() if s == sid}
        assert n["accepted"] == len(acc), f"{sid}: accepted counter {n['accepted']} != accepted in the log {len(acc)}"
        records = await order_records(client, sid)
        assert set(records) == mine, f"{sid}: order records != attempts ({len(records)} vs {len(mine)})"
        held: Counter[str] = Counter()
        units: Counter[str] = Counter()
        for order_id, r in records.items():
            if not r.accepted:
                assert order_id not in acc, f"{sid}/{order_id} rejected in Redis, accepted in the log"
                continue
            assert order_id in acc, f"{sid}/{order_id} accepted in Redis ({r.state}), not in the log"
            assert r.qty == acc[order_id]["data"]["qty"] and r.user_id == acc[order_id]["user_id"]
            units[r.state] += r.qty
            if r.holds_units:
                held[r.user_id] += r.qty
        assert units["reserved"] == n["reserved"] and units["sold"] == n["sold"], (sid, dict(units), n)
        assert not [u for u, q in held.items() if q > n["per_user_limit"]], f"{sid}: a user over the limit"
        out[sid] = n
    return out


async def check_audit(bootstrap: str, redis_url: str, prefix: str, ledger: Ledger,
                      max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
    """``flashsale audit`` over the whole log (orders, decisions, dead letters) finds no problem.
    Attempts the workers dead-lettered (handler fault, record over the size limit) were never
    applied; the audit reads the dead-letter topic and the size limit, so it must not call them lost."""
    results = await audit(bootstrap, redis_url, prefix, max_record_bytes=max_record_bytes)
    problems = {r.sale_id: r.problems for r in results if r.problems}
    assert not problems, f"audit: {problems}"
    assert {r.sale_id for r in results} >= {s for s, _ in ledger.attempts}


async def check_dead_letters(bootstrap: str, topic: str, ledger: Ledger, timeout: float = 60.0) -> dict[str, Any]:
    """Every bad item is in the dead-letter topic with its reason: distinct dead letters (by
    source topic/partition/offset/index) per (topic, reason) equal what was injected. Re-sends of
    the same dead letter after a crash (at least once) are counted apart."""
    expected = sum(ledger.bad.values())

    def distinct(items: list[Item]) -> set[tuple[Any, ...]]:
        # The reason is part of the identity: a handler_error's index counts the record's valid
        # events only, so it can equal the index of a bad item of the same record.
        return {(i.value["topic"], i.value["partition"], i.value["offset"], i.value["index"], i.value["reason"])
                for i in items}

    async with TopicTail(bootstrap, topic) as tail:
        await tail.until(lambda xs: len(distinct(xs)) >= expected, timeout)
        await tail.drain(idle_s=0.5, timeout=5)
        got = distinct(tail.items)
        by_reason = Counter((t, reason) for (t, _, _, _, reason) in got)
        assert by_reason == ledger.bad, f"dead letters {dict(by_reason)} != injected {dict(ledger.bad)}"
        return {"dead_letters": len(tail.items), "distinct": len(got),
                "by_reason": {f"{t}/{r}": n for (t, r), n in sorted(by_reason.items())}}


async def check_counters(client: aioredis.Redis, ledger: Ledger, timeout: float = 60.0,
                         fields: tuple[str, ...] = ROOM_FIELDS) -> dict[str, int]:
    """Every valid engagement event and order attempt reflected in its room's totals exactly once."""

    async def actual() -> dict[str, dict[str, int]]:
        out = {}
        for room in ledger.rooms:
            raw = await client.hmget(keys.room_base(room), list(fields))
            out[room] = {f: int(v or 0) for f, v in zip(fields, raw, strict=True)}
        return out

    want = {room: {f: c[f] for f in fields} for room, c in ledger.rooms.items()}
    deadline = time.monotonic() + timeout
    got = await actual()
    while got != want and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        got = await actual()
    diffs = {room: {f: (got[room][f], want[room][f]) for f in fields if got[room][f] != want[room][f]}
             for room in want if got[room] != want[room]}
    assert not diffs, f"room counters (redis, published) differ: {diffs}"
    return {f: sum(w[f] for w in want.values()) for f in fields}


async def probe(traffic: Traffic, client: aioredis.Redis, sales: list[SaleSpec], tag: str,
                timeout: float = 60.0) -> float:
    """A fresh order on every partition's probe sale is decided; returns the seconds it took."""
    probes = [s for s in sales if s.probe]
    ts = now_ms()
    events = [make_event(OrderPlaced(order_id=f"{tag}-{s.sale_id}", sale_id=s.sale_id, sku=s.sku, qty=1,
                                     unit_price=PRICE), event_id=f"e-{tag}-{s.sale_id}", ts=ts, room_id=s.room_id,
                         user_id=f"probe-{tag}", channel="live_room") for s in probes]
    started = time.monotonic()
    await traffic.send_events(events)
    deadline = started + timeout
    pending = {s.sale_id: f"{tag}-{s.sale_id}" for s in probes}
    while pending and time.monotonic() < deadline:
        for sale_id, order_id in list(pending.items()):
            if await client.hexists(keys.sale_orders(sale_id), order_id):
                del pending[sale_id]
        if pending:
            await asyncio.sleep(0.1)
    assert not pending, f"fresh orders not decided within {timeout}s: {pending}"
    return time.monotonic() - started


# --- measurements -------------------------------------------------------------------------------


def first_decision_after(items: list[Item], partitions: set[int], at_ms: int) -> int | None:
    """Timestamp of the first decision record written to ``partitions`` after ``at_ms``."""
    ts = [i.timestamp for i in items if i.partition in partitions and i.timestamp > at_ms]
    return min(ts) if ts else None


def longest_pause(items: list[Item], start_ms: int, end_ms: int, partitions: set[int] | None = None) -> int:
    """Longest time (ms) without any decision record in [start_ms, end_ms] (on ``partitions``)."""
    ts = sorted({i.timestamp for i in items if start_ms <= i.timestamp <= end_ms
                 and (partitions is None or i.partition in partitions)})
    points = [start_ms, *ts, end_ms]
    return max(b - a for a, b in zip(points, points[1:], strict=False))


def record(artifacts: Path, entry: dict[str, Any]) -> None:
    """Append a measurement to test-artifacts/faults.jsonl (docs/RELIABILITY.md quotes these)."""
    with open(artifacts / "faults.jsonl", "a") as f:
        f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **entry}) + "\n")


async def read_raw(bootstrap: str, topic: str, timeout: float = 60.0) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` now, as (key, value), partition by partition in offset order.
    Tansu's end offsets are a floor (the last batch's base offset + 1), so this reads past them
    until the topic stays quiet."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100,
                         max_partition_fetch_bytes=8_388_608)
    await c.start()
    got: dict[int, dict[int, tuple[bytes | None, bytes]]] = defaultdict(dict)
    try:
        parts = c.partitions_for_topic(topic)
        if not parts:
            await c._client.force_metadata_update()  # noqa: SLF001
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        ends = await c.end_offsets(tps)
        await c.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 3 or any([await c.position(tp) < ends[tp] for tp in tps]):
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout}s"
            batch = await c.getmany(timeout_ms=300, max_records=50_000)
            quiet = 0 if batch else quiet + 1
            for tp, msgs in batch.items():
                got[tp.partition].update((m.offset, (m.key, m.value)) for m in msgs)
    finally:
        await c.stop()
    return [got[p][o] for p in sorted(got) for o in sorted(got[p])]


class InvariantSampler:
    """Samples every sale's stock equation in the background while a fault runs: at each moment
    ``allotted = available + reserved + sold + refunded``, nothing negative, ``sold <= allotted`` (one HMGET
    pipeline per sample, so each sale is read as one script left it). ``client`` is a Redis client
    or a callable returning the one to read now (the primary, in a failover). Samples that fail
    because Redis is unreachable are counted apart, not as violations."""

    FIELDS = ("allotted", "available", "reserved", "sold", "refunded")

    def __init__(self, client: aioredis.Redis | Callable[[], aioredis.Redis], sales: list[SaleSpec],
                 interval_s: float = 0.2) -> None:
        self._client = client
        self.sales = [s for s in sales if not s.probe]
        self.interval_s = interval_s
        self.samples = 0  # moments sampled (every sale read)
        self.unreachable = 0
        self.violations: list[tuple[float, str, dict[str, int]]] = []
        self._task: asyncio.Task[None] | None = None

    def _current(self) -> aioredis.Redis:
        return self._client if isinstance(self._client, aioredis.Redis) else self._client()

    async def sample(self) -> None:
        pipe = self._current().pipeline(transaction=False)
        for s in self.sales:
            pipe.hmget(keys.sale(s.sale_id), list(self.FIELDS))
        rows = await pipe.execute()
        at = time.time()
        for s, row in zip(self.sales, rows, strict=True):
            if row[0] is None:
                continue  # not opened yet
            n = {f: int(v or 0) for f, v in zip(self.FIELDS, row, strict=True)}
            if (n["allotted"] != n["available"] + n["reserved"] + n["sold"] + n["refunded"] or min(n.values()) < 0
                    or n["sold"] > n["allotted"]):
                self.violations.append((at, s.sale_id, n))
        self.samples += 1

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except (OSError, ConnectionError, TimeoutError, aioredis.RedisError):
                self.unreachable += 1
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> InvariantSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def check(self, min_samples: int = 10) -> dict[str, int]:
        """Assert the equation held at every sampled moment; returns the sample counts."""
        assert self.samples >= min_samples, f"only {self.samples} invariant samples ({self.unreachable} unreachable)"
        assert not self.violations, f"stock equation broken at {len(self.violations)} moments: {self.violations[:3]}"
        return {"invariant_samples": self.samples, "invariant_unreachable": self.unreachable}


async def decided(client: aioredis.Redis, sales: list[SaleSpec]) -> int:
    """Attempts decided so far over the sales (the sale hashes' attempt counters, one pipeline)."""
    pipe = client.pipeline(transaction=False)
    for s in sales:
        pipe.hget(keys.sale(s.sale_id), "attempts")
    return sum(int(v or 0) for v in await pipe.execute())


async def resumed_after(client: aioredis.Redis, sales: list[SaleSpec], before: int, since: float,
                        timeout: float = 90.0) -> float:
    """Seconds from ``since`` (time.time()) until more than ``before`` attempts are decided (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await decided(client, sales) > before:
            return time.time() - since
        await asyncio.sleep(0.02)
    raise AssertionError(f"no decision within {timeout}s")
