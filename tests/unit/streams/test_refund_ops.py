"""Refunds and commissions in the pure parts of the workers: the stock op and the counters' rows."""

from __future__ import annotations

from schemas.events import OrderPlaced, OrderRefunded, SaleOpened, make_event
from streams.counters.rollups import Item, order_room_ops, order_sale_ops
from streams.stock.logic import REFUND_REFUSED, to_op

T = 1_700_000_000_000


def refund(restock: bool = False, amount: int | None = None) -> object:
    return make_event(OrderRefunded(order_id="o1", sale_id="s1", sku="k1", restock=restock, amount=amount),
                      event_id="r1", ts=T, room_id="room", user_id="u1")


def test_a_refund_becomes_a_refund_op_at_the_pipelines_time() -> None:
    op = to_op(refund(restock=True, amount=500), T + 5)  # type: ignore[arg-type]
    assert op == {"op": "refund", "order_id": "o1", "event_id": "r1", "user_id": "u1", "restock": True,
                  "amount": 500, "ts": T + 5}
    assert to_op(refund(), None)["amount"] == -1  # type: ignore[arg-type,index]
    assert REFUND_REFUSED == {"unknown_order", "not_owner", "not_paid", "already_refunded", "amount_mismatch"}


def test_an_order_op_carries_channel_and_referrer_and_an_open_the_rule() -> None:
    placed = make_event(OrderPlaced(order_id="o1", sale_id="s1", sku="k1", qty=1, unit_price=5), event_id="p1",
                        ts=T, room_id="room", user_id="u1", channel="share_link", referrer_id="kol")
    op = to_op(placed)
    assert op is not None and (op["channel"], op["referrer_id"]) == ("share_link", "kol")
    opened = make_event(SaleOpened(sale_id="s1", sku="k1", price=5, allotment=1, per_user_limit=1, starts_at=T,
                                   ends_at=T + 1, commission_bps=0), event_id="o", ts=T, room_id="room", user_id="h")
    op = to_op(opened)
    assert op is not None and op["commission_bps"] == 0 and "head_commission_bps" not in op


def test_counters_rows_of_a_refund() -> None:
    item = Item(0, 3, 0, refund(amount=7), T)  # type: ignore[arg-type]
    sales = order_sale_ops([item])
    assert sales["s1"].rows[0][4:7] == ["U", "o1", 7] and sales["s1"].rows[0][2].endswith("|r1")
    assert sales["s1"].refund_ids == ["r1"]
    assert order_room_ops([item], {}, {("s1", "r1"): -1}) == {}  # refused by the stock core: not counted
    rows = order_room_ops([item], {}, {("s1", "r1"): 999})["room"].rows
    assert rows[0][4] == "U" and rows[0][8] == 999
