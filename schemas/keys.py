"""Every Redis key name: the stock core's and the counters', for the worker (writer) and readers alike.

Every key of one sale shares the hash tag ``{s:<sale_id>}`` and every key of one room the hash
tag ``{r:<room_id>}``, so each Lua script touches one cluster slot and the design runs on
Redis Cluster unchanged. The counters' keys sit under a ``cnt`` segment (the Lua scripts derive
the same names from the base key they are given), so they never collide with the stock keys.
"""

from __future__ import annotations

from typing import Final

NS: Final = "fs"

# Fields of the sale hash (written only by the stock Lua script).
SALE_FIELDS: Final = (
    "sale_id", "sku", "room_id", "price", "allotted", "available", "reserved", "sold", "per_user_limit",
    "starts_at", "ends_at", "ttl_ms", "status", "opened_at", "sold_out_at", "soldout", "attempts",
    "accepted", "rej_sold_out", "rej_limit_exceeded", "rej_sale_not_active", "rej_duplicate", "rej_invalid",
    "expired", "cancelled", "paid", "gmv", "refunded", "restocked", "refunds", "refunded_gmv", "commission_bps",
    "head_commission_bps",
)


def sale_tag(sale_id: str) -> str:
    return "{s:" + sale_id + "}"


def room_tag(room_id: str) -> str:
    return "{r:" + room_id + "}"


def sale(sale_id: str) -> str:
    """Hash: the sale's definition, stock (allotted/available/reserved/sold) and counters."""
    return f"{NS}:{sale_tag(sale_id)}:sale"


def sale_orders(sale_id: str) -> str:
    """Hash: order_id → JSON order record (state, user, qty, price, deadline, event id, reason)."""
    return f"{NS}:{sale_tag(sale_id)}:orders"


def sale_users(sale_id: str) -> str:
    """Hash: user_id → units the user holds (reserved + sold) in this sale."""
    return f"{NS}:{sale_tag(sale_id)}:users"


def sale_deadlines(sale_id: str) -> str:
    """Sorted set: order_id scored by reservation deadline (epoch ms)."""
    return f"{NS}:{sale_tag(sale_id)}:deadlines"


def sale_dups(sale_id: str) -> str:
    """Hash: event_id → order_id for duplicate attempts already answered (idempotent replays)."""
    return f"{NS}:{sale_tag(sale_id)}:dups"


def sale_applied(sale_id: str) -> str:
    """Set: event ids of applied control events (sale.opened, stock.adjusted, sale.closed)."""
    return f"{NS}:{sale_tag(sale_id)}:applied"


def sale_outbox(sale_id: str) -> str:
    """Sorted set: pending output events (JSON) scored by lease time; drained at least once."""
    return f"{NS}:{sale_tag(sale_id)}:outbox"


def sale_ledger(sale_id: str) -> str:
    """Hash: order_id → JSON commission entry of a paid share_link order (``schemas.order_record.LedgerEntry``):
    distributor, paid amount, rate, commission, clawed back; written once by the payment, once by the refund."""
    return f"{NS}:{sale_tag(sale_id)}:ledger"


def sale_distributors(sale_id: str) -> str:
    """Hash: distributor (referrer_id) → JSON totals in this sale (``schemas.order_record.DistributorTotals``):
    orders paid, paid GMV, commission earned, orders refunded, refunded GMV, commission clawed back."""
    return f"{NS}:{sale_tag(sale_id)}:dist"


def sales_index() -> str:
    """Set: every sale id the pipeline has seen (sweeper and dashboard walk it)."""
    return f"{NS}:sales"


def active_sales() -> str:
    """Set: sales still open or holding reservations or outbox items; the sweeper walks it. A sale
    leaves it only through ``retire.lua`` (hash fields ``retiring``, ``retiring_until``)."""
    return f"{NS}:sales:active"


def sale_partitions() -> str:
    """Hash: sale_id → partition of the orders topic its events arrive on (as the stock agent saw
    them); a worker's sweeper walks only the active sales on partitions it owns."""
    return f"{NS}:sales:partition"


