"""The records a simulation plan is made of: scheduled events, sales, buyers' intents."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from schemas.events import Event, OrderCancelled, OrderPaid, new_event

from .model import SimulationParams


class Scheduled(NamedTuple):
    """One send: ``at_ms`` on the simulated clock (equal to the event's ts, except re-sends)."""

    at_ms: int
    seq: int
    event: Event
    duplicate: bool  # an exact re-send of an earlier event (same event_id and ts)


@dataclass(frozen=True, slots=True)
class SaleSpec:
    sale_id: str
    sku: str
    room_id: str
    price: int
    allotment: int
    per_user_limit: int
    ttl_s: int
    announce_ms: int
    starts_at: int
    ends_at: int
    closes: bool  # a sale.closed is part of the plan (at ends_at)


@dataclass(frozen=True, slots=True)
class Intent:
    """What the buyer of one order does if the order is accepted (drawn when the plan is built)."""

    order_id: str
    sale_id: str
    sku: str
    room_id: str
    user_id: str
    channel: str
    referrer_id: str | None
    qty: int
    unit_price: int
    placed_ts: int
    action: str  # pay | cancel | abandon
    delay_ms: int  # after placed_ts; for "pay" it may exceed the TTL (a late payment)

    def follow_up(self, ts: int) -> Event | None:
        """The order.paid / order.cancelled this buyer sends at ``ts``; None for abandoned orders."""
        if self.action == "pay":
            data: OrderPaid | OrderCancelled = OrderPaid(
                order_id=self.order_id, sale_id=self.sale_id, sku=self.sku, amount=self.qty * self.unit_price)
            event_id = f"pay:{self.order_id}"
        elif self.action == "cancel":
            data = OrderCancelled(order_id=self.order_id, sale_id=self.sale_id, sku=self.sku)
            event_id = f"cxl:{self.order_id}"
        else:
            return None
        return new_event(data, event_id=event_id, ts=ts, room_id=self.room_id, user_id=self.user_id,
                         channel=self.channel, referrer_id=self.referrer_id)


@dataclass
class Plan:
    """A time-ordered list of sends plus what the runner needs to follow up on decisions."""

    params: SimulationParams
    run_id: str
    t0_ms: int
    end_ms: int
    events: list[Scheduled]
    sales: list[SaleSpec]
    intents: dict[str, Intent]
    rooms: list[str]
    phases: list[tuple[int, str]] = field(default_factory=list)
    includes_payments: bool = False

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return (s.event for s in self.events)

    def phase_at(self, at_ms: float) -> str:
        if not self.phases:
            return "live"
        i = bisect_right([p[0] for p in self.phases], at_ms) - 1
        return self.phases[max(i, 0)][1]
