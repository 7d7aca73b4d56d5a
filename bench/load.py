"""Open-loop load: order attempts at a fixed rate, and decision latency as seen by a reader."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.stats import now_ms
from schemas.topics import TopicNames

TICK_S = 0.01


def producer(bootstrap: str, linger_ms: int, **options: Any) -> AIOKafkaProducer:
    """The load generators' producer: acks from every replica, 1 MiB batches."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms, max_batch_size=1 << 20, **options
    )


@dataclass
class Pending:
    """Sends without awaiting each ack; ``flush()`` (or reaching ``limit`` unacked sends) awaits them all."""

    producer: AIOKafkaProducer
    limit: int | None = None
    futs: list[asyncio.Future[Any]] = field(default_factory=list)

    async def send(self, topic: str, value: bytes, key: bytes) -> None:
        self.futs.append(await self.producer.send(topic, value, key=key))
        if self.limit is not None and len(self.futs) >= self.limit:
            await self.flush()

    async def flush(self) -> None:
        await asyncio.gather(*self.futs)
        self.futs.clear()


def sale_opened(sale_id: str, sku: str, allotment: int, ts: int) -> bytes:
    return orjson.dumps(
        {
            "type": "sale.opened",
            "v": 1,
            "event_id": f"open-{sale_id}",
            "ts": ts,
            "room_id": "bench-room",
            "user_id": "host",
            "channel": "live_room",
            "data": {
                "sale_id": sale_id,
                "sku": sku,
                "price": 100,
                "allotment": allotment,
                "per_user_limit": 10_000,
                "starts_at": ts - 1000,
                "ends_at": ts + 3_600_000,
                "reservation_ttl_s": 3600,
            },
        }
    )


def attempt(n: int, sale_id: str, sku: str, ts: int, users: int) -> dict[str, object]:
    return {
        "type": "order.placed",
        "v": 1,
        "event_id": f"e{n}",
        "ts": ts,
        "room_id": "bench-room",
        "user_id": f"u{n % users}",
        "channel": "live_room",
        "data": {"order_id": f"o{n}", "sale_id": sale_id, "sku": sku, "qty": 1, "unit_price": 100},
    }


@dataclass
class LatencyMeter:
    """Reads the decisions topic from its end; records event-time → received latency of the first
    decision seen for each order. Later copies (a re-sent attempt or a replay re-emits the same
    decision; delivery is at-least-once) are counted in ``repeated``, not in ``decided``."""

    bootstrap: str
    topic: str
    latencies_ms: list[int] = field(default_factory=list)
    decided: int = 0
    repeated: int = 0
    since_ms: int = 0  # decisions of attempts made before this (a previous step's tail) are ignored
    _seen: set[str] = field(default_factory=set)
    first_ms: int = 0
    last_ms: int = 0
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20)
        await c.start()
        parts = c.partitions_for_topic(self.topic)
        if parts is None:
            await c._client.force_metadata_update()  # noqa: SLF001
            parts = c.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in parts]
        c.assign(tps)
        await c.seek_to_end(*tps)
        for tp in tps:
            await c.position(tp)
        self._consumer = c
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100, max_records=20_000)
            t = now_ms()
            for msgs in batch.values():
                for m in msgs:
                    obj = orjson.loads(m.value)
                    for d in obj if isinstance(obj, list) else [obj]:
                        if d["type"] in ("order.accepted", "order.rejected") and d["ts"] >= self.since_ms:
                            order_id = d["data"]["order_id"]
                            if order_id in self._seen:
                                self.repeated += 1
                                continue
                            self._seen.add(order_id)
                            self.decided += 1
                            self.latencies_ms.append(t - d["ts"])
                            self.first_ms = self.first_ms or t
                            self.last_ms = t

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._consumer:
            await self._consumer.stop()


