"""One valid payload per event type, shared by the schema contract tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemas.events as ev
from schemas.events import Event, Payload, make_event

SAMPLES: dict[str, Payload] = {p.TYPE: p for p in (
    ev.ViewerJoined(session_id="s-1"),
    ev.ViewerLeft(),
    ev.ViewerLiked(count=3),
    ev.ViewerCommented(text="好看! 🎉"),
    ev.ViewerShared(target="community_group"),
    ev.ProductClicked(sku="sku-1"),
    ev.CartAdded(sku="sku-1", qty=2),
    ev.CartRemoved(sku="sku-1"),
    ev.SaleOpened(sale_id="sale-1", sku="sku-1", price=9900, allotment=100, per_user_limit=2,
                  starts_at=1_700_000_000_000, ends_at=1_700_000_600_000, reservation_ttl_s=120, commission_bps=300,
                  head_commission_bps=100),
    ev.SaleClosed(sale_id="sale-1", sku="sku-1"),
    ev.StockAdjusted(sale_id="sale-1", sku="sku-1", delta=-5, reason="damaged"),
    ev.OrderPlaced(order_id="o-1", sale_id="sale-1", sku="sku-1", qty=1, unit_price=9900),
    ev.OrderPaid(order_id="o-1", sale_id="sale-1", sku="sku-1", amount=9900),
    ev.OrderCancelled(order_id="o-1", sale_id="sale-1", sku="sku-1"),
    ev.OrderRefunded(order_id="o-1", sale_id="sale-1", sku="sku-1", restock=True, amount=9900),
    ev.OrderAccepted(order_id="o-1", sale_id="sale-1", sku="sku-1", qty=1, unit_price=9900,
                     reserved_until=1_700_000_120_000),
    ev.OrderRejected(order_id="o-2", sale_id="sale-1", sku="sku-1", qty=1, reason="sold_out", detail="0 left"),
    ev.OrderExpired(order_id="o-1", sale_id="sale-1", sku="sku-1", qty=1, cause="cancelled"),
    ev.SaleSoldOut(sale_id="sale-1", sku="sku-1", sold_out_at=1_700_000_030_000, opened_at=1_700_000_000_000,
                   allotted=100),
    ev.StockChanged(sale_id="sale-1", sku="sku-1", delta=-10, applied=-4, removal_pending=6, allotted=90,
                    available=0),
    ev.SpikeDetected(scope="room", subject_id="room-1", metric="likes_per_s", rate=120.5, baseline=10.0,
                     factor=12.05, window_s=10),
)}


def sample_event(type_: str, **envelope: Any) -> Event:
    kwargs: dict[str, Any] = {"event_id": f"e-{type_}", "ts": 1_700_000_000_123, "room_id": "room-1",
                              "user_id": "u-1", "channel": "live_room", "referrer_id": "kol-7"}
    kwargs.update(envelope)
    return make_event(SAMPLES[type_], **kwargs)


def sample_dict(type_: str = "order.placed") -> dict[str, Any]:
    return sample_event(type_).to_dict()


Mutator = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutator:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = obj
        for p in parents:
            target = target[p]
        target[last] = value
    return mutate


def _delete(path: str) -> Mutator:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = obj
        for p in parents:
            target = target[p]
        del target[last]
    return mutate


def _both(first: Mutator, second: Mutator) -> Mutator:
    def mutate(obj: dict[str, Any]) -> None:
        first(obj)
        second(obj)
    return mutate


# (case id, event type, mutation, field named in the error, fragment of the message, codec reason)
ERROR_CASES: list[tuple[str, str, Mutator, str, str, str]] = [
    ("unknown type", "order.placed", _set("type", "order.teleported"), "type", "unknown event type", "unknown_type"),
    ("type not a string", "order.placed", _set("type", 7), "type", "expected string", "invalid_event"),
    ("missing type", "order.placed", _delete("type"), "type", "missing required field", "invalid_event"),
    ("missing envelope field", "order.placed", _delete("event_id"), "event_id", "missing", "invalid_event"),
    ("missing data", "viewer.left", _delete("data"), "data", "missing", "invalid_event"),
    ("missing payload field", "order.placed", _delete("data.sku"), "data.sku", "missing", "invalid_event"),
    ("bool for int", "order.placed", _set("data.qty", True), "data.qty", "got boolean", "invalid_event"),
    ("float for int", "order.placed", _set("data.qty", 1.0), "data.qty", "got number", "invalid_event"),
    ("string for int", "order.placed", _set("data.unit_price", "99"), "data.unit_price", "got string",
     "invalid_event"),
    ("bool for float", "spike.detected", _set("data.rate", False), "data.rate", "got boolean", "invalid_event"),
    ("null for required", "order.placed", _set("data.sku", None), "data.sku", "got null", "invalid_event"),
    ("int for string", "order.placed", _set("user_id", 42), "user_id", "expected string", "invalid_event"),
    ("bool for ts", "order.placed", _set("ts", True), "ts", "expected integer", "invalid_event"),
    ("empty string", "order.placed", _set("room_id", ""), "room_id", "must not be empty", "invalid_event"),
    ("too long", "order.placed", _set("data.order_id", "x" * 129), "data.order_id", "longer than 128",
     "invalid_event"),
    ("comment too long", "viewer.commented", _set("data.text", "x" * 2001), "data.text", "longer than 2000",
     "invalid_event"),
    ("envelope enum", "order.placed", _set("channel", "tv"), "channel", "must be one of", "invalid_event"),
    ("payload enum", "order.rejected", _set("data.reason", "bored"), "data.reason", "must be one of",
     "invalid_event"),
    ("below min", "order.placed", _set("data.qty", 0), "data.qty", "must be >= 1", "invalid_event"),
    ("above max", "order.placed", _set("data.qty", 10_001), "data.qty", "must be <= 10000", "invalid_event"),
    ("negative ts", "order.placed", _set("ts", -1), "ts", "must be >= 946684800000", "invalid_event"),
    ("ts in seconds", "order.placed", _set("ts", 1_700_000_000), "ts", "looks like seconds", "invalid_event"),
    ("ts beyond 2100", "order.placed", _set("ts", 2**63 - 1), "ts", "must be <= 4102444800000", "invalid_event"),
    ("sale end beyond int64 in Lua", "sale.opened", _set("data.ends_at", 2**63 - 1), "data.ends_at", "must be <=",
     "invalid_event"),
    ("price beyond what cjson prints exactly", "order.placed", _set("data.unit_price", 10**14), "data.unit_price",
     "must be <= 99999999999999", "invalid_event"),
    ("negative delta beyond min", "stock.adjusted", _set("data.delta", -100_000_001), "data.delta", ">=",
     "invalid_event"),
    ("id with a hash-tag brace", "order.placed", _set("data.sale_id", "s}1"), "data.sale_id", "may contain only",
     "invalid_event"),
    ("id with a key separator", "cart.added", _set("data.sku", "sku:u:x"), "data.sku", "may contain only",
     "invalid_event"),
    ("id with CR/LF", "order.placed", _set("data.order_id", "o-1\r\nSet-Cookie: x"), "data.order_id",
     "may contain only", "invalid_event"),
    ("room id with a slash", "viewer.liked", _set("room_id", "r/../x"), "room_id", "may contain only",
     "invalid_event"),
    ("unknown envelope field", "order.placed", _set("color", "red"), "color", "unknown envelope field",
     "invalid_event"),
    ("unknown payload field", "order.placed", _set("data.coupon", "X"), "data.coupon", "unknown field",
     "invalid_event"),
    ("bad version", "order.placed", _set("v", 2), "v", "unsupported schema version", "bad_version"),
    ("version zero", "order.placed", _set("v", 0), "v", "unsupported schema version", "bad_version"),
    ("bad version wins over unknown fields", "order.placed", _both(_set("v", 3), _set("data.coupon", "X")), "v",
     "unsupported", "bad_version"),
    ("version as string", "order.placed", _set("v", "1"), "v", "expected integer", "invalid_event"),
    ("data not an object", "order.placed", _set("data", [1, 2]), "data", "expected object, got array",
     "invalid_event"),
    ("sale window reversed", "sale.opened", _set("data.ends_at", 1_700_000_000_000), "data.ends_at",
     "after starts_at", "invalid_event"),
]
