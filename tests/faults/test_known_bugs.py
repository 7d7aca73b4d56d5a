"""Minimal reproductions of pipeline bugs the fault suite found; all fixed, kept as regression tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from flashsale.audit import audit
from schemas import keys
from schemas.topics import TopicNames
from tests.faults.checks import TopicTail, order_records
from tests.faults.traffic import PRICE, make_sales
from tests.harness.aof_redis import AofRedis
from tests.harness.broker import Broker
from tests.harness.kafka import produce_events, produce_raw
from tests.harness.worker_group import PARTITIONS, counters_available
from tests.integration.stock.helpers import order

pytestmark = pytest.mark.faults

MARKER = "chaos"


async def _setup(broker: Broker, prefix: str, group_factory: Any) -> Any:
    group = group_factory(FLASHSALE_FAULT_INJECT=MARKER, FLASHSALE_AGENTS="stock")
    await group.start("a")
    sale = make_sales(PARTITIONS, per_partition=1)[0]
    await produce_events(broker.bootstrap, prefix, [sale.opened(int(time.time() * 1000))])
    return sale


# Regression: fixed bug: streams.resilience._per_event dead-letters a failing record with at most one valid
# event as one handler_error and drops the reasons of its other bad items
async def test_bad_items_next_to_a_failing_event_keep_their_reason(broker: Broker, aof_redis: AofRedis,
                                                                   topic_prefix: str, topics: dict[str, str],
                                                                   group_factory: Any) -> None:
    sale = await _setup(broker, topic_prefix, group_factory)
    ts = int(time.time() * 1000)
    faulty = order("o-faulty", "u1", ts, sale_id=sale.sale_id, sku=sale.sku, price=PRICE, room=sale.room_id,
                   event_id=f"e-o-faulty-{MARKER}").to_dict()
    old = {**order("o-v2", "u2", ts, sale_id=sale.sale_id, sku=sale.sku, price=PRICE, room=sale.room_id).to_dict(),
           "v": 2}
    await produce_raw(broker.bootstrap, TopicNames(topic_prefix).orders, [(sale.sku.encode(),
                                                                           orjson.dumps([faulty, old]))])
    async with TopicTail(broker.bootstrap, TopicNames(topic_prefix).dead_letter) as tail:
        await tail.until(lambda xs: len(xs) >= 2, 8)
        await tail.drain(idle_s=1.0, timeout=5)
        reasons = sorted(i.value["reason"] for i in tail.items)
    assert reasons == ["bad_version", "handler_error"]


# Regression: fixed bug: flashsale audit reports attempts that were dead-lettered (handler fault, record over
# FLASHSALE_MAX_RECORD_BYTES) as lost; it does not read the dead-letter topic
async def test_audit_does_not_call_a_dead_lettered_attempt_lost(broker: Broker, aof_redis: AofRedis,
                                                                rc: aioredis.Redis, topic_prefix: str,
                                                                topics: dict[str, str], group_factory: Any) -> None:
    sale = await _setup(broker, topic_prefix, group_factory)
    ts = int(time.time() * 1000)
    await produce_events(broker.bootstrap, topic_prefix, [
        order("o-ok", "u1", ts, sale_id=sale.sale_id, sku=sale.sku, price=PRICE, room=sale.room_id),
        order("o-faulty", "u2", ts, sale_id=sale.sale_id, sku=sale.sku, price=PRICE, room=sale.room_id,
              event_id=f"e-o-faulty-{MARKER}")])
    async with TopicTail(broker.bootstrap, TopicNames(topic_prefix).dead_letter) as tail:
        assert await tail.until(lambda xs: len(xs) >= 1, 20)
        assert tail.items[0].value["reason"] == "handler_error"
    for _ in range(200):  # bounded: 20 s
        if "o-ok" in await order_records(rc, sale.sale_id):
            break
        await asyncio.sleep(0.1)
    results = await audit(broker.bootstrap, aof_redis.url, topic_prefix)
    assert [r.problems for r in results if r.sale_id == sale.sale_id] == [[]]



async def _batch_with_a_faulty_event(broker: Broker, prefix: str, group_factory: Any) -> Any:
    """Both agents on the orders topic; one record [ok-0, faulty, ok-1, ok-2] for one sale."""
    if not counters_available():
        pytest.skip("needs the counters agent")
    group = group_factory(FLASHSALE_FAULT_INJECT=MARKER, FLASHSALE_AGENTS="stock,counters")
    await group.start("a")
    sale = make_sales(PARTITIONS, per_partition=1)[0]
    ts = int(time.time() * 1000)
    await produce_events(broker.bootstrap, prefix, [sale.opened(ts)])
    batch = [order(f"ok-{i}", f"u{i}", ts, sale_id=sale.sale_id, sku=sale.sku, price=PRICE, room=sale.room_id)
             for i in range(3)]
    batch.insert(1, order("faulty", "u9", ts, sale_id=sale.sale_id, sku=sale.sku, price=PRICE, room=sale.room_id,
                          event_id=f"e-faulty-{MARKER}"))
    await produce_raw(broker.bootstrap, TopicNames(prefix).orders,
                      [(sale.sku.encode(), orjson.dumps([e.to_dict() for e in batch]))])
    return sale


async def _both_agents_applied(rc: aioredis.Redis, sale: Any) -> int:
    """Wait (bounded) until the stock core decided the record's three valid attempts and the counters
    counted three orders in the sale's room; returns the room's order count."""
    for _ in range(100):  # bounded: 10 s for the stock core to decide the three valid attempts
        if {"ok-0", "ok-1", "ok-2"} <= set(await order_records(rc, sale.sale_id)):
            break
        await asyncio.sleep(0.1)
    orders = 0
    for _ in range(50):  # and 5 s more for the counters
        orders = int(await rc.hget(keys.room_base(sale.room_id), "orders") or 0)
        if orders >= 3:
            break
        await asyncio.sleep(0.1)
    return orders


# Regression: fixed bug: after a handler fault, streams.resilience._per_event re-runs each event of the record
# as a one-event record at the same offset (index 0); the counters' per-partition position watermark
# (offset*10000+index) then skips every event after the first as a replay: valid events dropped silently
async def test_counters_keep_valid_events_next_to_a_failing_event(broker: Broker, aof_redis: AofRedis,
                                                                  rc: aioredis.Redis, topic_prefix: str,
                                                                  topics: dict[str, str],
                                                                  group_factory: Any) -> None:
    sale = await _batch_with_a_faulty_event(broker, topic_prefix, group_factory)
    assert await _both_agents_applied(rc, sale) == 3, "the three valid attempts of the record are counted in the room"


# Regression: fixed bug: an event whose handler raises is dead-lettered once per agent that consumes its topic
# (stock and counters_orders on orders), although the stock core owns the orders topic's bad input
async def test_a_failing_event_is_dead_lettered_once(broker: Broker, aof_redis: AofRedis, rc: aioredis.Redis,
                                                      topic_prefix: str, topics: dict[str, str],
                                                      group_factory: Any) -> None:
    sale = await _batch_with_a_faulty_event(broker, topic_prefix, group_factory)
    # A barrier instead of a fixed wait: once both agents on the orders topic have applied the
    # record's valid events (the stock core's order records, the counters' room total), each has
    # also finished the faulty one, so a second dead letter would already be on its way.
    await _both_agents_applied(rc, sale)
    async with TopicTail(broker.bootstrap, TopicNames(topic_prefix).dead_letter) as tail:
        await tail.until(lambda xs: len(xs) >= 1, 8)
        await tail.drain(idle_s=1.5, timeout=5)
        assert [i.value["reason"] for i in tail.items] == ["handler_error"]
