"""Decision readers: the Redis order record, and DecisionWaiter on a real order-decisions topic."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis

from producers.decisions import (
    Decision,
    DecisionReader,
    DecisionWaiter,
    decision_from_event,
    decision_from_record,
    read_decision,
)
from producers.sdk import Publisher
from schemas import keys
from schemas.events import Event, OrderAccepted, OrderExpired, OrderRejected, SaleSoldOut, ViewerLiked, make_event
from tests.harness.broker import Broker

TS = 1_700_000_000_000


def accepted(order_id: str, sku: str = "sku-1", sale_id: str = "sale-1") -> Event:
    return make_event(OrderAccepted(order_id=order_id, sale_id=sale_id, sku=sku, qty=2, unit_price=500,
                                    reserved_until=TS + 300_000),
                      event_id=f"dec:{order_id}", ts=TS, room_id="room-1", user_id="u-1")


def rejected(order_id: str, reason: str = "sold_out", sku: str = "sku-1") -> Event:
    return make_event(OrderRejected(order_id=order_id, sale_id="sale-1", sku=sku, qty=1, reason=reason),
                      event_id=f"dec:{order_id}", ts=TS, room_id="room-1", user_id="u-2")


def record(state: str, **kw: object) -> bytes:
    rec = {"s": state, "u": "u-1", "q": 2, "p": 500, "d": TS + 300_000 if state != "rejected" else 0, "e": "ev",
           "r": "", "t": TS, "k": "sku-1"}
    rec.update(kw)
    return orjson.dumps(rec)


# --- pure parsing -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", ["reserved", "sold", "expired", "cancelled"])
def test_accepted_states(state: str) -> None:
    d = decision_from_record("sale-1", "o-1", record(state))
    assert d == Decision("o-1", "sale-1", "accepted", None, state, 2, TS + 300_000)


def test_rejected_record() -> None:
    d = decision_from_record("sale-1", "o-1", record("rejected", r="limit_exceeded", q=3).decode())
    assert d == Decision("o-1", "sale-1", "rejected", "limit_exceeded", "rejected", 3, None)
    assert d is not None and not d.accepted
    assert d.to_dict() == {"order_id": "o-1", "sale_id": "sale-1", "outcome": "rejected",
                           "reason": "limit_exceeded", "state": "rejected", "qty": 3, "reserved_until": None}


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"q": 1}', record("weird"), b'{"s": "reserved", "q": "x"}'])
def test_unreadable_records(raw: bytes) -> None:
    assert decision_from_record("sale-1", "o-1", raw) is None


def test_decision_from_events() -> None:
    a = decision_from_event(accepted("o-1"))
    assert a is not None and (a.outcome, a.state, a.qty, a.reserved_until) == ("accepted", "reserved", 2, TS + 300_000)
    assert a.event == accepted("o-1").to_dict()
    r = decision_from_event(rejected("o-2", "duplicate"))
    assert r is not None and (r.outcome, r.reason, r.reserved_until) == ("rejected", "duplicate", None)
    expired = make_event(OrderExpired(order_id="o-1", sale_id="s", sku="k", qty=1, cause="ttl"), event_id="x",
                         ts=1_700_000_000_001,
                         room_id="r", user_id="u")
    assert decision_from_event(expired) is None


# --- Redis ----------------------------------------------------------------------------------------------------

@pytest.mark.integration
async def test_read_decision_from_redis(redis_client: aioredis.Redis) -> None:
    key = keys.sale_orders("sale-1")
    assert await read_decision(redis_client, "sale-1", "o-1") is None
    await redis_client.hset(key, mapping={"o-1": record("reserved"), "o-2": record("rejected", r="sold_out"),
                                          "o-3": b"garbage"})
    d1 = await read_decision(redis_client, "sale-1", "o-1")
    assert d1 is not None and d1.outcome == "accepted" and d1.state == "reserved"
    d2 = await read_decision(redis_client, "sale-1", "o-2")
    assert d2 is not None and d2.reason == "sold_out"
    assert await read_decision(redis_client, "sale-1", "o-3") is None
    assert await read_decision(redis_client, "sale-2", "o-1") is None


# --- DecisionWaiter on the topic ------------------------------------------------------------------------------

@pytest.mark.integration
async def test_waiter_resolves_single_and_batched_decisions(broker: Broker, topics: dict[str, str],
                                                            topic_prefix: str) -> None:
    async with DecisionWaiter(broker.bootstrap, topics["order-decisions"]) as waiter, \
            Publisher(broker.bootstrap, topic_prefix=topic_prefix) as pub:
        pending = asyncio.gather(waiter.wait("sale-1", "o-1", 10), waiter.wait("sale-1", "o-2", 10),
                                 waiter.wait("sale-1", "o-3", 10))
        await asyncio.sleep(0)  # let the waits register before the decisions can arrive
        await pub.publish(accepted("o-1"))
        sold_out = make_event(SaleSoldOut(sale_id="sale-1", sku="sku-1", sold_out_at=TS, opened_at=TS - 1,
                                          allotted=1), event_id="so", ts=TS, room_id="room-1", user_id="system")
        deliveries = await pub.publish_many([rejected("o-2"), sold_out, rejected("o-3", "limit_exceeded")])
        assert [d.count for d in deliveries] == [3]  # one batched record (all keyed by sku-1)
        d1, d2, d3 = await asyncio.wait_for(pending, 15)
        # read by the light decoder: the decision's fields, not the whole event (Decision.event is None)
        assert d1 is not None and d1.outcome == "accepted"
        assert (d1.qty, d1.reserved_until, d1.user_id) == (2, TS + 300_000, "u-1")
        assert d2 is not None and d2.reason == "sold_out"
        assert d3 is not None and d3.reason == "limit_exceeded"
        # a wait that starts after the decision arrived is answered from memory
        late = await waiter.wait("sale-1", "o-2", 0.01)
        assert late == d2


@pytest.mark.integration
async def test_waiter_starts_at_the_end_and_survives_bad_records(broker: Broker, topics: dict[str, str],
                                                                 topic_prefix: str) -> None:
    async with Publisher(broker.bootstrap, topic_prefix=topic_prefix) as pub:
        await pub.publish(rejected("old", sku="sku-old"))
        async with DecisionWaiter(broker.bootstrap, topics["order-decisions"]) as waiter:
            assert waiter.running
            assert await waiter.wait("sale-1", "old", 0.3) is None  # decided before the waiter started
            await pub.send_raw(topics["order-decisions"], b"garbage", key=b"sku-1")
            await pub.send_raw(topics["order-decisions"], b"[]", key=b"sku-1")
            like = make_event(ViewerLiked(), event_id="l", ts=1_700_000_000_001, room_id="r", user_id="u")
            await pub.send_raw(topics["order-decisions"], orjson.dumps(like.to_dict()), key=b"sku-1")
            await pub.publish(accepted("new"))
            d = await waiter.wait("sale-1", "new", 10)
            assert d is not None and d.outcome == "accepted"
            assert waiter.running
        assert not waiter.running


@pytest.mark.integration
async def test_waiter_falls_back_to_redis(broker: Broker, topics: dict[str, str],
                                          redis_client: aioredis.Redis) -> None:
    async with DecisionWaiter(broker.bootstrap, topics["order-decisions"], redis=redis_client,
                              poll_interval_s=0.05) as waiter:
        assert await waiter.wait("sale-1", "o-9", 0.1) is None

        async def decide_later() -> None:
            await asyncio.sleep(0.2)
            await redis_client.hset(keys.sale_orders("sale-1"), "o-9", record("sold"))

        task = asyncio.create_task(decide_later())
        d = await waiter.wait("sale-1", "o-9", 10)
        await task
        assert d is not None and d.state == "sold" and d.event is None


@pytest.mark.integration
async def test_waiter_on_missing_topic_fails_clearly(broker: Broker) -> None:
    waiter = DecisionWaiter(broker.bootstrap, "no-such-topic-xyz", start_timeout_s=1)
    with pytest.raises(ConnectionError, match="no-such-topic-xyz"):
        await waiter.start()
    await waiter.close()


@pytest.mark.integration
async def test_waiter_keys_by_sale_and_ignores_duplicate_rejections(broker: Broker, topics: dict[str, str],
                                                                   topic_prefix: str) -> None:
    """The same order id in two sales gets each sale's own decision, and the `duplicate` rejection
    of a repeated attempt does not stand in for the order's decision."""
    async with DecisionWaiter(broker.bootstrap, topics["order-decisions"]) as waiter, \
            Publisher(broker.bootstrap, topic_prefix=topic_prefix) as pub:
        pending = asyncio.gather(waiter.wait("sale-1", "o-7", 10), waiter.wait("sale-2", "o-7", 10))
        await asyncio.sleep(0)
        dup = make_event(OrderRejected(order_id="o-7", sale_id="sale-1", sku="sku-1", qty=1, reason="duplicate"),
                         event_id="dup:e-7b", ts=TS, room_id="room-1", user_id="u1")
        other = make_event(OrderRejected(order_id="o-7", sale_id="sale-2", sku="sku-2", qty=1, reason="sold_out"),
                           event_id="dec:o-7:sale-2", ts=TS, room_id="room-1", user_id="u2")
        await pub.publish_many([dup, other, accepted("o-7")])
        in_sale_1, in_sale_2 = await asyncio.wait_for(pending, 15)
        assert in_sale_1 is not None and in_sale_1.outcome == "accepted" and in_sale_1.sale_id == "sale-1"
        assert in_sale_2 is not None and in_sale_2.reason == "sold_out" and in_sale_2.sale_id == "sale-2"
        assert waiter.recent("sale-1", "o-7") == in_sale_1


