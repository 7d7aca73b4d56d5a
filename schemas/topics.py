"""Topic names, partition counts and the key rule, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from schemas.events import Event, Payload

ORDERS: Final = "orders"  # sale.*, stock.adjusted, order.placed/paid/cancelled/refunded; keyed by SKU
ENGAGEMENT: Final = "engagement"  # viewer.*, product.clicked, cart.*; keyed by room
DECISIONS: Final = "order-decisions"  # order.accepted/rejected/expired, sale.sold_out, stock.changed; by SKU
ALERTS: Final = "alerts"  # spike.detected; keyed by subject id
DEAD_LETTER: Final = "dead-letter"  # bad input with its reason; keyed by reason

DEFAULT_PARTITIONS: Final[dict[str, int]] = {
    ORDERS: 8, ENGAGEMENT: 8, DECISIONS: 8, ALERTS: 1, DEAD_LETTER: 1,
}

_ROUTES: Final[dict[str, str]] = {
    "viewer.joined": ENGAGEMENT, "viewer.left": ENGAGEMENT, "viewer.liked": ENGAGEMENT,
    "viewer.commented": ENGAGEMENT, "viewer.shared": ENGAGEMENT, "product.clicked": ENGAGEMENT,
    "cart.added": ENGAGEMENT, "cart.removed": ENGAGEMENT,
    "sale.opened": ORDERS, "sale.closed": ORDERS, "stock.adjusted": ORDERS,
    "order.placed": ORDERS, "order.paid": ORDERS, "order.cancelled": ORDERS,
    "order.refunded": ORDERS,
    "order.accepted": DECISIONS, "order.rejected": DECISIONS, "order.expired": DECISIONS,
    "sale.sold_out": DECISIONS, "stock.changed": DECISIONS, "spike.detected": ALERTS,
}


def logical_topic(event_type: str) -> str:
    return _ROUTES[event_type]


def partition_key(event: Event) -> bytes:
    """Order-side events by SKU (one SKU, one partition, one writer); the rest by room."""
    topic = _ROUTES[event.type]
    data: Payload = event.data
    if topic in (ORDERS, DECISIONS):
        return str(getattr(data, "sku")).encode()  # noqa: B009 - every order-side payload has one
    if topic == ALERTS:
        return str(getattr(data, "subject_id")).encode()  # noqa: B009
    return event.room_id.encode()


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Physical topic names under a deployment prefix (``flashsale.`` by default)."""

    prefix: str = "flashsale."

    def name(self, logical: str) -> str:
        return f"{self.prefix}{logical}"

    def for_event(self, event: Event) -> str:
        return self.name(_ROUTES[event.type])

    @property
    def orders(self) -> str:
        return self.name(ORDERS)

    @property
    def engagement(self) -> str:
        return self.name(ENGAGEMENT)

    @property
    def decisions(self) -> str:
        return self.name(DECISIONS)

    @property
    def alerts(self) -> str:
        return self.name(ALERTS)

    @property
    def dead_letter(self) -> str:
        return self.name(DEAD_LETTER)

    def all(self) -> dict[str, str]:
        return {logical: self.name(logical) for logical in DEFAULT_PARTITIONS}
