"""Builders for stock-core tests: sales, order attempts with retries and duplicates."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from schemas.events import Event, OrderCancelled, OrderPaid, OrderPlaced, SaleClosed, SaleOpened, make_event

T0 = 1_700_000_000_000


def sale_opened(sale_id: str = "s1", sku: str = "sku-1", allotment: int = 1000, limit: int = 2, price: int = 9900,
                ttl_s: int = 30, room: str = "room-1", ts: int = T0, starts: int = T0, ends: int = T0 + 3_600_000,
                event_id: str | None = None) -> Event:
    return make_event(SaleOpened(sale_id=sale_id, sku=sku, price=price, allotment=allotment, per_user_limit=limit,
                                 starts_at=starts, ends_at=ends, reservation_ttl_s=ttl_s),
                      event_id=event_id or f"open-{sale_id}", ts=ts, room_id=room, user_id="host")


def order(order_id: str, user: str, ts: int, sale_id: str = "s1", sku: str = "sku-1", qty: int = 1,
          price: int = 9900, room: str = "room-1", event_id: str | None = None) -> Event:
    return make_event(OrderPlaced(order_id=order_id, sale_id=sale_id, sku=sku, qty=qty, unit_price=price),
                      event_id=event_id or f"e-{order_id}", ts=ts, room_id=room, user_id=user, channel="live_room")


def paid(order_id: str, user: str, ts: int, sale_id: str = "s1", sku: str = "sku-1") -> Event:
    return make_event(OrderPaid(order_id=order_id, sale_id=sale_id, sku=sku), event_id=f"pay-{order_id}", ts=ts,
                      room_id="room-1", user_id=user)


def cancelled(order_id: str, user: str, ts: int, sale_id: str = "s1", sku: str = "sku-1") -> Event:
    return make_event(OrderCancelled(order_id=order_id, sale_id=sale_id, sku=sku), event_id=f"cxl-{order_id}",
                      ts=ts, room_id="room-1", user_id=user)


def closed(sale_id: str = "s1", sku: str = "sku-1", ts: int = T0) -> Event:
    return make_event(SaleClosed(sale_id=sale_id, sku=sku), event_id=f"close-{sale_id}", ts=ts,
                      room_id="room-1", user_id="host")


@dataclass
class Burst:
    events: list[Event] = field(default_factory=list)  # in send order, duplicates included
    attempts: set[str] = field(default_factory=set)  # distinct order ids
    duplicates: int = 0


def burst(users: int, attempts: int, seed: int = 7, dup_rate: float = 0.05, retry_rate: float = 0.3,
          big_qty_rate: float = 0.05, sale_id: str = "s1", sku: str = "sku-1", t0: int = T0 + 1000) -> Burst:
    """``attempts`` order events from ``users`` users: retries (same user, new order id), some qty 3
    (over a limit of 2), and exact duplicate sends (same event re-sent)."""
    rng = random.Random(seed)
    b = Burst()
    last_user: list[str] = []
    n = 0
    while len(b.events) < attempts:
        if last_user and rng.random() < retry_rate:
            user = rng.choice(last_user[-500:])
        else:
            user = f"u{rng.randrange(users)}"
            last_user.append(user)
        qty = 3 if rng.random() < big_qty_rate else 1
        ev = order(f"o{n}", user, t0 + n // 50, sale_id=sale_id, sku=sku, qty=qty)
        n += 1
        b.events.append(ev)
        b.attempts.add(ev.data.order_id)  # type: ignore[attr-defined]
        if rng.random() < dup_rate and len(b.events) < attempts:
            b.events.append(ev)
            b.duplicates += 1
    return b