# --- issue 14: O(1) waits, batched reads, Redis trouble is not an answer -------------------------------------

@pytest.mark.integration
async def test_a_healthy_waiter_reads_redis_only_at_the_deadline(broker: Broker, topics: dict[str, str],
                                                               redis_client: aioredis.Redis) -> None:
    await redis_client.hset(keys.sale_orders("sale-1"), "o-1", record("reserved"))
    async with DecisionWaiter(broker.bootstrap, topics["order-decisions"], redis=redis_client, poll_interval_s=0.05,
                              poll_while_healthy=False) as waiter:
        assert waiter.healthy
        d = await waiter.wait("sale-1", "o-1", 0.4)  # decided only in Redis: found by the last look
        assert d is not None and d.state == "reserved"
        assert waiter.redis_reads == 1  # not one per poll interval


@pytest.mark.integration
async def test_an_unhealthy_waiter_falls_back_to_polling_redis(redis_client: aioredis.Redis) -> None:
    waiter = DecisionWaiter("127.0.0.1:1", "t", redis=redis_client, poll_interval_s=0.05, poll_while_healthy=False)
    assert not waiter.healthy  # not following the topic

    async def decide_later() -> None:
        await asyncio.sleep(0.3)
        await redis_client.hset(keys.sale_orders("sale-1"), "o-2", record("sold"))

    task = asyncio.create_task(decide_later())
    d = await waiter.wait("sale-1", "o-2", 30)
    await task
    assert d is not None and d.state == "sold"
    assert waiter.redis_reads >= 2


