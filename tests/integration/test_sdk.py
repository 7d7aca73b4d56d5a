"""The SDK against a real Tansu broker (and Redis for place_order): what it sends is what lands."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from flashsale.embedded import free_port
from producers.sdk import BatchValidationError, DecisionTimeout, Publisher, PublishError, order_event_id
from schemas import keys
from schemas.codec import decode_record
from schemas.events import CartAdded, Event, OrderPlaced, ValidationError, ViewerLiked, make_event
from schemas.topics import TopicNames, partition_key
from tests.harness.broker import Broker
from tests.harness.kafka import read_topic
from tests.harness.redis_server import RedisServer

pytestmark = pytest.mark.integration
PARTITIONS = 4  # the `topics` fixture creates 4 partitions per topic


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Sum of end offsets per topic: 0 proves nothing was published. (Tansu reports the end of a
    multi-record batch as its base offset + 1, so nonzero values are not record counts.)"""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for topic in topics:
            parts = consumer.partitions_for_topic(topic) or set()
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
            out[topic] = sum(ends.values())
        return out
    finally:
        await consumer.stop()


def expected_partition(key: bytes) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def order(i: int, sku: str = "sku-a", **kw: Any) -> Event:
    return make_event(OrderPlaced(order_id=f"o-{i}", sale_id="sale-1", sku=sku, qty=1, unit_price=990),
                      event_id=f"e-{sku}-{i}", ts=1_700_000_000_000 + i, room_id="room-1", user_id=f"u-{i}", **kw)


def like(i: int, room: str = "room-1") -> Event:
    return make_event(ViewerLiked(count=1), event_id=f"l-{room}-{i}", ts=1_700_000_000_000 + i, room_id=room,
                      user_id=f"u-{i}")


async def test_publish_single_event(broker: Broker, topics: dict[str, str], topic_prefix: str) -> None:
    async with Publisher(broker.bootstrap, topic_prefix=topic_prefix) as pub:
        delivery = await pub.publish(order(1))
    assert delivery.topic == topics["orders"] and delivery.count == 1 and delivery.offset == 0
    assert delivery.partition == expected_partition(b"sku-a")
    [msg] = await read_topic(broker.bootstrap, topics["orders"], lambda items: len(items) >= 1, timeout=10, raw=True)
    assert msg.key == b"sku-a" and msg.partition == delivery.partition
    assert orjson.loads(msg.value) == order(1).to_dict()  # a lone event travels as an object, not an array


async def test_publish_many_batches_per_topic_and_key(broker: Broker, topics: dict[str, str],
                                                      topic_prefix: str) -> None:
    events: list[Event | dict[str, Any]] = []
    for i in range(7):
        events += [order(i, "sku-a"), order(i, "sku-b"), like(i, "room-1")]
    events.append(like(99, "room-2").to_dict())  # plain dicts are accepted too
    async with Publisher(broker.bootstrap, topic_prefix=topic_prefix, max_batch_events=3) as pub:
        deliveries = await pub.publish_many(events)
    # 7 events per (topic, key) in chunks of 3 → 3 records each; room-2 alone → 1
    assert sorted(d.count for d in deliveries) == sorted([1] + [1, 3, 3] * 3)
    assert sum(d.count for d in deliveries) == len(events)

    names = TopicNames(topic_prefix)
    for topic, want in ((names.orders, 14), (names.engagement, 8)):
        msgs = await read_topic(broker.bootstrap, topic, lambda items, w=want: sum(
            len(decode_record(m.value).events) for m in items) >= w, timeout=10, raw=True)
        seen: dict[bytes, list[str]] = {}
        for m in msgs:
            decoded = decode_record(m.value)
            assert decoded.errors == []
            assert m.partition == expected_partition(m.key)
            for e in decoded.events:
                assert partition_key(e) == m.key  # every event of a record shares the record's key
                seen.setdefault(m.key, []).append(e.event_id)
        assert sum(len(v) for v in seen.values()) == want
        if topic == names.orders:  # order within a key is kept
            for sku in (b"sku-a", b"sku-b"):
                assert seen[sku] == [f"e-{sku.decode()}-{i}" for i in range(7)]
    assert len({(d.topic, d.partition, d.offset) for d in deliveries}) == len(deliveries)


