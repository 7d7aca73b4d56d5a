"""Refunds and distributor commissions in the stock core (issue 16), against a real redis-server: a refund
of a sold order with and without restock (the invariant's fourth term), refusals with their reasons,
replays that change nothing, the commission ledger accrued on payment and clawed back on refund."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from schemas import keys as rk
from schemas.events import Event, OrderPaid, OrderPlaced, OrderRefunded, SaleOpened, StockAdjusted, make_event
from schemas.order_record import commission, parse_distributor_totals, parse_ledger_entry, parse_order_record
from streams.metrics import WorkerMetrics
from streams.stock.service import StockService
from streams.stock.store import StockStore
from tests.integration.stock.helpers import T0
from tests.integration.stock.test_stock_service import Clock, Sink, records, sale_state

pytestmark = pytest.mark.integration


def opened(allotment: int = 5, price: int = 999, bps: int | None = 1234, event_id: str = "open-s1",
           head_bps: int | None = None) -> Event:
    return make_event(SaleOpened(sale_id="s1", sku="sku-1", price=price, allotment=allotment, per_user_limit=3,
                                 starts_at=T0, ends_at=T0 + 3_600_000, reservation_ttl_s=600,
                                 commission_bps=bps, head_commission_bps=head_bps),
                      event_id=event_id, ts=T0, room_id="room-1", user_id="host")


def place(oid: str, user: str, qty: int = 1, price: int = 999, ref: str | None = "dist-a",
          channel: str = "share_link") -> Event:
    return make_event(OrderPlaced(order_id=oid, sale_id="s1", sku="sku-1", qty=qty, unit_price=price),
                      event_id=f"e-{oid}", ts=T0 + 10, room_id="room-1", user_id=user, channel=channel,
                      referrer_id=ref)


def pay(oid: str, user: str) -> Event:
    return make_event(OrderPaid(order_id=oid, sale_id="s1", sku="sku-1"), event_id=f"pay-{oid}", ts=T0 + 20,
                      room_id="room-1", user_id=user)


def refund(oid: str, user: str, restock: bool = False, eid: str = "", amount: int | None = None) -> Event:
    return make_event(OrderRefunded(order_id=oid, sale_id="s1", sku="sku-1", restock=restock, amount=amount),
                      event_id=eid or f"refund-{oid}", ts=T0 + 30, room_id="room-1", user_id=user)


@pytest.fixture
def svc(redis_client: aioredis.Redis) -> tuple[StockService, Sink]:
    sink = Sink()
    metrics = WorkerMetrics()
    return StockService(StockStore(redis_client, metrics), metrics, sink.send, clock=Clock(T0 + 5000)), sink


def invariant(st: dict[str, str]) -> bool:
    n = {k: int(st.get(k, "0")) for k in ("allotted", "available", "reserved", "sold", "refunded")}
    return n["allotted"] == n["available"] + n["reserved"] + n["sold"] + n["refunded"] and n["available"] >= 0


async def order_state(client: aioredis.Redis, oid: str) -> str:
    return parse_order_record(await client.hget(rk.sale_orders("s1"), oid)).state


async def ledger(client: aioredis.Redis) -> dict[str, Any]:
    return {k.decode(): parse_ledger_entry(v) for k, v in (await client.hgetall(rk.sale_ledger("s1"))).items()}


async def totals(client: aioredis.Redis) -> dict[str, Any]:
    raw = await client.hgetall(rk.sale_distributors("s1"))
    return {k.decode(): parse_distributor_totals(v) for k, v in raw.items()}


def dead(sink: Sink) -> list[tuple[str, str]]:
    out = []
    for d in sink.records["dead-letter"]:
        raw = orjson.loads(d["raw"])
        out.append((d["reason"], raw["event_id"]))
    return out


async def test_refund_without_restock_keeps_units_out_of_stock(svc: Any, redis_client: aioredis.Redis) -> None:
    service, sink = svc
    await service.handle(records([opened(allotment=5), place("a", "u1", qty=2), pay("a", "u1")]))
    before = await sale_state(redis_client)
    assert (before["sold"], before["gmv"], before["paid"]) == ("2", "1998", "1")
    await service.handle(records([refund("a", "u1")]))
    st = await sale_state(redis_client)
    assert (st["allotted"], st["available"], st["reserved"], st["sold"], st["refunded"]) == ("5", "3", "0", "0", "2")
    assert (st["gmv"], st["paid"], st["refunds"], st["refunded_gmv"], st["restocked"]) == ("0", "0", "1", "1998", "0")
    assert invariant(st)
    assert await order_state(redis_client, "a") == "refunded"
    assert await redis_client.hget(rk.sale_users("s1"), "u1") is None, "a refunded order holds no units"
    assert dead(sink) == []


async def test_refund_with_restock_puts_units_back_on_sale(svc: Any, redis_client: aioredis.Redis) -> None:
    service, sink = svc
    await service.handle(records([opened(allotment=2), place("a", "u1", qty=2), pay("a", "u1")]))
    assert (await sale_state(redis_client))["soldout"] == "1"
    await service.handle(records([refund("a", "u1", restock=True, amount=1998)]))
    st = await sale_state(redis_client)
    assert (st["allotted"], st["available"], st["sold"], st["refunded"], st["restocked"]) == ("2", "2", "0", "0", "2")
    assert st["soldout"] == "0", "restocked units clear the sold-out flag"
    assert invariant(st)
    rec = parse_order_record(await redis_client.hget(rk.sale_orders("s1"), "a"))
    assert rec.restocked and rec.refund_event_id == "refund-a" and rec.refunded_at == T0 + 30
    # the restocked units sell again
    await service.handle(records([place("b", "u2", qty=2), pay("b", "u2")]))
    st = await sale_state(redis_client)
    assert (st["available"], st["sold"], st["paid"], st["gmv"]) == ("0", "2", "1", "1998")
    assert invariant(st)


async def test_a_restock_pays_off_a_pending_removal_first(svc: Any, redis_client: aioredis.Redis) -> None:
    service, _ = svc
    adjust = make_event(StockAdjusted(sale_id="s1", sku="sku-1", delta=-3), event_id="adj-1", ts=T0 + 15,
                        room_id="room-1", user_id="host")
    await service.handle(records([opened(allotment=3), place("a", "u1", qty=2), place("b", "u2", qty=1),
                                  pay("a", "u1"), adjust]))
    st = await sale_state(redis_client)
    assert (st["allotted"], st["available"], st["removal_pending"]) == ("3", "0", "3")
    await service.handle(records([refund("a", "u1", restock=True)]))
    st = await sale_state(redis_client)
    # the two returned units leave the allotment instead of going back on sale
    assert (st["allotted"], st["available"], st["removal_pending"], st["restocked"]) == ("1", "0", "1", "0")
    assert invariant(st)


async def test_refusals_are_dead_lettered_with_their_reason(svc: Any, redis_client: aioredis.Redis) -> None:
    service, sink = svc
    await service.handle(records([opened(), place("a", "u1"), place("b", "u2"), pay("a", "u1"),
                                  place("c", "u3", price=1)]))  # c: rejected (wrong price)
    await service.handle(records([
        refund("b", "u2"),  # reserved, not paid
        refund("c", "u3"),  # rejected
        refund("zz", "u1"),  # unknown
        refund("a", "u9", eid="thief"),  # another user's order
        refund("a", "u1", amount=5, eid="partial"),  # a partial amount
        refund("a", "u1"),  # the refund
        refund("a", "u1", eid="refund-a-again"),  # twice
    ]))
    assert dead(sink) == [("not_paid", "refund-b"), ("not_paid", "refund-c"), ("unknown_order", "refund-zz"),
                          ("not_owner", "thief"), ("amount_mismatch", "partial"),
                          ("already_refunded", "refund-a-again")]
    st = await sale_state(redis_client)
    assert (st["refunds"], st["sold"], st["reserved"], st["refunded"]) == ("1", "0", "1", "1")
    assert invariant(st)
    assert await order_state(redis_client, "b") == "reserved"


async def test_a_replayed_refund_changes_nothing_even_after_the_order_changed(svc: Any,
                                                                            redis_client: aioredis.Redis) -> None:
    service, sink = svc
    early = refund("a", "u1", eid="too-early")
    await service.handle(records([opened(), place("a", "u1"), early]))  # refused: not paid yet
    await service.handle(records([pay("a", "u1")]))
    await service.handle(records([early]))  # replay of the refused refund: still refused, the order stays sold
    assert await order_state(redis_client, "a") == "sold"
    assert [r for r, _ in dead(sink)] == ["not_paid", "not_paid"]
    good = refund("a", "u1")
    await service.handle(records([good]))
    st = await sale_state(redis_client)
    orders = await redis_client.hgetall(rk.sale_orders("s1"))
    led, tot = await ledger(redis_client), await totals(redis_client)
    await service.handle(records([good, early, pay("a", "u1")]))  # the whole tail again
    assert await sale_state(redis_client) == st
    assert await redis_client.hgetall(rk.sale_orders("s1")) == orders
    assert (await ledger(redis_client), await totals(redis_client)) == (led, tot)


async def test_commission_accrues_once_on_payment_and_is_clawed_back(svc: Any, redis_client: aioredis.Redis) -> None:
    service, _ = svc
    await service.handle(records([
        opened(allotment=10, bps=1234, head_bps=50),
        place("a", "u1", qty=3), place("b", "u2", qty=1), place("c", "u3", ref="dist-b"),
        place("d", "u4", channel="live_room"),  # a referrer but not a share link: no commission
        place("e", "u5", ref=None),  # a share link without a referrer
    ]))
    sale = await sale_state(redis_client)
    assert (sale["commission_bps"], sale["head_commission_bps"]) == ("1234", "50")
    for oid, user in (("a", "u1"), ("b", "u2"), ("c", "u3"), ("d", "u4"), ("e", "u5")):
        await service.handle(records([pay(oid, user)]))
    await service.handle(records([pay("a", "u1"), pay("b", "u2")]))  # replayed payments
    led = await ledger(redis_client)
    assert set(led) == {"a", "b", "c"}
    # floor(2997 * 1234 / 10000) = floor(369.8298) = 369; floor(999 * 1234 / 10000) = floor(123.2766) = 123
    assert (led["a"].distributor, led["a"].amount, led["a"].bps, led["a"].commission) == ("dist-a", 2997, 1234, 369)
    assert led["b"].commission == 123 == commission(999, 1234)
    tot = await totals(redis_client)
    assert (tot["dist-a"].orders, tot["dist-a"].paid_gmv, tot["dist-a"].earned) == (2, 3996, 492)
    assert (tot["dist-b"].orders, tot["dist-b"].earned, tot["dist-b"].net) == (1, 123, 123)

    await service.handle(records([refund("a", "u1")]))
    await service.handle(records([refund("a", "u1")]))  # replay
    led, tot = await ledger(redis_client), await totals(redis_client)
    assert (led["a"].clawed_back, led["a"].refunded_at, led["a"].net) == (369, T0 + 30, 0)
    a = tot["dist-a"]
    assert (a.orders, a.earned, a.refunds, a.refunded_gmv, a.clawed_back, a.net) == (2, 492, 1, 2997, 369, 123)


async def test_a_reopen_changes_the_rule_for_later_payments_only(svc: Any, redis_client: aioredis.Redis) -> None:
    service, _ = svc
    await service.handle(records([opened(bps=500), place("a", "u1"), place("b", "u2"), pay("a", "u1")]))
    await service.handle(records([opened(bps=None, event_id="open-2")]))  # no rule given: the rule stays
    await service.handle(records([opened(bps=10_000, event_id="open-3"), pay("b", "u2")]))
    led = await ledger(redis_client)
    assert (led["a"].bps, led["a"].commission) == (500, 49)  # floor(999 * 0.05) = floor(49.95)
    assert (led["b"].bps, led["b"].commission) == (10_000, 999)


async def test_commission_rounding_is_exact_beyond_doubles(svc: Any, redis_client: aioredis.Redis) -> None:
    """amount x bps beyond 2**53: Lua's doubles would round; the script's split keeps it exact."""
    service, _ = svc
    price, bps = 98_929_558_361_510, 7298  # in doubles, floor(price * bps / 10000) is 72198791692230
    await service.handle(records([opened(price=price, bps=bps), place("a", "u1", price=price), pay("a", "u1")]))
    led = await ledger(redis_client)
    assert led["a"].commission == 72_198_791_692_229 == price * bps // 10_000 == commission(price, bps)