@pytest.mark.integration
async def test_redis_failing_during_a_wait_is_not_an_answer() -> None:
    """Regression (issue 14): a Redis error while waiting (refused, pool exhausted) used to end the wait
    as "pending"; the wait goes on and the decision from the topic answers."""
    from flashsale.embedded import free_port

    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        waiter = DecisionWaiter("127.0.0.1:1", "t", redis=dead, poll_interval_s=0.05)
        pending = asyncio.create_task(waiter.wait("sale-1", "o-3", 30, user_id="u-1"))
        for _ in range(500):  # bounded: until the wait has met Redis failing a few times
            if waiter.redis_errors >= 3:
                break
            await asyncio.sleep(0.02)
        assert waiter.redis_errors >= 3 and not pending.done()
        waiter.resolve(Decision("o-3", "sale-1", "accepted", None, "reserved", 2, TS, None, "u-1"))
        d = await pending
        assert d is not None and d.outcome == "accepted"
    finally:
        await dead.aclose()


@pytest.mark.integration
async def test_concurrent_reads_share_one_hmget(redis_client: aioredis.Redis) -> None:
    await redis_client.hset(keys.sale_orders("sale-1"), mapping={f"o-{i}": record("reserved") for i in range(0, 40, 2)})
    await redis_client.hset(keys.sale_orders("sale-2"), "o-0", record("rejected", r="sold_out"))
    reader = DecisionReader(redis_client)
    asks = [("sale-1", f"o-{i}", "u-1") for i in range(40)] + [("sale-1", "o-0", "u-9"), ("sale-2", "o-0", None)]
    got = await asyncio.gather(*(reader.read(s, o, u) for s, o, u in asks))
    assert [g is not None and g.state == "reserved" for g in got[:40]] == [i % 2 == 0 for i in range(40)]
    assert got[40] is not None and got[40].reason == "order_id_taken"  # another user's attempt
    assert got[41] is not None and got[41].reason == "sold_out"
    assert got == [await read_decision(redis_client, s, o, u) for s, o, u in asks]  # what one read each says
    assert reader.commands == 2  # one per sale
    await reader.close()
