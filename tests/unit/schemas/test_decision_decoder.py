"""The light decision decoder gives every decision reader the same answer as the full contract."""

from __future__ import annotations

import pytest

from producers.decisions import decision_from_event, decision_from_item
from schemas.codec import decode_decisions, encode_batch, encode_event
from schemas.events import (
    Event,
    OrderAccepted,
    OrderExpired,
    OrderRejected,
    SaleSoldOut,
    StockChanged,
    make_event,
)

TS = 1_700_000_000_000


def _ev(payload: object, n: int, user: str = "u-1") -> Event:
    return make_event(payload, event_id=f"e-{n}", ts=TS, room_id="room-1", user_id=user)  # type: ignore[arg-type]


def decisions_topic_batch() -> list[Event]:
    return [
        _ev(OrderAccepted(order_id="o-1", sale_id="s-1", sku="k", qty=2, unit_price=500, reserved_until=TS + 1), 1),
        _ev(OrderRejected(order_id="o-2", sale_id="s-1", sku="k", qty=1, reason="sold_out", detail="x"), 2, "u-2"),
        _ev(OrderRejected(order_id="o-3", sale_id="", sku="", qty=0, reason="order_id_taken"), 3, "u-3"),
        _ev(OrderExpired(order_id="o-1", sale_id="s-1", sku="k", qty=2, cause="ttl"), 4),
        _ev(SaleSoldOut(sale_id="s-1", sku="k", sold_out_at=TS, opened_at=TS, allotted=5), 5),
        _ev(StockChanged(sale_id="s-1", sku="k", delta=-3, applied=-1, removal_pending=2, allotted=4,
                         available=0), 6),
    ]


def _same(a: object, b: object) -> bool:
    return a.to_dict() == b.to_dict() and a.user_id == b.user_id  # type: ignore[attr-defined]


def test_batch_gives_the_full_decoders_decisions() -> None:
    events = decisions_topic_batch()
    items = decode_decisions(encode_batch(events))
    assert items is not None
    light = [decision_from_item(i) for i in items]
    full = [d for d in (decision_from_event(e) for e in events) if d is not None]
    assert len(light) == len(full) == 3
    assert all(_same(a, b) for a, b in zip(light, full, strict=True))


def test_single_event_record() -> None:
    ev = decisions_topic_batch()[0]
    items = decode_decisions(encode_event(ev))
    assert items is not None and len(items) == 1
    assert _same(decision_from_item(items[0]), decision_from_event(ev))


@pytest.mark.parametrize("raw", [None, b"", b"{", b"[1]", b'{"type": 3}', b'{"type": "order.accepted", "data": []}',
                                 b'{"type": "order.accepted", "data": {"order_id": 7}}'])
def test_wrong_shape_is_none(raw: bytes | None) -> None:
    assert decode_decisions(raw) is None


def test_items_without_an_order_are_skipped() -> None:
    assert decode_decisions(b'[{"type": "order.accepted", "data": {}}, {"type": "spike.detected"}]') == []
