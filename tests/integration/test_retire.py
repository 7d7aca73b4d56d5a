"""Retiring closed sales from the sweeper's active set (issue 13, item 3): never while an outbox item
or a deadline is left, never from a reading taken before a Kafka wait, and a re-open is never lost."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from kernel.redis import RedisUnavailable, run_pipeline
from schemas import keys as rk
from schemas.codec import encode_event
from schemas.events import Event, SaleClosed, StockAdjusted, make_event
from streams.emit import Record
from streams.metrics import WorkerMetrics
from streams.stock.service import StockService
from streams.stock.store import OUTBOX_LEASE_MS, RETIRE_LEASE_MS, StockStore
from tests.integration.stock.helpers import T0, closed, order, sale_opened

pytestmark = pytest.mark.integration

TTL_MS = 10_000


class Sink:
    """What the service sends, decoded; ``fail`` makes the next send raise (the broker refusing),
    ``during_send`` runs once inside the next send (something happening while the sender waits)."""

    def __init__(self) -> None:
        self.records: dict[str, list[Any]] = defaultdict(list)
        self.fail = 0
        self.during_send: Callable[[], Awaitable[None]] | None = None

    async def send(self, topic: str, key: bytes, value: bytes) -> Any:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("broker refused the send")
        if self.during_send is not None:
            hook, self.during_send = self.during_send, None
            await hook()
        obj = orjson.loads(value)
        self.records[topic].extend(obj if isinstance(obj, list) else [obj])
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def expired(self) -> list[str]:
        return [d["data"]["order_id"] for d in self.records["order-decisions"] if d["type"] == "order.expired"]


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def recs(*events: Event) -> list[Record]:
    return [Record("orders", 0, i, encode_event(e)) for i, e in enumerate(events)]


def adjusted(delta: int, event_id: str, ts: int) -> Event:
    return make_event(StockAdjusted(sale_id="s1", sku="sku-1", delta=delta), event_id=event_id, ts=ts,
                      room_id="room-1", user_id="host")


@pytest.fixture
def parts(redis_client: aioredis.Redis) -> tuple[StockService, Sink, Clock]:
    sink, clock = Sink(), Clock(T0 + 1000)
    metrics = WorkerMetrics()
    return StockService(StockStore(redis_client, metrics), metrics, sink.send, clock=clock), sink, clock


async def active(client: aioredis.Redis | RedisCluster) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else str(m)
            for m in await client.smembers(rk.active_sales())}  # type: ignore[misc]


async def test_a_leased_expiry_whose_send_failed_is_delivered_after_the_sale_is_closed(
        parts: Any, redis_client: aioredis.Redis) -> None:
    """The sweep releases the last reservation of a closed sale, and the broker refuses the
    order.expired it leased. The old sweeper retired the sale on its next tick (closed, no deadline
    left) while the item sat leased in the outbox, so it was never re-leased: the expiry was lost."""
    svc, sink, clock = parts
    await svc.handle(recs(sale_opened(allotment=5, ttl_s=TTL_MS // 1000), order("a", "u1", T0 + 100)))
    await svc.handle(recs(closed(ts=T0 + 200)))
    clock.t = T0 + 100 + TTL_MS  # a's deadline
    sink.fail = 1
    with pytest.raises(ConnectionError):
        await svc.sweep()
    assert sink.expired() == []

    clock.t += 1000  # the lease (OUTBOX_LEASE_MS) still holds the item: this tick cannot send it
    assert await svc.sweep() == 0
    assert await active(redis_client) == {"s1"}, "a closed sale with an item in its outbox stays swept"

    clock.t += OUTBOX_LEASE_MS  # the lease ran out: the item is leased again and delivered
    await svc.sweep()
    assert sink.expired() == ["a"]
    assert await redis_client.zcard(rk.sale_outbox("s1")) == 0
    assert await active(redis_client) == set(), "retired once its outbox is empty"
    st = await redis_client.hgetall(rk.sale("s1"))
    assert (st[b"available"], st[b"reserved"], st[b"expired"]) == (b"5", b"0", b"1")


async def test_a_sale_reopened_and_ordered_during_the_sweeps_send_keeps_its_reservation_swept(
        parts: Any, redis_client: aioredis.Redis) -> None:
    """The old sweeper decided to retire from the reading it took before waiting on Kafka: a sale
    re-opened and given an order during that wait was dropped from the active set, and the new
    reservation was never released."""
    svc, sink, clock = parts
    await svc.handle(recs(sale_opened(allotment=5, ttl_s=TTL_MS // 1000), order("a", "u1", T0 + 100)))
    await svc.handle(recs(closed(ts=T0 + 200)))
    clock.t = T0 + 100 + TTL_MS
    reopen_at = clock.t + 10

    async def reopen_and_order() -> None:  # while the sweeper waits for the broker's ack of a's expiry
        await svc.handle(recs(sale_opened(allotment=5, ttl_s=TTL_MS // 1000, event_id="reopen-s1", ts=reopen_at),
                              order("b", "u2", reopen_at)))

    sink.during_send = reopen_and_order
    assert await svc.sweep() == 1
    accepted = [d["data"]["order_id"] for d in sink.records["order-decisions"] if d["type"] == "order.accepted"]
    assert accepted == ["a", "b"]
    assert await active(redis_client) == {"s1"}, "re-opened: still swept"

    clock.t = reopen_at + TTL_MS  # b's deadline
    assert await svc.sweep() == 1
    assert sink.expired() == ["a", "b"]
    st = await redis_client.hgetall(rk.sale("s1"))
    assert (st[b"status"], st[b"available"], st[b"reserved"]) == (b"open", b"5", b"0")
    assert await redis_client.hget(rk.sale_users("s1"), "u2") is None


async def test_a_reopen_waits_while_a_retirement_is_half_done_and_goes_on_after_its_lease(
        parts: Any, redis_client: aioredis.Redis) -> None:
    """A retirer that marked the sale and removed it from the active set, then died before clearing
    its mark: a sale.opened waits (the batch is retried like any Redis refusal) until the mark's lease
    runs out, then re-opens the sale and puts it back in the active set, so its orders are swept."""
    svc, sink, clock = parts
    store = svc.store
    await svc.handle(recs(sale_opened(allotment=5, ttl_s=TTL_MS // 1000), closed(ts=T0 + 200)))

    def begin(pipe: Any) -> None:
        store.retire_script.queue(pipe, [rk.sale("s1"), rk.sale_deadlines("s1"), rk.sale_outbox("s1")],
                                  ["begin", clock.t, RETIRE_LEASE_MS, "dead-retirer"])

    assert await run_pipeline(redis_client, store.scripts, begin) == [1]
    await redis_client.srem(rk.active_sales(), "s1")  # ... and the retirer dies here

    reopen = recs(sale_opened(allotment=5, ttl_s=TTL_MS // 1000, event_id="reopen-s1", ts=clock.t),
                  order("b", "u2", clock.t))
    with pytest.raises(RedisUnavailable):
        await svc.handle(reopen)
    assert (await redis_client.hget(rk.sale("s1"), "status")) == b"closed", "nothing applied while it waits"

    clock.t += RETIRE_LEASE_MS
    await svc.handle(reopen)  # the retried batch
    assert await active(redis_client) == {"s1"}
    assert await redis_client.hget(rk.sale("s1"), "retiring") is None
    clock.t += TTL_MS
    assert await svc.sweep() == 1
    assert sink.expired() == ["b"]


async def test_a_stalled_retirer_whose_mark_was_taken_puts_the_sale_back(
        parts: Any, redis_client: aioredis.Redis) -> None:
    """A retirer stalls past its lease between its check and its SREM: a re-open takes its mark away
    and is applied (and added to the active set) before the SREM lands; the retirer finds its mark
    gone and puts the sale back, so the re-opened sale's orders are still swept."""
    svc, sink, clock = parts
    store = svc.store
    await svc.handle(recs(sale_opened(allotment=5, ttl_s=TTL_MS // 1000), closed(ts=T0 + 200)))
    run = store._run
    calls = 0

    async def stalling_run(op: str, build: Any) -> list[Any]:
        nonlocal calls
        if op == "stock_retire":
            calls += 1
            if calls == 2:  # checked and marked; the stall, then the SREM
                clock.t += RETIRE_LEASE_MS + 1
                await svc.handle(recs(sale_opened(allotment=5, ttl_s=TTL_MS // 1000, event_id="reopen-s1",
                                                  ts=clock.t), order("b", "u2", clock.t)))
        return await run(op, build)

    store._run = stalling_run  # type: ignore[method-assign]
    assert await store.retire(["s1"], clock.t) == []
    store._run = run  # type: ignore[method-assign]
    assert calls == 4, "check, SREM, clear, put back"
    assert await active(redis_client) == {"s1"}
    clock.t += TTL_MS
    assert await svc.sweep() == 1
    assert sink.expired() == ["b"]


async def test_closed_sale_retires_only_once_empty_and_adjusting_it_sells_nothing_out(
        parts: Any, redis_client: aioredis.Redis) -> None:
    """stock.adjusted on a closed sale writes nothing to its outbox (only an open sale sells out), so
    a retired sale gains outbox items only by being re-opened; a retired sale re-opened is swept again."""
    svc, sink, clock = parts
    await svc.handle(recs(sale_opened(allotment=5, ttl_s=TTL_MS // 1000), closed(ts=T0 + 200)))
    await svc.sweep()
    assert await active(redis_client) == set()
    await svc.handle(recs(adjusted(-5, "adj-1", T0 + 300)))
    st = await redis_client.hgetall(rk.sale("s1"))
    assert (st[b"available"], st[b"soldout"]) == (b"0", b"1") and b"sold_out_at" not in st
    assert await redis_client.zcard(rk.sale_outbox("s1")) == 0
    assert [d["type"] for d in sink.records["order-decisions"]] == ["stock.changed"]

    await svc.handle(recs(adjusted(2, "adj-2", T0 + 400),
                          sale_opened(allotment=5, ttl_s=TTL_MS // 1000, event_id="reopen-s1", ts=clock.t),
                          order("c", "u3", clock.t)))
    assert await active(redis_client) == {"s1"}
    clock.t += TTL_MS
    assert await svc.sweep() == 1
    assert sink.expired() == ["c"]
    await svc.handle(recs(make_event(SaleClosed(sale_id="s1", sku="sku-1"), event_id="close-2", ts=clock.t,
                                     room_id="room-1", user_id="host")))
    await svc.sweep()
    assert await active(redis_client) == set()


async def test_retire_runs_on_a_redis_cluster(cluster_client: RedisCluster) -> None:
    """Each retire.lua call touches one sale's slot; the active set, in another slot, is changed by
    plain SREM/SADD (one script over both would be refused CROSSSLOT)."""
    sink, clock = Sink(), Clock(T0 + 1000)
    metrics = WorkerMetrics()
    svc = StockService(StockStore(cluster_client, metrics), metrics, sink.send, clock=clock)
    sales = [f"rc{n}" for n in range(6)]
    for s in sales:
        await svc.handle(recs(sale_opened(sale_id=s, sku=f"k{s}", ttl_s=TTL_MS // 1000),
                              order(f"o-{s}", "u1", T0 + 100, sale_id=s, sku=f"k{s}")))
    await svc.handle(recs(*[make_event(SaleClosed(sale_id=s, sku=f"k{s}"), event_id=f"close-{s}", ts=T0 + 200,
                                       room_id="room-1", user_id="host") for s in sales]))
    await svc.sweep()
    assert await active(cluster_client) >= set(sales), "deadlines left"
    clock.t = T0 + 100 + TTL_MS
    assert await svc.sweep() == len(sales)
    assert sorted(sink.expired()) == sorted(f"o-{s}" for s in sales)
    assert not await active(cluster_client) & set(sales)
