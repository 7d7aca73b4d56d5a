"""Roll-ups: events → per-room / per-sale operation lists (pure)."""

from __future__ import annotations

from schemas.events import (
    CartAdded,
    OrderAccepted,
    OrderPaid,
    OrderPlaced,
    OrderRejected,
    ProductClicked,
    SaleOpened,
    ViewerJoined,
    ViewerLiked,
)
from schemas.events import make_event as mk
from streams.counters.rollups import (
    POSITION_SCALE,
        Item,
    decision_sale_ops,
    digest,
    engagement_ops,
    order_room_ops,
    order_sale_ops,
)

T = 1_700_000_000_000


def item(event: object, offset: int = 0, index: int = 0, partition: int = 0) -> Item:
    return Item(partition, offset, index, event)  # type: ignore[arg-type]


def test_digest_is_a_stable_signed_64_bit_integer() -> None:
    assert digest("a") == digest("a") != digest("b")
    assert all(-(2**63) <= digest(f"e{i}") < 2**63 for i in range(1000))
    assert len({digest(f"e{i}") for i in range(100_000)}) == 100_000


def test_engagement_ops_group_by_room_in_order_with_fixed_stride() -> None:
    evs = [
        mk(ViewerJoined(), event_id="a", ts=T, room_id="r1", user_id="u1", channel="live_room"),
        mk(ViewerLiked(count=5), event_id="b", ts=T + 1, room_id="r2", user_id="u2"),
        mk(CartAdded(sku="s1", qty=3), event_id="c", ts=T + 2, room_id="r1", user_id="u1", referrer_id="d1"),
        mk(ProductClicked(sku="s2"), event_id="d", ts=T + 3, room_id="r1", user_id="u3"),
    ]
    groups, misplaced = engagement_ops(item(e, 7, i) for i, e in enumerate(evs))
    assert misplaced == []
    assert set(groups) == {"r1", "r2"}
    r1 = groups["r1"]
    assert r1.count == 3 and len(r1.rows) == 3
    assert r1.rows[0] == [0, 7 * POSITION_SCALE, str(digest("a")), T, "J", "u1", "live_room", "", 1, ""]
    assert r1.rows[1] == [0, 7 * POSITION_SCALE + 2, str(digest("c")), T + 2, "A", "u1", "other", "s1", 3, "d1"]
    assert r1.rows[2][4] == "P" and r1.rows[2][7] == "s2"
    assert groups["r2"].rows[0][4] == "K" and groups["r2"].rows[0][8] == 5
    assert r1.max_ts == T + 3


def test_order_side_events_on_the_engagement_topic_are_misplaced() -> None:
    e = mk(OrderPlaced(order_id="o1", sale_id="s", sku="k", qty=1, unit_price=100), event_id="x", ts=T,
           room_id="r", user_id="u")
    groups, misplaced = engagement_ops([item(e)])
    assert groups == {} and [m.event.event_id for m in misplaced] == ["x"]


def test_order_ops_split_into_sale_and_room_operations() -> None:
    placed = mk(OrderPlaced(order_id="o1", sale_id="s1", sku="k1", qty=2, unit_price=150), event_id="p1", ts=T,
                room_id="r1", user_id="u1", channel="share_link", referrer_id="dist")
    paid = mk(OrderPaid(order_id="o1", sale_id="s1", sku="k1", amount=300), event_id="y1", ts=T + 5,
              room_id="r1", user_id="u1", channel="share_link", referrer_id="dist")
    paid_again = mk(OrderPaid(order_id="o1", sale_id="s1", sku="k1"), event_id="y2", ts=T + 6, room_id="r1",
                    user_id="u1")
    opened = mk(SaleOpened(sale_id="s1", sku="k1", price=150, allotment=10, per_user_limit=1, starts_at=T,
                           ends_at=T + 60_000), event_id="o", ts=T - 1, room_id="r1", user_id="host")
    items = [item(e, 3, i) for i, e in enumerate([opened, placed, paid, paid_again])]
    sales = order_sale_ops(items)
    s1 = sales["s1"]
    assert [row[4] for row in s1.rows] == ["O", "Y", "Y"]
    assert s1.rows[1][6] == 300 and s1.rows[2][6] == -1  # -1: price from the order
    assert s1.rows[1][2] == f"{digest('y1')}|y1"  # payments carry their event id too
    assert s1.paid_ids == ["y1", "y2"] and s1.room_id == "r1"
    rooms = order_room_ops(items, {("s1", "y1"): 300, ("s1", "y2"): -1})
    r1 = rooms["r1"]
    assert [row[4] for row in r1.rows] == ["N", "O", "Y"]  # the second payment of o1 is not the counted one
    assert r1.rows[0][7] == "s1"  # sale.opened carries the sale id in the SKU slot
    assert r1.rows[2][8] == 300 and r1.rows[2][9] == "dist"


def test_decision_ops_count_accepted_units_and_flag_misplaced_types() -> None:
    acc = mk(OrderAccepted(order_id="o1", sale_id="s1", sku="k", qty=2, unit_price=10, reserved_until=T),
             event_id="dec:o1", ts=T, room_id="r", user_id="u")
    rej = mk(OrderRejected(order_id="o2", sale_id="s1", sku="k", qty=1, reason="sold_out"), event_id="dec:o2",
             ts=T, room_id="r", user_id="u")
    like = mk(ViewerLiked(), event_id="l", ts=T, room_id="r", user_id="u")
    sales, misplaced = decision_sale_ops([item(acc), item(rej, 1), item(like, 2)])
    assert sales["s1"].rows == [[0, 0, str(digest("dec:o1")), T, "A", "o1", 2, "u", T]]  # + user and pipeline time
    assert [m.event.event_id for m in misplaced] == ["l"]
