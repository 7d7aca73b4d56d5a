"""Redis key layout of the counters (the Lua scripts derive the same names from the base key).

Every room key carries the room's hash tag ``{r:<room>}`` and every sale key the sale's
``{s:<sale>}``, like ``schemas.redis_keys``; the counters' keys sit under a ``cnt`` segment so
they never collide with the stock core's sale keys.
"""

from __future__ import annotations

from typing import Final

from schemas.redis_keys import NS, room_tag, sale_tag

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


def sale_paid(sale_id: str) -> str:
    """Hash: order_id → "<event_id>|<amount>": the payment event counted for the order."""
    return sale_base(sale_id) + ":paid"
