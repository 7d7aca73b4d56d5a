"""The stock script's order record: the JSON value of ``fs:{s:<sale>}:orders`` (``keys.sale_orders``), typed once."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

OrderState = Literal["reserved", "rejected", "sold", "expired", "cancelled", "refunded"]
ORDER_STATES: Final = ("reserved", "rejected", "sold", "expired", "cancelled", "refunded")
ORDER_HOLDS_UNITS: Final = frozenset({"reserved", "sold"})  # counted in the user's per-sale limit
ORDER_RELEASED: Final = frozenset({"expired", "cancelled"})
# Why the stock core refused an order.refunded (dead-lettered with this reason): no such order, another
# user's order, not sold (reserved, rejected, expired, cancelled), refunded before by another event, a
# partial amount. A refund event answered once keeps its answer: a replay changes nothing.
REFUND_REFUSALS: Final = ("unknown_order", "not_owner", "not_paid", "already_refunded", "amount_mismatch")


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
    channel: str = msgspec.field(name="c", default="")  # the order.placed's channel ("" before issue 16)
    referrer_id: str | None = msgspec.field(name="f", default=None)  # its referrer (distributor), if any
    refund_event_id: str | None = msgspec.field(name="n", default=None)  # the order.refunded that refunded it
    refunded_at: int | None = msgspec.field(name="y", default=None)  # the refund's pipeline time
    restocked: bool = msgspec.field(name="w", default=False)  # the refund put its units back on sale

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


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One paid share_link order's commission, as ``stock.lua`` writes it in ``fs:{s:<sale>}:ledger``
    (``keys.sale_ledger``), in integer minor units: ``commission = floor(amount * bps / 10000)``."""

    distributor: str = msgspec.field(name="d")
    amount: int = msgspec.field(name="g", default=0)  # what the order was paid (units x unit price)
    bps: int = msgspec.field(name="b", default=0)  # the sale's commission_bps when it was paid
    commission: int = msgspec.field(name="c", default=0)
    clawed_back: int = msgspec.field(name="k", default=0)  # the commission taken back by a refund
    paid_at: int = msgspec.field(name="t", default=0)
    refunded_at: int | None = msgspec.field(name="y", default=None)

    @property
    def net(self) -> int:
        return self.commission - self.clawed_back


class DistributorTotals(msgspec.Struct, frozen=True, kw_only=True):
    """A distributor's totals in one sale (``keys.sale_distributors``); a room's are the sum over its sales."""

    orders: int = msgspec.field(name="o", default=0)  # paid orders (refunded ones included)
    paid_gmv: int = msgspec.field(name="g", default=0)
    earned: int = msgspec.field(name="e", default=0)  # commission accrued on payment
    refunds: int = msgspec.field(name="r", default=0)  # of those orders, refunded
    refunded_gmv: int = msgspec.field(name="rg", default=0)
    clawed_back: int = msgspec.field(name="k", default=0)

    @property
    def net(self) -> int:
        return self.earned - self.clawed_back

    def __add__(self, other: DistributorTotals) -> DistributorTotals:
        return DistributorTotals(orders=self.orders + other.orders, paid_gmv=self.paid_gmv + other.paid_gmv,
                                 earned=self.earned + other.earned, refunds=self.refunds + other.refunds,
                                 refunded_gmv=self.refunded_gmv + other.refunded_gmv,
                                 clawed_back=self.clawed_back + other.clawed_back)


def commission(amount: int, bps: int) -> int:
    """floor(amount * bps / 10000) in exact integers: the rounding rule ``stock.lua`` applies (it splits
    the amount so no product exceeds 2**53, where Lua's doubles stop being exact)."""
    return amount * bps // 10_000


_ledger_decoder: Final = msgspec.json.Decoder(LedgerEntry)
_totals_decoder: Final = msgspec.json.Decoder(DistributorTotals)


def parse_ledger_entry(raw: bytes | str) -> LedgerEntry:
    try:
        return _ledger_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise OrderRecordError(str(exc)) from None


def parse_distributor_totals(raw: bytes | str) -> DistributorTotals:
    try:
        return _totals_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise OrderRecordError(str(exc)) from None


def parse_order_record(raw: bytes | str) -> OrderRecord:
    """Decode one value of the sale's orders hash; raises ``OrderRecordError`` naming what is wrong."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise OrderRecordError(str(exc)) from None