async def test_bad_event_in_batch_sends_nothing(broker: Broker, topics: dict[str, str], topic_prefix: str) -> None:
    bad = order(2).to_dict()
    bad["data"]["qty"] = True
    batch: list[Event | dict[str, Any]] = [order(0), like(1), bad, {"type": "nope"}]
    async with Publisher(broker.bootstrap, topic_prefix=topic_prefix) as pub:
        with pytest.raises(BatchValidationError) as info:
            await pub.publish_many(batch)
        with pytest.raises(ValidationError) as single:
            await pub.publish({**order(3).to_dict(), "channel": "tv"})
    err = info.value
    assert isinstance(err, ValidationError)
    assert (err.index, err.field) == (2, "data.qty")
    assert [(e.index, e.field) for e in err.errors] == [(2, "data.qty"), (3, "type")]
    assert "event 2: data.qty" in str(err) and "1 more" in str(err)
    assert single.value.field == "channel"
    assert set((await end_offsets(broker.bootstrap, list(topics.values()))).values()) == {0}


async def test_send_raw_and_gzip(broker: Broker, topics: dict[str, str], topic_prefix: str) -> None:
    async with Publisher(broker.bootstrap, topic_prefix=topic_prefix, compression="gzip", linger_ms=0) as pub:
        raw = await pub.send_raw(topics["orders"], b"not json", key=b"k")
        good = await pub.publish_many([make_event(CartAdded(sku="s", qty=2), event_id="c", ts=1_700_000_000_001,
                                                  room_id="r", user_id="u")])
    assert raw.topic == topics["orders"] and good[0].topic == topics["engagement"]
    [msg] = await read_topic(broker.bootstrap, topics["orders"], lambda items: len(items) >= 1, timeout=10, raw=True)
    assert msg.value == b"not json" and msg.key == b"k"
    [obj] = await read_topic(broker.bootstrap, topics["engagement"], lambda items: len(items) >= 1, timeout=10)
    assert obj["data"] == {"sku": "s", "qty": 2}


async def test_unreachable_broker_names_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    pub = Publisher(address, timeout_s=3)
    with pytest.raises(PublishError, match=address.replace(".", r"\.")):
        await pub.start()
    assert not pub.started
    with pytest.raises(RuntimeError, match="not started"):
        await pub.publish(order(1))
    await pub.close()


async def test_place_order_times_out_without_a_worker(broker: Broker, redis_server: RedisServer,
                                                      topics: dict[str, str], topic_prefix: str,
                                                      redis_client: aioredis.Redis) -> None:
    async with Publisher(broker.bootstrap, topic_prefix=topic_prefix, redis_url=redis_server.url) as pub:
        with pytest.raises(DecisionTimeout) as info:
            await pub.place_order(sale_id="sale-9", sku="sku-9", user_id="u-1", room_id="room-1", unit_price=100,
                                  order_id="ord-1", timeout=0.3)
    assert info.value.order_id == "ord-1"
    [obj] = await read_topic(broker.bootstrap, topics["orders"], lambda items: len(items) >= 1, timeout=10)
    assert obj["type"] == "order.placed" and obj["event_id"] == order_event_id("sale-9", "ord-1")
    assert obj["data"] == {"order_id": "ord-1", "sale_id": "sale-9", "sku": "sku-9", "qty": 1, "unit_price": 100}
    assert obj["channel"] == "live_room"


async def test_place_order_answers_from_redis(broker: Broker, redis_server: RedisServer, topics: dict[str, str],
                                              topic_prefix: str, redis_client: aioredis.Redis) -> None:
    record = {"s": "reserved", "u": "u-1", "q": 2, "p": 100, "d": 1_700_000_300_000, "e": "x", "r": "", "t": 1,
              "k": "sku-9"}
    await redis_client.hset(keys.sale_orders("sale-9"), "ord-2", orjson.dumps(record))
    async with Publisher(broker.bootstrap, topic_prefix=topic_prefix, redis_url=redis_server.url) as pub:
        decision = await pub.place_order(sale_id="sale-9", sku="sku-9", user_id="u-1", room_id="room-1", qty=2,
                                         unit_price=100, order_id="ord-2", timeout=5)
        assert decision.outcome == "accepted" and decision.state == "reserved"
        assert decision.reserved_until == 1_700_000_300_000 and decision.qty == 2
        with pytest.raises(ValidationError):
            await pub.place_order(sale_id="sale-9", sku="sku-9", user_id="u-1", room_id="room-1", qty=0,
                                  unit_price=100, timeout=0.1)


async def test_close_flushes_lingering_records(broker: Broker, topics: dict[str, str], topic_prefix: str) -> None:
    pub = Publisher(broker.bootstrap, topic_prefix=topic_prefix, linger_ms=300)
    await pub.start()
    producer = pub._producer
    assert producer is not None
    # queue without awaiting the ack; close() must still deliver it
    fut = await producer.send(topics["engagement"], orjson.dumps(like(1).to_dict()), key=b"room-1")
    await pub.close()
    assert fut.done() and not fut.exception()
    items = await read_topic(broker.bootstrap, topics["engagement"], lambda items: len(items) >= 1, timeout=10)
    assert [i["event_id"] for i in items] == ["l-room-1-1"]