async def open_sales(bootstrap: str, names: TopicNames, sales: list[tuple[str, str]], allotment: int) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await p.start()
    try:
        ts = now_ms()
        for sale_id, sku in sales:
            await p.send_and_wait(names.orders, sale_opened(sale_id, sku, allotment, ts), key=sku.encode())
    finally:
        await p.stop()


async def drive(
    bootstrap: str,
    names: TopicNames,
    sales: list[tuple[str, str]],
    rate: float,
    duration: float,
    start_n: int = 0,
    users: int = 50_000,
    progress: bool = True,
) -> int:
    """Publish ``rate`` attempts/s for ``duration`` s, one batched record per SKU per 10 ms tick."""
    p = producer(bootstrap, linger_ms=2)
    await p.start()
    pending = Pending(p, limit=2001)
    n = start_n
    try:
        t0 = time.monotonic()
        ticks = int(duration / TICK_S)
        carry = 0.0
        for i in range(ticks):
            target = t0 + i * TICK_S
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            carry += rate * TICK_S
            count, carry = int(carry), carry - int(carry)
            if not count:
                continue
            ts = now_ms()
            per: dict[int, list[dict[str, object]]] = {}
            for k in range(count):
                idx = (n + k) % len(sales)
                per.setdefault(idx, []).append(attempt(n + k, sales[idx][0], sales[idx][1], ts, users))
            n += count
            for idx, evs in per.items():
                await pending.send(names.orders, orjson.dumps(evs), key=sales[idx][1].encode())
        await pending.flush()
    finally:
        await p.stop()
    return n


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The topic's end offset per partition now (where a later read of what follows starts)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic)
        if parts is None:
            await c._client.force_metadata_update()  # noqa: SLF001
            parts = c.partitions_for_topic(topic) or set()
        ends = await c.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: int(off) for tp, off in ends.items()}
    finally:
        await c.stop()


@dataclass
class DecisionTally:
    """Decisions of one sale read from the topic: distinct orders, outcomes, repeats and conflicts."""

    outcomes: dict[str, str] = field(default_factory=dict)  # order_id → first outcome seen
    repeated: int = 0  # the same decision again (at-least-once re-emits)
    conflicting: int = 0  # a second, different decision for an order already decided

    def add(self, order_id: str, outcome: str) -> None:
        first = self.outcomes.get(order_id)
        if first is None:
            self.outcomes[order_id] = outcome
        elif first == outcome:
            self.repeated += 1
        else:
            self.conflicting += 1

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return {"orders": len(self.outcomes), **counts, "repeated": self.repeated, "conflicting": self.conflicting}


async def read_decisions(
    bootstrap: str, topic: str, start: dict[int, int], sale_ids: set[str], idle_s: float = 1.0, timeout_s: float = 60.0
) -> dict[str, DecisionTally]:
    """Every decision for ``sale_ids`` from ``start`` offsets on: read until the end offsets seen at the
    call are reached and nothing new arrived for ``idle_s`` (run it after the load stopped)."""
    tallies = {s: DecisionTally() for s in sale_ids}
    goal = await end_offsets(bootstrap, topic)
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50, max_partition_fetch_bytes=8 << 20
    )
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in goal]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, start.get(tp.partition, 0))
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=100, max_records=20_000)
            if batch:
                last_new = time.monotonic()
            for msgs in batch.values():
                for m in msgs:
                    obj = orjson.loads(m.value)
                    for d in obj if isinstance(obj, list) else [obj]:
                        data = d.get("data") or {}
                        tally = tallies.get(str(data.get("sale_id")))
                        if tally is not None and d["type"] in ("order.accepted", "order.rejected"):
                            tally.add(data["order_id"], d["type"].removeprefix("order."))
            positions = [await c.position(tp) for tp in tps]
            reached = all(pos >= goal[tp.partition] for pos, tp in zip(positions, tps, strict=True))
            if reached and time.monotonic() - last_new >= idle_s:
                break
    finally:
        await c.stop()
    return tallies
