"""Decode + validate cost per event on the worker's batch path, next to ``orjson.loads`` of the same bytes."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.markdown import table
from schemas.codec import decode_decisions, decode_record, encode_batch
from schemas.events import CartAdded, Event, OrderAccepted, OrderPlaced, OrderRejected, ViewerLiked, make_event

BATCH = 500
T0 = 1_764_600_000_000


def _orders() -> list[Event]:
    return [
        make_event(
            OrderPlaced(order_id=f"o-{i}", sale_id="sale-1", sku="sku-1", qty=1, unit_price=9900),
            event_id=f"e-{i}",
            ts=T0 + i,
            room_id="room-1",
            user_id=f"u-{i % 97}",
            channel="live_room",
        )
        for i in range(BATCH)
    ]


def _engagement() -> list[Event]:
    out: list[Event] = []
    for i in range(BATCH):
        payload = ViewerLiked(count=1) if i % 2 else CartAdded(sku="sku-1", qty=1)
        out.append(
            make_event(
                payload,
                event_id=f"l-{i}",
                ts=T0 + i,
                room_id="room-1",
                user_id=f"u-{i % 97}",
                channel="share_link",
                referrer_id="kol-7",
            )
        )
    return out


def _decisions() -> list[Event]:
    out: list[Event] = []
    for i in range(BATCH):
        payload = (
            OrderAccepted(
                order_id=f"o-{i}", sale_id="sale-1", sku="sku-1", qty=1, unit_price=9900, reserved_until=T0 + 300_000
            )
            if i % 3
            else OrderRejected(order_id=f"o-{i}", sale_id="sale-1", sku="sku-1", qty=1, reason="sold_out")
        )
        out.append(
            make_event(payload, event_id=f"dec:sale-1:o-{i}", ts=T0 + i, room_id="room-1", user_id=f"u-{i % 97}")
        )
    return out


def _per_event_us(fn: Callable[[], object], loops: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean µs per event of ``loops`` calls on a batch of BATCH events."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops / BATCH * 1e6)
    return statistics.median(samples)


def measure(loops: int = 400, repeats: int = 5) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, events in (("order.placed", _orders()), ("engagement (likes, carts)", _engagement())):
        raw = encode_batch(events)
        assert decode_record(raw).events == events  # the benchmark decodes what the worker would
        ref = _per_event_us(lambda raw=raw: orjson.loads(raw), loops, repeats)  # type: ignore[misc]
        ours = _per_event_us(lambda raw=raw: decode_record(raw), loops, repeats)  # type: ignore[misc]
        out[name] = {
            "batch_events": BATCH,
            "record_bytes": len(raw),
            "orjson_loads_us": round(ref, 3),
            "decode_validate_us": round(ours, 3),
            "ratio": round(ours / ref, 2),
        }
    # the gateway's decision reader: one typed decode of the five fields it needs (no validation)
    raw = encode_batch(_decisions())
    items = decode_decisions(raw)
    assert items is not None and len(items) == BATCH
    ref = _per_event_us(lambda: orjson.loads(raw), loops, repeats)
    full = _per_event_us(lambda: decode_record(raw), loops, repeats)
    light = _per_event_us(lambda: decode_decisions(raw), loops, repeats)
    out["decisions (gateway reader)"] = {
        "batch_events": BATCH,
        "record_bytes": len(raw),
        "orjson_loads_us": round(ref, 3),
        "decode_validate_us": round(light, 3),
        "ratio": round(light / ref, 2),
        "full_validate_us": round(full, 3),
    }
    return out


def bench(stack: Any, opts: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    log("decode: decode + validate vs orjson.loads, batches of 500 events")
    result = measure()
    summary = [
        (
            f"decode + validate, batch of {r['batch_events']} {name}",
            f"{r['decode_validate_us']} µs/event",
            f"orjson.loads {r['orjson_loads_us']} µs/event: {r['ratio']}x"
            + ("" if "full_validate_us" in r else " (target <= 1.5x)"),
        )
        for name, r in result.items()
    ]
    lines = [
        "## Decode and validate",
        "",
        "`schemas.codec.decode_record` (msgspec: decode and validate in one call) against `orjson.loads` of",
        "the same record bytes, in the same process and run; median of 5 repeats of 400 decodes. The",
        "decisions row is the gateway's reader, `schemas.codec.decode_decisions` (typed, not validated:",
        "the worker signed what it validated); full validation of the same batch is in the JSON.",
        "",
        *table(
            ("batch", "bytes", "orjson.loads µs/event", "decode + validate µs/event", "ratio"),
            [
                (
                    f"{BATCH} × {name}",
                    r["record_bytes"],
                    r["orjson_loads_us"],
                    r["decode_validate_us"],
                    f"{r['ratio']}x",
                )
                for name, r in result.items()
            ],
            "lrrrr",
        ),
    ]
    return {"results": result, "summary": summary, "markdown": "\n".join(lines)}