def room_sales(room_id: str) -> str:
    """Set: sale ids opened in a room."""
    return f"{NS}:{room_tag(room_id)}:sales"


def rooms_index() -> str:
    """Sorted set: room_id scored by last event time (epoch ms); the dashboard's room list."""
    return f"{NS}:rooms"


# Counters (room and sale): totals, series, funnel HyperLogLogs, leaderboards, spikes.

ALL: Final = "*"  # the "any channel" / "any SKU" slot of funnel keys
STAGES: Final = ("viewers", "clickers", "carters", "orderers", "payers")
STAGE_CODES: Final = {"viewers": "v", "clickers": "k", "carters": "a", "orderers": "o", "payers": "p"}
# Logical topics → the one-letter stream code used in watermark / dedupe key names.
STREAM_CODES: Final = {"engagement": "e", "orders": "o", "order-decisions": "d"}


def room_base(room_id: str) -> str:
    """Hash: the room's totals (joins, likes, ..., gmv, peak) and state (watermarks, newest times, spikes)."""
    return f"{NS}:{room_tag(room_id)}:cnt"


def room_online(room_id: str) -> str:
    """Sorted set: user_id → last event time (ms) of viewers currently online."""
    return room_base(room_id) + ":on"


def room_left(room_id: str) -> str:
    """Sorted set: user_id → time (ms) of the viewer's latest leave within the stale window; an
    event stamped at or before it does not count the viewer online again."""
    return room_base(room_id) + ":off"


def room_series(room_id: str) -> str:
    """Hash: ``<epoch second><e|o|v>`` → packed per-second counts (engagement, orders, viewers)."""
    return room_base(room_id) + ":sec"


def room_hll(room_id: str, stage: str, channel: str = ALL, sku: str = ALL) -> str:
    """HyperLogLog: distinct users of a funnel stage over the whole stream."""
    return f"{room_base(room_id)}:u:{STAGE_CODES[stage]}:{channel}:{sku}"


def room_hll_minute(room_id: str, minute: int, stage: str, channel: str = ALL, sku: str = ALL) -> str:
    """HyperLogLog: distinct users of a funnel stage in one event-time minute (TTL)."""
    return f"{room_base(room_id)}:uw:{minute}:{STAGE_CODES[stage]}:{channel}:{sku}"


def room_funnel(room_id: str) -> str:
    """Hash: ``o|p|g:<channel>:<sku>`` → orders placed, orders paid, GMV, over the whole stream."""
    return room_base(room_id) + ":f"


def room_funnel_minute(room_id: str, minute: int) -> str:
    """Hash: like room_funnel, for one event-time minute (TTL)."""
    return f"{room_base(room_id)}:fw:{minute}"


def room_skus(room_id: str) -> str:
    """Set: SKUs seen in the room's product / cart / order events."""
    return room_base(room_id) + ":skus"


def room_ref_orders(room_id: str) -> str:
    """Sorted set: referrer_id → orders placed through the referrer's share links."""
    return room_base(room_id) + ":ref:o"


def room_ref_gmv(room_id: str) -> str:
    """Sorted set: referrer_id → GMV (paid) through the referrer's share links."""
    return room_base(room_id) + ":ref:g"


def spikes(base: str) -> str:
    """Sorted set: spike alert id → alert time, recent ones (``base`` is a room or sale base key)."""
    return base + ":spk"


def spike_details(base: str) -> str:
    """Hash: spike alert id → alert JSON."""
    return base + ":spk:d"


def sale_base(sale_id: str) -> str:
    """Hash: the sale's counter state (watermarks, newest times, attempts/accepted totals, spike state)."""
    return f"{NS}:{sale_tag(sale_id)}:cnt"


def sale_series(sale_id: str) -> str:
    """Hash: ``<epoch second>`` → "attempts accepted accepted_units" in that second."""
    return sale_base(sale_id) + ":sec"

