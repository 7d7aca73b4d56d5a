"""One event per Kafka record through the coalescing transport (issue 14): real Tansu, real
redis-server, real worker processes running both agents on the orders topic (a commit needs both
agents' acks).

What is checked: every attempt is decided exactly once (re-emissions identical), 0 oversold; the
group's committed offsets, read back from the broker, never run ahead of the work that was done (a
worker SIGKILLed or SIGTERMed mid-drain left every record at or above its committed offset
undecided or decided, and none below undecided) and, once the backlog is done, equal the end of
every partition; what was unacked when a worker died is delivered again and decided.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import keys as rk
from schemas.codec import encode_event
from schemas.events import Event
from schemas.topics import TopicNames, partition_key
from tests.harness.broker import Broker
from tests.harness.kafka import read_topic
from tests.harness.workers import WorkerHandle, scrape, start_worker, total
from tests.integration.stock.helpers import order, sale_opened

pytestmark = pytest.mark.integration

PARTITIONS = 4
SALES = [(f"s{i}", f"sku-{i}") for i in range(6)]  # several partitions carry orders
ALLOTMENT = 300  # per sale, fewer than its attempts: sold out, so an oversell would show


async def produce_singles(bootstrap: str, topic: str, events: list[Event], pace_s: float = 0.0,
                          chunk: int = 1000) -> None:
    """Each event alone in its own Kafka record (what the gateway and plain producers send), in
    order; with ``pace_s`` a chunk of ``chunk`` records every ``pace_s`` seconds."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for i in range(0, len(events), chunk):
            futs = [await producer.send(topic, encode_event(ev), key=partition_key(ev), timestamp_ms=ev.ts)
                    for ev in events[i:i + chunk]]
            await asyncio.gather(*futs)
            if pace_s:
                await asyncio.sleep(pace_s)
    finally:
        await producer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset of every partition of ``topic`` (0 when none), from the broker."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for p in range(PARTITIONS):
            offset = await consumer.committed(TopicPartition(topic, p))
            out[p] = offset or 0
        return out
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Last offset + 1 of every partition, from the records themselves (Tansu's ListOffsets can lag)."""
    records = await read_topic(bootstrap, topic, lambda xs: False, timeout=3, raw=True)
    ends = dict.fromkeys(range(PARTITIONS), 0)
    for m in records:
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
    return ends


def attempts(n: int, t0: int) -> list[Event]:
    """``n`` attempts over the sales, one unit each, users of 2 attempts each (limit 2)."""
    return [order(f"o{i}", f"u{i // 2}", t0 + i // 100, sale_id=SALES[i % len(SALES)][0],
                  sku=SALES[i % len(SALES)][1], price=9900) for i in range(n)]


def openings(now: int) -> list[Event]:
    return [sale_opened(sale_id=s, sku=k, allotment=ALLOTMENT, limit=2, ttl_s=3600, ts=now, starts=now - 1000,
                        ends=now + 3_600_000) for s, k in SALES]


def decisions_by_order(items: list[dict[str, Any]]) -> dict[str, set[bytes]]:
    """Distinct decisions (type and data) per order id."""
    out: dict[str, set[bytes]] = defaultdict(set)
    for d in items:
        if d["type"] in ("order.accepted", "order.rejected"):
            out[d["data"]["order_id"]].add(orjson.dumps([d["type"], d["data"]], option=orjson.OPT_SORT_KEYS))
    return out


async def check_outcome(broker: Broker, names: TopicNames, rc: aioredis.Redis, wanted: set[str]) -> None:
    """Every attempt decided, each exactly one distinct decision, 0 oversold, the stock equation."""
    items = await read_topic(broker.bootstrap, names.decisions, lambda xs: set(decisions_by_order(xs)) >= wanted,
                             timeout=120)
    by_order = decisions_by_order(items)
    assert set(by_order) == wanted, f"{len(wanted - set(by_order))} attempts never decided"
    assert all(len(v) == 1 for v in by_order.values()), "an attempt got two different decisions"
    accepted = Counter(orjson.loads(next(iter(v)))[1]["sale_id"] for v in by_order.values()
                       if orjson.loads(next(iter(v)))[0] == "order.accepted")
    for sale_id, _ in SALES:
        raw: dict[bytes, bytes] = await rc.hgetall(rk.sale(sale_id))  # type: ignore[assignment]
        st = {k.decode(): int(v) for k, v in raw.items() if v.isdigit()}
        assert accepted[sale_id] == ALLOTMENT, f"{sale_id}: {accepted[sale_id]} accepted of {ALLOTMENT} (0 oversold)"
        assert st["allotted"] == st["available"] + st["reserved"] + st["sold"] == ALLOTMENT
        assert st["reserved"] + st["sold"] == ALLOTMENT


async def wait_committed_to_end(broker: Broker, group: str, topic: str, timeout: float = 30) -> dict[int, int]:
    ends = await end_offsets(broker.bootstrap, topic)
    deadline = time.monotonic() + timeout
    committed: dict[int, int] = {}
    while time.monotonic() < deadline:
        committed = await committed_offsets(broker.bootstrap, group, topic)
        if committed == ends:
            return committed
        await asyncio.sleep(0.5)
    raise AssertionError(f"committed offsets {committed} never reached the end of the topic {ends}")


@pytest.mark.parametrize("coalesce", ["1000", "0"])
async def test_one_event_per_record_decided_once_and_committed_to_the_end(
        broker: Broker, worker_env: dict[str, str], topics: dict[str, str], topic_prefix: str,
        redis_client: aioredis.Redis, tmp_path: Path, coalesce: str) -> None:
    names = TopicNames(topic_prefix)
    now = int(time.time() * 1000)
    events = attempts(6000, now)
    await produce_singles(broker.bootstrap, names.orders, openings(now) + events)
    handle = start_worker({**worker_env, "FLASHSALE_COALESCE_RECORDS": coalesce}, tmp_path)
    try:
        await check_outcome(broker, names, redis_client, {e.data.order_id for e in events})  # type: ignore[attr-defined]
        committed = await wait_committed_to_end(broker, worker_env["FLASHSALE_APP_ID"], names.orders)
        assert sum(committed.values()) == len(events) + len(SALES)
        samples = await scrape(handle.port)
        messages = total(samples, "flashsale_consumed_messages_total", agent="stock")
        records = total(samples, "flashsale_consumed_records_total", agent="stock")
        assert records == len(events) + len(SALES), "each record handed to the stock agent once"
        assert total(samples, "flashsale_consumed_records_total", agent="counters_orders") == records
        if coalesce == "0":
            assert messages == records, "coalescing off: one Faust message per record"
        else:
            assert messages < records / 5, f"{messages} messages for {records} records: not coalesced"
    finally:
        handle.process.stop()


def first_undecided(records: list[Any], decided: set[str]) -> dict[int, int]:
    """Per partition, the offset of the first orders record with an undecided attempt (the end when none)."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for m in records:
        last[m.partition] = max(last.get(m.partition, -1), m.offset)
        event = orjson.loads(m.value)
        if event["type"] == "order.placed" and event["data"]["order_id"] not in decided:
            first[m.partition] = min(first.get(m.partition, m.offset), m.offset)
    return {p: first.get(p, end + 1) for p, end in last.items()}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_stopped_mid_drain_commits_only_decided_work_and_redelivers_the_rest(
        broker: Broker, worker_env: dict[str, str], topics: dict[str, str], topic_prefix: str,
        redis_client: aioredis.Redis, tmp_path: Path, sig: int) -> None:
    names = TopicNames(topic_prefix)
    group = worker_env["FLASHSALE_APP_ID"]
    now = int(time.time() * 1000)
    events = attempts(30_000, now)
    wanted = {e.data.order_id for e in events}  # type: ignore[attr-defined]
    await produce_singles(broker.bootstrap, names.orders, openings(now))
    # small batches: many batch cycles (and commits) while the backlog arrives
    env = {**worker_env, "FLASHSALE_BATCH_MAX": "400", "FLASHSALE_COALESCE_RECORDS": "100"}
    handle: WorkerHandle = start_worker(env, tmp_path, name="first")
    producing = asyncio.create_task(produce_singles(broker.bootstrap, names.orders, events, pace_s=0.05))
    try:
        await read_topic(broker.bootstrap, names.decisions, lambda xs: len(decisions_by_order(xs)) >= 2000,
                         timeout=60)
        deadline = time.monotonic() + 20
        while sum((await committed_offsets(broker.bootstrap, group, names.orders)).values()) < 2000:
            assert time.monotonic() < deadline, "the first worker commits nothing"
            await asyncio.sleep(0.2)
        handle.process.stop(timeout=15, sig=sig)  # mid-drain: records keep arriving
        await producing
        # What the broker holds as committed must be work that was done: no record below a partition's
        # committed offset is undecided.
        committed = await committed_offsets(broker.bootstrap, group, names.orders)
        decided = set(decisions_by_order(await read_topic(broker.bootstrap, names.decisions, lambda xs: False,
                                                          timeout=3)))
        assert 0 < len(decided & wanted) < len(wanted), "stopped mid-drain"
        orders = await read_topic(broker.bootstrap, names.orders, lambda xs: False, timeout=3, raw=True)
        frontier = first_undecided(orders, decided)
        for p, offset in committed.items():
            assert offset <= frontier.get(p, 0), (f"partition {p}: committed {offset} beyond the first "
                                                  f"undecided record {frontier.get(p)}")
    finally:
        if not producing.done():
            producing.cancel()
        handle.process.stop()
    # A new worker takes over from the committed offsets: everything is decided, once.
    second = start_worker(env, tmp_path, name="second")
    try:
        await check_outcome(broker, names, redis_client, wanted)
        await wait_committed_to_end(broker, group, names.orders)
    finally:
        second.process.stop()
