"""Signed outputs on a real broker, Redis and worker: forged order decisions neither answer an order nor count."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from kernel.signing import HEADER, OutputKeys
from producers.decisions import DecisionWaiter
from producers.sdk import Publisher
from schemas import keys
from schemas.events import Event, OrderAccepted, SaleOpened, make_event
from schemas.topics import DECISIONS
from tests.harness.broker import Broker
from tests.harness.kafka import read_topic
from tests.harness.workers import scrape, start_worker, total

pytestmark = pytest.mark.integration

KEY = "k" * 40
WRONG_KEY = "w" * 40


def forged_accept(order_id: str, user_id: str, event_id: str, now: int) -> Event:
    return make_event(OrderAccepted(order_id=order_id, sale_id="s1", sku="sku-1", qty=1, unit_price=990,
                                    reserved_until=now + 600_000),
                      event_id=event_id, ts=now, room_id="room-1", user_id=user_id)


async def produce(bootstrap: str, topic: str, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await (await producer.send(topic, value, key=b"sku-1", headers=headers))
    finally:
        await producer.stop()


async def wait_for(check: object, what: str, timeout: float = 60.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_forged_acceptances_before_the_real_rejection_neither_answer_nor_count(
        broker: Broker, worker_env: dict[str, str], topics: dict[str, str], topic_prefix: str,
        redis_client: aioredis.Redis, tmp_path: Path) -> None:
    """With FLASHSALE_OUTPUT_SIGNING_KEY set on the worker and the readers: an unsigned order.accepted
    and one signed with another key, both on order-decisions before the worker's sold_out rejection,
    are dropped and counted by the SDK's waiter and by the counters; the worker's signed decisions
    answer the orders and are counted."""
    worker = start_worker({**worker_env, "FLASHSALE_OUTPUT_SIGNING_KEY": KEY}, tmp_path)
    try:
        now = int(time.time() * 1000)
        output_keys = OutputKeys.parse(KEY)
        # no Redis: only what arrives on the topic can answer (the path a forgery would take)
        async with Publisher(broker.bootstrap, topic_prefix=topic_prefix, output_keys=output_keys) as pub:
            await pub.publish(make_event(SaleOpened(sale_id="s1", sku="sku-1", price=990, allotment=1,
                                                    per_user_limit=1, starts_at=now - 1000, ends_at=now + 600_000,
                                                    reservation_ttl_s=600),
                                         event_id="open-s1", ts=now, room_id="room-1", user_id="host"))
            first = await pub.place_order(sale_id="s1", sku="sku-1", user_id="u1", room_id="room-1", unit_price=990,
                                          order_id="a", timeout=30)
            assert first.accepted  # the worker's own, signed decision answers

            waiter = await pub.decision_waiter()
            unsigned = orjson.dumps(forged_accept("b", "u2", "forged-1", now).to_dict())
            wrong = orjson.dumps(forged_accept("b", "u2", "forged-2", now).to_dict())
            wrong_header = OutputKeys.parse(WRONG_KEY)
            assert wrong_header is not None
            await produce(broker.bootstrap, topics[DECISIONS], unsigned, None)
            await produce(broker.bootstrap, topics[DECISIONS], wrong, [wrong_header.header(DECISIONS, wrong)])

            async def waiter_dropped_both() -> bool:
                return waiter.unsigned_dropped == 2

            await wait_for(waiter_dropped_both, "the waiter to read and drop both forgeries")
            second = await pub.place_order(sale_id="s1", sku="sku-1", user_id="u2", room_id="room-1",
                                           unit_price=990, order_id="b", timeout=30)
            assert (second.outcome, second.reason) == ("rejected", "sold_out")

        async def counters_dropped_both() -> bool:
            return total(await scrape(worker.port), "flashsale_unsigned_outputs_dropped_total",
                         topic=DECISIONS) == 2

        await wait_for(counters_dropped_both, "the counters to drop both forgeries")
        # the forgeries came before the worker's decision on b in the same partition: all read by now
        assert int(await redis_client.hget(keys.sale_base("s1"), "accepted") or 0) == 1

        # every record the worker wrote to order-decisions carries a signature of the worker's key
        assert output_keys is not None
        records = await read_topic(broker.bootstrap, topics[DECISIONS], lambda ms: len(ms) >= 4, timeout=30,
                                   raw=True)
        signed = [m for m in records if output_keys.verify(DECISIONS, m.value, m.headers)]
        assert len(signed) == len(records) - 2
        assert all(dict(m.headers)[HEADER].startswith(b"v1:" + output_keys.signing_key_id.encode() + b":")
                   for m in signed)
    finally:
        worker.process.stop()


async def test_a_waiter_with_a_key_ignores_unsigned_decisions_and_one_without_accepts_them(
        broker: Broker, topics: dict[str, str]) -> None:
    now = int(time.time() * 1000)
    value = orjson.dumps(forged_accept("x", "u1", "forged-x", now).to_dict())
    async with DecisionWaiter(broker.bootstrap, topics[DECISIONS], output_keys=OutputKeys.parse(KEY)) as checked, \
            DecisionWaiter(broker.bootstrap, topics[DECISIONS]) as unchecked:
        await produce(broker.bootstrap, topics[DECISIONS], value, None)
        assert await unchecked.wait("s1", "x", 15, user_id="u1") is not None  # as today without a key
        assert await checked.wait("s1", "x", 0.5, user_id="u1") is None
        assert checked.unsigned_dropped == 1
