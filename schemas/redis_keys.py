"""Redis key layout shared by the worker (writer) and readers (gateway, dashboard, SDK).

Every key of one sale shares the hash tag ``{s:<sale_id>}`` and every key of one room the hash
tag ``{r:<room_id>}``, so each Lua script touches one cluster slot and the design runs on
Redis Cluster unchanged.
"""

from __future__ import annotations

from typing import Final

NS: Final = "fs"

# Fields of the sale hash (written only by the stock Lua script).
SALE_FIELDS: Final = (
    "sale_id", "sku", "room_id", "price", "allotted", "available", "reserved", "sold", "per_user_limit",
    "starts_at", "ends_at", "ttl_ms", "status", "opened_at", "sold_out_at", "soldout", "attempts",
    "accepted", "rej_sold_out", "rej_limit_exceeded", "rej_sale_not_active", "rej_duplicate", "rej_invalid",
    "expired", "cancelled", "paid", "gmv",
)
ORDER_STATES: Final = ("reserved", "rejected", "sold", "expired", "cancelled")


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


def sales_index() -> str:
    """Set: every sale id the pipeline has seen (sweeper and dashboard walk it)."""
    return f"{NS}:sales"


def active_sales() -> str:
    """Set: sales still open or holding reservations; the reservation sweeper walks it."""
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
