"""Turn a batch of decoded events into per-room and per-sale operation lists for the Lua scripts.

The scripts, not Python, sum the increments: they must first drop duplicates and replays, and
that check has to be atomic with the increments it guards. So this module classifies each event
into a compact row (ROOM_FIELDS / SALE_FIELDS: position, id digest, kind, user, channel, SKU,
amount, referrer), grouped by the room or sale whose keys it touches, in partition order; one
script call then adds up a whole group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from kernel.clock import pipeline_time_ms
from schemas.events import (
    CartAdded,
    Event,
    OrderAccepted,
    OrderCancelled,
    OrderPaid,
    OrderPlaced,
    OrderRefunded,
    SaleOpened,
    ViewerLiked,
)

POSITION_SCALE: Final = 10_000  # > schemas.codec.MAX_BATCH_ITEMS; positions stay below 2**53
ROOM_FIELDS: Final = ("partition", "position", "digest", "ts", "kind", "user", "channel", "sku", "n", "referrer")
SALE_FIELDS: Final = ("partition", "position", "digest", "ts", "kind", "order_id", "n", "user", "pipeline_ts")
ENGAGEMENT_KINDS: Final = {
    "viewer.joined": "J", "viewer.left": "L", "viewer.liked": "K", "viewer.commented": "C",
    "viewer.shared": "S", "product.clicked": "P", "cart.added": "A", "cart.removed": "R",
}
# Order-side types the counters use; the others (sale.closed, stock.adjusted, ...) are the stock core's.
ORDER_TYPES: Final = frozenset({"order.placed", "order.paid", "order.cancelled", "order.refunded", "sale.opened"})
DECISION_TYPES: Final = frozenset({"order.accepted", "order.rejected", "order.expired", "sale.sold_out"})


@dataclass(frozen=True, slots=True)
class Item:
    """One decoded event with the position of the record it came in."""

    partition: int
    offset: int
    index: int  # position of the event among the record's valid events
    event: Event
    record_ts: int | None = None  # the record's Kafka timestamp: the pipeline's clock (kernel.clock)

    @property
    def position(self) -> int:
        """A total order of events within a partition: the record offset, then the index in it."""
        return self.offset * POSITION_SCALE + self.index

    @property
    def pipeline_ts(self) -> int:
        """The time the stock core judges the event by (its record's timestamp, else its own time)."""
        return pipeline_time_ms(self.event.ts, self.record_ts)


@dataclass(slots=True)
class Ops:
    """The operations of one room or sale: one row per event, sent to the script as one JSON array."""

    subject_id: str
    room_id: str = ""
    rows: list[list[Any]] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    paid_ids: list[str] = field(default_factory=list)  # event ids of "Y" ops, in order (sale ops)
    refund_ids: list[str] = field(default_factory=list)  # event ids of "U" ops, in order (sale ops)

    @property
    def count(self) -> int:
        return len(self.timestamps)

    @property
    def max_ts(self) -> int:
        return max(self.timestamps) if self.timestamps else 0


def digest(event_id: str) -> int:
    """The 64-bit id the dedupe sets hold (integers: Redis packs small sets of them 8 bytes apiece).
    Two distinct ids of one partition collide only if they also share a 10 s bucket and shard:
    about 1 in 10**14 per bucket."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big", signed=True)


def _room(groups: dict[str, Ops], room_id: str) -> Ops:
    ops = groups.get(room_id)
    if ops is None:
        ops = groups[room_id] = Ops(room_id, room_id)
    return ops


def _room_op(ops: Ops, item: Item, kind: str, sku: str = "", n: int = 1) -> None:
    e = item.event
    ops.rows.append([item.partition, item.position, str(digest(e.event_id)), e.ts, kind, e.user_id, e.channel, sku,
                     n, e.referrer_id or ""])
    ops.timestamps.append(e.ts)


def engagement_ops(items: Iterable[Item]) -> tuple[dict[str, Ops], list[Item]]:
    """Room operations of engagement events; events of other types are returned as misplaced."""
    groups: dict[str, Ops] = {}
    misplaced: list[Item] = []
    for item in items:
        e = item.event
        kind = ENGAGEMENT_KINDS.get(e.type)
        if kind is None:
            misplaced.append(item)
            continue
        d = e.data
        if isinstance(d, ViewerLiked):
            _room_op(_room(groups, e.room_id), item, kind, n=d.count)
        elif isinstance(d, CartAdded):
            _room_op(_room(groups, e.room_id), item, kind, d.sku, d.qty)
        else:
            _room_op(_room(groups, e.room_id), item, kind, str(getattr(d, "sku", "")))
    return groups, misplaced


def _sale(groups: dict[str, Ops], sale_id: str, room_id: str) -> Ops:
    ops = groups.get(sale_id)
    if ops is None:
        ops = groups[sale_id] = Ops(sale_id, room_id)
    return ops


def _sale_op(ops: Ops, item: Item, kind: str, order_id: str, n: int) -> None:
    e = item.event
    # a payment or refund also carries its full event id: the first one settling an order owns it
    dedupe = f"{digest(e.event_id)}|{e.event_id}" if kind in ("Y", "U") else str(digest(e.event_id))
    ops.rows.append([item.partition, item.position, dedupe, e.ts, kind, order_id, n, e.user_id, item.pipeline_ts])
    ops.timestamps.append(e.ts)
    if kind == "Y":
        ops.paid_ids.append(e.event_id)
    elif kind == "U":
        ops.refund_ids.append(e.event_id)


def order_sale_ops(items: Iterable[Item]) -> dict[str, Ops]:
    """Sale operations of the orders topic: attempts (order.placed), payments (order.paid: the client's
    amount only compared with the stock core's price, never counted) and cancels (order.cancelled:
    a payment after the owner's cancel is refused by the stock core, so it does not count)."""
    groups: dict[str, Ops] = {}
    for item in items:
        d = item.event.data
        if isinstance(d, OrderPlaced):
            _sale_op(_sale(groups, d.sale_id, item.event.room_id), item, "O", d.order_id, d.qty)
        elif isinstance(d, OrderPaid):
            amount = d.amount if d.amount is not None else -1
            _sale_op(_sale(groups, d.sale_id, item.event.room_id), item, "Y", d.order_id, amount)
        elif isinstance(d, OrderCancelled):
            _sale_op(_sale(groups, d.sale_id, item.event.room_id), item, "X", d.order_id, 0)
        elif isinstance(d, OrderRefunded):
            amount = d.amount if d.amount is not None else -1
            _sale_op(_sale(groups, d.sale_id, item.event.room_id), item, "U", d.order_id, amount)
    return groups


def order_room_ops(items: Iterable[Item], paid: Mapping[tuple[str, str], int],
                   refunded: Mapping[tuple[str, str], int] | None = None) -> dict[str, Ops]:
    """Room operations of the orders topic. ``paid`` maps (sale_id, event_id) of order.paid events
    to the amount the stock core confirmed (units x unit price of its order record), or -1 when the
    stock core refuses the payment or another event already settled the order; ``refunded`` maps
    order.refunded events the same way (the amount refunded, or -1 when the refund is refused).
    A refund is attributed to its own envelope's channel and referrer, as a payment is."""
    refunded = refunded or {}
    groups: dict[str, Ops] = {}
    for item in items:
        e = item.event
        d = e.data
        if isinstance(d, OrderPlaced):
            _room_op(_room(groups, e.room_id), item, "O", d.sku, d.qty * d.unit_price)
        elif isinstance(d, OrderPaid):
            amount = paid.get((d.sale_id, e.event_id), -1)
            if amount >= 0:
                _room_op(_room(groups, e.room_id), item, "Y", d.sku, amount)
        elif isinstance(d, OrderRefunded):
            amount = refunded.get((d.sale_id, e.event_id), -1)
            if amount >= 0:
                _room_op(_room(groups, e.room_id), item, "U", d.sku, amount)
        elif isinstance(d, SaleOpened):
            _room_op(_room(groups, e.room_id), item, "N", d.sale_id)
    return groups


def decision_sale_ops(items: Iterable[Item]) -> tuple[dict[str, Ops], list[Item]]:
    """Sale operations of the order-decisions topic (accepted orders); misplaced types returned."""
    groups: dict[str, Ops] = {}
    misplaced: list[Item] = []
    for item in items:
        d = item.event.data
        if item.event.type not in DECISION_TYPES:
            misplaced.append(item)
        elif isinstance(d, OrderAccepted):
            _sale_op(_sale(groups, d.sale_id, item.event.room_id), item, "A", d.order_id, d.qty)
    return groups, misplaced
