"""The stock script's order record: the JSON value of ``fs:{s:<sale>}:orders`` (``keys.sale_orders``), typed once."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

OrderState = Literal["reserved", "rejected", "sold", "expired", "cancelled"]
ORDER_HOLDS_UNITS: Final = frozenset({"reserved", "sold"})  # counted in the user's per-sale limit
ORDER_RELEASED: Final = frozenset({"expired", "cancelled"})


class OrderRecordError(ValueError):
    """An order record that is not valid JSON or does not match ``OrderRecord``."""


class OrderRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One order as ``stock.lua`` writes it; the one-letter names are the wire names (compact in Redis).

    Fields the script may add later are ignored, so readers keep working across a script change.
    """

    state: OrderState = msgspec.field(name="s")
    user_id: str = msgspec.field(name="u", default="")
    qty: int = msgspec.field(name="q", default=0)
    unit_price: int = msgspec.field(name="p", default=0)
    reserved_until: int = msgspec.field(name="d", default=0)  # epoch ms; 0 for a rejected order
    event_id: str = msgspec.field(name="e", default="")  # the order.placed that decided it
    reason: str = msgspec.field(name="r", default="")  # reject reason; "" when accepted
    ts: int = msgspec.field(name="t", default=0)  # event time of the order.placed
    sku: str = msgspec.field(name="k", default="")
    settled_at: int | None = msgspec.field(name="x", default=None)  # when it was paid, expired or cancelled

    @property
    def accepted(self) -> bool:
        return self.state != "rejected"

    @property
    def holds_units(self) -> bool:
        return self.state in ORDER_HOLDS_UNITS

    @property
    def released(self) -> bool:
        return self.state in ORDER_RELEASED


_decoder: Final = msgspec.json.Decoder(OrderRecord)


def parse_order_record(raw: bytes | str) -> OrderRecord:
    """Decode one value of the sale's orders hash; raises ``OrderRecordError`` naming what is wrong."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise OrderRecordError(str(exc)) from None
