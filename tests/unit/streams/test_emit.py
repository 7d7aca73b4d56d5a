"""Output records stay under the consumers' record size limit (FLASHSALE_MAX_RECORD_BYTES)."""

from __future__ import annotations

import orjson

from schemas.codec import decode_record
from schemas.events import OrderAccepted, make_event
from streams.emit import CHUNK, batches


def _decisions(n: int, sku: str = "sku-1") -> list:
    return [make_event(OrderAccepted(order_id=f"o{i}", sale_id="s1", sku=sku, qty=1, unit_price=100,
                                     reserved_until=1_700_000_000_000),
                       event_id=f"d{i}", ts=1_700_000_000_000 + i, room_id="r1", user_id=f"u{i}") for i in range(n)]


def test_batches_split_by_bytes_and_keep_order() -> None:
    events = _decisions(900)
    limit = 16_384
    out = batches(events, max_bytes=limit)
    assert len(out) > 1
    assert all(len(value) <= limit for _, value in out)
    ids = [item["event_id"] for _, value in out for item in orjson.loads(value)]
    assert ids == [e.event_id for e in events]
    for _, value in out:  # every record decodes cleanly under the same limit
        decoded = decode_record(value, limit)
        assert not decoded.errors


def test_batches_split_by_count_without_a_byte_limit() -> None:
    out = batches(_decisions(CHUNK + 5))
    assert [len(orjson.loads(v)) for _, v in out] == [CHUNK, 5]


def test_a_single_event_over_the_limit_is_still_sent_alone() -> None:
    out = batches(_decisions(3), max_bytes=10)
    assert [len(orjson.loads(v)) for _, v in out] == [1, 1, 1]
