"""Counters exactly once by construction (issue 13, item 4), against a real redis-server, and for GMV a
real broker and worker running the stock core beside the counters:

1. dedupe sets are deleted by event time and live (wall clock) as long as the room's state, so a quiet
   room's events republished after the old 12-minute TTL do not count twice; a set that is gone anyway
   (evicted) makes its events uncheckable, and they are dropped rather than counted again;
2. a topic deleted and recreated (offsets restart at 0) is counted, not hidden behind the watermark;
3. GMV is what the stock core confirmed: refused payments and a client's false ``amount`` do not
   change it, and room GMV == the sum of the sales' GMV == price x units sold.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from schemas import keys
from schemas.codec import encode_batch
from schemas.events import (
    Event,
    OrderCancelled,
    OrderPaid,
    OrderPlaced,
    SaleOpened,
    ViewerCommented,
    ViewerJoined,
    ViewerLiked,
    make_event,
)
from streams.emit import Record
from tests.harness.broker import Broker
from tests.harness.kafka import produce_events
from tests.harness.workers import start_worker
from tests.integration.test_counters_recount import T0, Harness, counter_state, to_records

pytestmark = pytest.mark.integration

WAIT_S = 120.0


def room_events(room: str, n: int, prefix: str, t0: int = T0) -> list[Event]:
    kinds: list[Any] = [ViewerJoined(), ViewerLiked(count=2), ViewerCommented(text="hi")]
    return [make_event(kinds[i % 3], event_id=f"{prefix}{i}", ts=t0 + i * 100, room_id=room, user_id=f"u{i % 17}")
            for i in range(n)]


async def hget_int(client: aioredis.Redis, key: str, name: str) -> int:
    return int(await client.hget(key, name) or 0)


def text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


async def advance_wall_clock(client: aioredis.Redis, seconds: int) -> None:
    """What ``seconds`` of wall-clock time do to the keyspace, without waiting for them: every key whose
    TTL runs out within them is gone, the others have that much less left (Redis' own clock untouched)."""
    async for key in client.scan_iter(match="*"):
        ttl = await client.pttl(key)
        if ttl < 0:
            continue
        if ttl <= seconds * 1000:
            await client.delete(key)
        else:
            await client.pexpire(key, ttl - seconds * 1000)


async def totals(client: aioredis.Redis, room: str) -> dict[str, int]:
    raw = await client.hgetall(keys.room_base(room))
    return {text(f): int(v) for f, v in raw.items() if text(f) in ("events", "likes", "comments", "joins")}


async def test_a_quiet_rooms_republish_after_the_old_dedupe_ttl_counts_nothing(redis_client: aioredis.Redis) -> None:
    h = Harness(redis_client)
    evs = room_events("quiet", 300, "q")
    await h.feed(to_records(evs))
    first = await totals(redis_client, "quiet")
    assert first["events"] == 300
    # the room goes quiet for 13 minutes of wall clock (the dedupe sets used to expire after 12; the
    # closed minute windows do expire)
    await advance_wall_clock(redis_client, 13 * 60)
    before = await counter_state(redis_client)
    # the operator replays the room's events: same ids, new offsets, same event times
    await h.feed(to_records(evs, offset0=5_000))
    assert await totals(redis_client, "quiet") == first
    assert [k async for k in redis_client.scan_iter(match="*{r:quiet}*:dd:*")]
    assert await counter_state(redis_client) == before
    assert await hget_int(redis_client, keys.room_base("quiet"), "dups") == 300


async def test_events_whose_dedupe_set_is_gone_are_dropped_not_counted_again(redis_client: aioredis.Redis) -> None:
    """Under maxmemory a volatile-* policy may evict a dedupe set (it has a TTL) while the room's state
    lives: its ids can no longer be checked, so its events are dropped as too old, never counted twice."""
    h = Harness(redis_client)
    evs = room_events("evicted", 200, "v")
    await h.feed(to_records(evs))
    first = await totals(redis_client, "evicted")
    gone = [k async for k in redis_client.scan_iter(match="*{r:evicted}*:dd:*")]
    assert gone
    await redis_client.delete(*gone)
    await h.feed(to_records(evs, offset0=5_000))
    assert await totals(redis_client, "evicted") == first
    assert await hget_int(redis_client, keys.room_base("evicted"), "too_old") == 200
    # new events of the room still count (a new bucket: its sets are created with it)
    later = room_events("evicted", 10, "w", t0=T0 + 200 * 100 + 20_000)
    await h.feed(to_records(later, offset0=10_000))
    assert (await totals(redis_client, "evicted"))["events"] == 210


async def test_a_recreated_topic_is_counted_not_skipped(redis_client: aioredis.Redis) -> None:
    """Deleting and recreating a topic restarts its offsets at 0: events of the new topic sit at or
    behind the old watermark, and were skipped as replays. Now a new id behind the watermark is counted
    (``resets`` goes up); a real redelivery of the new topic's records is still dropped."""
    h = Harness(redis_client)
    old_topic = room_events("again", 120, "a")
    await h.feed(to_records(old_topic))
    sale_t0 = T0 + 60_000
    opened = make_event(SaleOpened(sale_id="sa", sku="k", price=100, allotment=50, per_user_limit=5,
                                   starts_at=sale_t0, ends_at=sale_t0 + 3_600_000),
                        event_id="open-sa", ts=sale_t0, room_id="again", user_id="host")
    attempts = [make_event(OrderPlaced(order_id=f"o{i}", sale_id="sa", sku="k", qty=1, unit_price=100),
                           event_id=f"place-o{i}", ts=sale_t0 + 10 + i, room_id="again", user_id=f"u{i}")
                for i in range(30)]
    await h.feed(to_records([opened, *attempts]))
    assert (await totals(redis_client, "again"))["events"] == 120
    assert await hget_int(redis_client, keys.sale_base("sa"), "attempts") == 30

    # the topics are deleted and recreated: the next events arrive at offsets 0, 1, ... again
    new_topic = room_events("again", 80, "b", t0=T0 + 120 * 100)
    more = [make_event(OrderPlaced(order_id=f"n{i}", sale_id="sa", sku="k", qty=1, unit_price=100),
                       event_id=f"place-n{i}", ts=sale_t0 + 100 + i, room_id="again", user_id=f"w{i}")
            for i in range(20)]
    records = to_records([*new_topic, *more])
    await h.feed(records)
    got = await totals(redis_client, "again")
    assert got["events"] == 200
    assert await hget_int(redis_client, keys.sale_base("sa"), "attempts") == 50
    assert await hget_int(redis_client, keys.room_base("again"), "orders") == 50
    assert await hget_int(redis_client, keys.room_base("again"), "resets") >= 1
    # and the new topic's records redelivered (a consumer restart) change nothing
    before = await counter_state(redis_client)
    await h.feed(records, batch=3)
    assert await counter_state(redis_client) == before


# --- GMV from the stock core, with a real broker and worker -----------------------------------------


async def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


async def test_gmv_is_what_the_stock_core_confirmed(broker: Broker, worker_env: dict[str, str],
                                                    topics: dict[str, str], tmp_path: Path, topic_prefix: str,
                                                    redis_client: aioredis.Redis) -> None:
    t0 = int(time.time() * 1000)  # the sweeper's clock is the wall clock: reservations held for 10 minutes
    room = "rg"

    def ev(payload: Any, eid: str, ts: int, user: str) -> Event:
        return make_event(payload, event_id=eid, ts=ts, room_id=room, user_id=user, channel="live_room")

    def place(sale: str, oid: str, user: str, qty: int, price: int, ts: int) -> Event:
        return ev(OrderPlaced(order_id=oid, sale_id=sale, sku=f"k-{sale}", qty=qty, unit_price=price),
                  f"place-{oid}", ts, user)

    def pay(sale: str, oid: str, user: str, ts: int, amount: int | None, eid: str = "") -> Event:
        return ev(OrderPaid(order_id=oid, sale_id=sale, sku=f"k-{sale}", amount=amount), eid or f"pay-{oid}", ts,
                  user)

    opens = [ev(SaleOpened(sale_id=s, sku=f"k-{s}", price=p, allotment=a, per_user_limit=2, starts_at=t0 - 1000,
                           ends_at=t0 + 3_600_000, reservation_ttl_s=600), f"open-{s}", t0 - 1, "host")
             for s, p, a in (("g1", 500, 6), ("g2", 300, 10))]
    orders = [place("g1", "a1", "u1", 1, 500, t0 + 10), place("g1", "a2", "u2", 1, 500, t0 + 20),
              place("g1", "a3", "u3", 1, 500, t0 + 30), place("g1", "a4", "u4", 2, 500, t0 + 40),
              place("g1", "a5", "u5", 1, 500, t0 + 50),
              place("g1", "a6", "u6", 2, 500, t0 + 60),  # 7 units asked of 6: sold out, rejected
              place("g2", "b1", "v1", 2, 300, t0 + 70)]
    worker = start_worker(worker_env, tmp_path)
    try:
        await produce_events(broker.bootstrap, topic_prefix, opens + orders)

        async def decided() -> bool:
            return (await hget_int(redis_client, keys.sale_base("g1"), "accepted") == 5
                    and await hget_int(redis_client, keys.sale_base("g2"), "accepted") == 1)

        await wait_for(decided, "the stock core's decisions")
        payments = [
            pay("g1", "a1", "u1", t0 + 1000, 500),  # an honest payment
            pay("g1", "a2", "u2", t0 + 1010, 1),  # a false amount: the stock core sells it at 1 x 500
            pay("g1", "a3", "u9", t0 + 1020, 500, "pay-a3-thief"),  # not the owner: refused, changes nothing
            pay("g1", "a3", "u3", t0 + 1030, None),  # then the owner pays (no amount): sold at 500
            pay("g1", "a6", "u6", t0 + 1050, 1000),  # a rejected order
            ev(OrderCancelled(order_id="a5", sale_id="g1", sku="k-g1"), "cancel-a5", t0 + 1060, "u5"),
            pay("g1", "a5", "u5", t0 + 1070, 500),  # after its own cancel
            pay("g2", "b1", "v1", t0 + 1080, 600),
            pay("g2", "b1", "v1", t0 + 1090, 600, "pay-b1-again"),  # paid twice: counts once
        ]
        await produce_events(broker.bootstrap, topic_prefix, payments)
        # after the deadline by the pipeline's clock (a record of its own: the record's timestamp is its time)
        await produce_events(broker.bootstrap, topic_prefix, [pay("g1", "a4", "u4", t0 + 600_040 + 5, 1000)])
        n_pay = {"g1": 7, "g2": 2}

        async def settled() -> bool:
            for s, n in n_pay.items():
                if await hget_int(redis_client, keys.sale_base(s), "paid_events") != n:
                    return False
            recs = await redis_client.hgetall(keys.sale_orders("g1"))
            states = {text(k): orjson.loads(v)["s"] for k, v in recs.items()}
            return states.get("a4") == "expired" and states.get("a5") == "cancelled" and \
                states.get("a3") == "sold"

        await wait_for(settled, "every payment to be decided and counted")
        await asyncio.sleep(1.0)  # nothing more may arrive; give a wrong late count the chance to show
        stock = {s: {text(k): text(v) for k, v in (await redis_client.hgetall(keys.sale(s))).items()}
                 for s in ("g1", "g2")}
        assert (int(stock["g1"]["sold"]), int(stock["g1"]["gmv"])) == (3, 1500)
        assert (int(stock["g2"]["sold"]), int(stock["g2"]["gmv"])) == (2, 600)
        room_gmv = await hget_int(redis_client, keys.room_base(room), "gmv")
        assert room_gmv == sum(int(stock[s]["gmv"]) for s in ("g1", "g2")) == 2100
        assert await hget_int(redis_client, keys.room_base(room), "paid") == 4
        for s in ("g1", "g2"):
            assert int(stock[s]["gmv"]) == int(stock[s]["price"]) * int(stock[s]["sold"])
            assert await hget_int(redis_client, keys.sale_base(s), "gmv") == int(stock[s]["gmv"])
            assert await hget_int(redis_client, keys.sale_base(s), "paid") == int(stock[s]["paid"])
        assert await hget_int(redis_client, keys.sale_base("g1"), "refused") == 4  # thief, late, rejected, cancelled
        assert await hget_int(redis_client, keys.sale_base("g1"), "amount_mismatch") == 1
        funnel = {text(k): int(v) for k, v in (await redis_client.hgetall(keys.room_funnel(room))).items()}
        assert funnel["g:*:*"] == 2100 and funnel["p:*:*"] == 4
    finally:
        worker.process.stop()


async def test_a_payment_is_judged_by_its_records_time_not_the_clients(redis_client: aioredis.Redis) -> None:
    """The stock core decides lateness by the record's timestamp (kernel.clock.pipeline_time_ms); so do
    the counters: a payment whose client clock claims to be in time, in a record stamped after the
    deadline, is refused; one in time by its record counts at the stock core's price."""
    h = Harness(redis_client)
    deadline = T0 + 300_000
    for oid, user in (("late", "u1"), ("ok", "u2")):
        await redis_client.hset(keys.sale_orders("st"), oid,
                                orjson.dumps({"s": "reserved", "q": 2, "p": 250, "u": user, "d": deadline}))

    def paid(oid: str, user: str) -> Event:
        return make_event(OrderPaid(order_id=oid, sale_id="st", sku="k", amount=500), event_id=f"pay-{oid}",
                          ts=deadline - 10_000, room_id="rt", user_id=user)

    records = [Record("orders", 0, 0, encode_batch([paid("late", "u1")]), timestamp_ms=deadline + 1),
               Record("orders", 0, 1, encode_batch([paid("ok", "u2")]), timestamp_ms=deadline)]
    await h.services["orders"].handle(records)
    assert await hget_int(redis_client, keys.room_base("rt"), "gmv") == 500
    assert await hget_int(redis_client, keys.room_base("rt"), "paid") == 1
    assert await hget_int(redis_client, keys.sale_base("st"), "refused") == 1
    # retried (a crash before the offsets were committed): the same verdicts
    await h.services["orders"].handle([replace(r) for r in records])
    assert await hget_int(redis_client, keys.room_base("rt"), "gmv") == 500
    assert await hget_int(redis_client, keys.sale_base("st"), "refused") == 1
