"""Output records stay under the consumers' record size limit (FLASHSALE_MAX_RECORD_BYTES)."""

from __future__ import annotations

import asyncio

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


async def test_output_records_stay_below_the_producers_limit() -> None:
    """Issue 13, item 1: outputs were split at FLASHSALE_MAX_RECORD_BYTES (1,048,576) while Faust's
    producer refuses records above 1,000,000, which crashed the agent."""
    from schemas.codec import DEFAULT_MAX_RECORD_BYTES, OUTPUT_MAX_BYTES, PRODUCER_MAX_REQUEST_BYTES
    from schemas.events import OrderRejected
    from streams.emit import Outbound, flush
    from streams.settings import WorkerSettings

    sent: list[bytes] = []

    async def send(topic: str, key: bytes, value: bytes) -> object:
        sent.append(value)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    out = Outbound()
    long = "x" * 120
    for i in range(2000):  # ~1.3 KB each: a 1,000-event chunk is ~1.3 MB, over both limits
        out.add("order-decisions", make_event(
            OrderRejected(order_id=f"o{i}{long}", sale_id=f"s{long}", sku=f"k{long}", qty=1, reason="invalid",
                          detail="x" * 500),
            event_id=f"d{i}", ts=1_700_000_000_000 + i, room_id=f"r{long}", user_id=f"u{i}{long}"))
    await flush(send, out, DEFAULT_MAX_RECORD_BYTES)
    assert len(sent) > 2 and max(len(v) for v in sent) <= OUTPUT_MAX_BYTES < PRODUCER_MAX_REQUEST_BYTES
    assert sum(len(decode_record(v).events) for v in sent) == 2000
    assert WorkerSettings().faust_options()["producer_max_request_size"] == PRODUCER_MAX_REQUEST_BYTES


async def test_a_failed_send_is_retried_not_dead_lettered() -> None:
    """Faust wraps a failed send in ProducerSendError, which crashed the agent: now the batch waits."""
    from faust.exceptions import ProducerSendError

    from streams.emit import Record
    from streams.metrics import WorkerMetrics
    from streams.resilience import process

    calls: list[int] = []

    async def handle(records: object) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ProducerSendError("broker not reachable")

    async def send(topic: str, key: bytes, value: bytes) -> object:  # pragma: no cover - must not be called
        raise AssertionError(f"nothing is dead-lettered, got {topic}")

    await process(handle, [Record("orders", 0, 0, b"{}")], send, WorkerMetrics(), "stock")
    assert len(calls) == 3
