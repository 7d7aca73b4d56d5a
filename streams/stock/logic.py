"""Pure functions of the stock core: input events → Lua ops, Lua results → output events."""

from __future__ import annotations

from typing import Any

from schemas.events import (
    Event,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderPaid,
    OrderPlaced,
    OrderRefunded,
    OrderRejected,
    SaleClosed,
    SaleOpened,
    SaleSoldOut,
    StockAdjusted,
    StockChanged,
    new_event,
)
from schemas.order_record import REFUND_REFUSALS

SYSTEM_USER = "system"


# Rejections that answer a repeated attempt (same user, new event id) or another user's reuse of an
# order id; the order's own decision stands.
ATTEMPT_REASONS = {"duplicate": "dup", "order_id_taken": "taken"}


def decision_id(sale_id: str, order_id: str) -> str:
    """The decision's event id: the same order id in two sales makes two ids (ids cannot contain ':')."""
    return f"dec:{sale_id}:{order_id}"
# Results of order.paid / order.cancelled / control ops that mean the input was bad: dead-lettered.
BAD_STATUSES = frozenset({"unknown_order", "not_accepted", "unknown_sale", "bad_op", "not_owner"})
# A refused order.refunded is dead-lettered with its reason (schemas.order_record.REFUND_REFUSALS).
REFUND_REFUSED = frozenset(REFUND_REFUSALS)


def sale_of(event: Event) -> str | None:
    return getattr(event.data, "sale_id", None)


def to_op(event: Event, now_ms: int | None = None) -> dict[str, Any] | None:
    """The Lua op for an order-side event, or None if the event does not belong on the orders topic.
    ``now_ms`` is the pipeline's time for the event (its record's timestamp): the sale window, the
    reservation deadline and lateness are judged by it, never by the client's ``ts`` (default)."""
    d = event.data
    ts = event.ts if now_ms is None else now_ms
    if isinstance(d, OrderPlaced):
        op: dict[str, Any] = {"op": "place", "order_id": d.order_id, "event_id": event.event_id,
                              "user_id": event.user_id, "qty": d.qty, "unit_price": d.unit_price, "sku": d.sku,
                              "ts": ts, "channel": event.channel}
        if event.referrer_id is not None:
            op["referrer_id"] = event.referrer_id
        return op
    if isinstance(d, OrderPaid):
        return {"op": "paid", "order_id": d.order_id, "event_id": event.event_id, "user_id": event.user_id,
                "ts": ts}
    if isinstance(d, OrderRefunded):
        return {"op": "refund", "order_id": d.order_id, "event_id": event.event_id, "user_id": event.user_id,
                "restock": d.restock, "amount": -1 if d.amount is None else d.amount, "ts": ts}
    if isinstance(d, OrderCancelled):
        return {"op": "cancel", "order_id": d.order_id, "event_id": event.event_id, "user_id": event.user_id,
                "ts": ts}
    if isinstance(d, SaleOpened):
        return {"op": "open", "event_id": event.event_id, "sale_id": d.sale_id, "sku": d.sku,
                "room_id": event.room_id, "price": d.price, "allotment": d.allotment,
                "per_user_limit": d.per_user_limit, "starts_at": d.starts_at, "ends_at": d.ends_at,
                "ttl_ms": d.reservation_ttl_s * 1000, "ts": ts,
                **({"title": d.title} if d.title else {}), **({"image_url": d.image_url} if d.image_url else {}),
                **({"commission_bps": d.commission_bps} if d.commission_bps is not None else {}),
                **({"head_commission_bps": d.head_commission_bps} if d.head_commission_bps is not None else {})}
    if isinstance(d, SaleClosed):
        return {"op": "close", "event_id": event.event_id, "ts": ts}
    if isinstance(d, StockAdjusted):
        return {"op": "adjust", "event_id": event.event_id, "delta": d.delta, "ts": ts}
    return None


def decision_event(order: Event, result: dict[str, Any], ts: int | None = None) -> Event:
    """The order.accepted / order.rejected event answering ``order`` (deterministic event id), stamped
    ``ts`` (the order's time as the pipeline counts it; default: the order's own ``ts``)."""
    d = order.data
    assert isinstance(d, OrderPlaced)
    payload: OrderAccepted | OrderRejected
    if result["out"] == "accepted":
        event_id = decision_id(d.sale_id, d.order_id)
        payload = OrderAccepted(order_id=d.order_id, sale_id=d.sale_id, sku=d.sku, qty=int(result["q"]),
                                unit_price=int(result["p"]), reserved_until=int(result["d"]))
    else:
        reason = str(result["r"])
        if reason in ATTEMPT_REASONS:  # answers one attempt, not the order: an id of its own
            event_id = f"{ATTEMPT_REASONS[reason]}:{d.sale_id}:{order.event_id}"
        else:
            event_id = decision_id(d.sale_id, d.order_id)
        payload = OrderRejected(order_id=d.order_id, sale_id=d.sale_id, sku=d.sku, qty=d.qty, reason=reason,  # type: ignore[arg-type]  # the script answers one of REJECT_REASONS
                                detail=str(result.get("detail") or ""))
    return new_event(payload, event_id=event_id, ts=order.ts if ts is None else ts, room_id=order.room_id,
                     user_id=order.user_id, channel=order.channel, referrer_id=order.referrer_id)


def stock_changed_event(adjust: Event, result: dict[str, Any]) -> Event:
    """The stock.changed event saying what a stock.adjusted did (deterministic id: replays re-emit it)."""
    d = adjust.data
    assert isinstance(d, StockAdjusted)
    payload = StockChanged(sale_id=d.sale_id, sku=d.sku, delta=d.delta, applied=int(result["applied"]),
                           removal_pending=int(result["pending"]), allotted=int(result["allotted"]),
                           available=int(result["available"]))
    return new_event(payload, event_id=f"adj:{d.sale_id}:{adjust.event_id}", ts=adjust.ts, room_id=adjust.room_id,
                     user_id=adjust.user_id, channel=adjust.channel)


def outbox_event(item: dict[str, Any]) -> Event:
    """An event the Lua scripts queued in a sale's outbox (sell-out, expiry, cancellation)."""
    if item["k"] == "sold_out":
        return new_event(SaleSoldOut(
            sale_id=str(item["sale_id"]), sku=str(item["sku"]), sold_out_at=int(item["at"]),
            opened_at=int(item["opened_at"]), allotted=int(item["allotted"])),
            event_id=f"soldout:{item['sale_id']}", ts=int(item["at"]), room_id=str(item["room_id"]),
            user_id=SYSTEM_USER)
    if item["k"] == "expired":
        return new_event(OrderExpired(
            order_id=str(item["order_id"]), sale_id=str(item["sale_id"]), sku=str(item["sku"]),
            qty=int(item["qty"]), cause=item["cause"]),
            event_id=f"exp:{item['sale_id']}:{item['order_id']}", ts=int(item["at"]), room_id=str(item["room_id"]),
            user_id=str(item["user_id"]))
    raise ValueError(f"unknown outbox item kind {item.get('k')!r}")
