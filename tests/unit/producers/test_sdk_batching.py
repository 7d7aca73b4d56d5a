"""SDK pieces that need no broker: validation, record planning, ids, settings."""

from __future__ import annotations

import orjson
import pytest

from kernel.settings import ConfigError
from producers.sdk import BatchValidationError, Prepared, Publisher, order_event_id, plan_records, prepare, prepare_all
from producers.settings import PublisherSettings, get_settings
from schemas.codec import decode_record
from schemas.events import ENVELOPES, CartAdded, Event, OrderPlaced, ValidationError, ViewerLiked, make_event, new_event
from schemas.topics import TopicNames

T0 = 1_700_000_000_000

NAMES = TopicNames("p.")


def order(i: int, sku: str = "sku-a") -> Event:
    return make_event(OrderPlaced(order_id=f"o-{i}", sale_id="s", sku=sku, qty=1, unit_price=1),
                      event_id=f"e-{sku}-{i}", ts=T0 + i, room_id="room-1", user_id="u")


def like(i: int, room: str = "room-1") -> Event:
    return make_event(ViewerLiked(), event_id=f"l-{i}", ts=T0 + i, room_id=room, user_id="u")


def prepared(events: list[Event]) -> list[Prepared]:
    items, errors = prepare_all(events)
    assert errors == []
    return items


def test_groups_by_topic_and_key_keeping_order() -> None:
    events = [order(0, "a"), like(0), order(1, "b"), order(2, "a"), like(1, "room-2"), order(3, "a")]
    records = plan_records(prepared(events), NAMES, max_events=500, max_bytes=900_000)
    got = [(r.topic, r.key, r.count, [e.event_id for e in decode_record(r.value).events]) for r in records]
    assert got == [
        ("p.orders", b"a", 3, ["e-a-0", "e-a-2", "e-a-3"]),
        ("p.engagement", b"room-1", 1, ["l-0"]),
        ("p.orders", b"b", 1, ["e-b-1"]),
        ("p.engagement", b"room-2", 1, ["l-1"]),
    ]
    assert records[1].value.startswith(b"{") and records[0].value.startswith(b"[")


def test_chunks_by_event_count() -> None:
    records = plan_records(prepared([order(i) for i in range(7)]), NAMES, max_events=3, max_bytes=900_000)
    assert [r.count for r in records] == [3, 3, 1]
    assert [e.event_id for r in records for e in decode_record(r.value).events] == [f"e-sku-a-{i}" for i in range(7)]


def test_one_event_per_record_when_batching_is_off() -> None:
    records = plan_records(prepared([order(i) for i in range(3)]), NAMES, max_events=1, max_bytes=900_000)
    assert [r.count for r in records] == [1, 1, 1]
    assert all(isinstance(orjson.loads(r.value), dict) for r in records)


def test_chunks_by_bytes() -> None:
    items = prepared([order(i) for i in range(10)])
    one = len(items[0].raw)
    limit = 2 + 3 * (one + 1)  # room for exactly three events in an array
    records = plan_records(items, NAMES, max_events=500, max_bytes=limit)
    assert [r.count for r in records] == [3, 3, 3, 1]
    assert all(len(r.value) <= limit for r in records)
    # a single event larger than the limit still goes, alone
    assert [r.count for r in plan_records(items[:2], NAMES, max_events=500, max_bytes=10)] == [1, 1]


def test_prepare_rechecks_events_and_dicts() -> None:
    assert prepare(order(1).to_dict()).event == order(1)
    broken = new_event(CartAdded(sku="s", qty=0), event_id="e", ts=T0, room_id="r", user_id="u")
    with pytest.raises(ValidationError) as info:
        prepare(broken)
    assert info.value.field == "data.qty"
    wrong_payload = ENVELOPES["cart.added"](v=1, event_id="e", ts=T0, room_id="r", user_id="u",  # type: ignore[call-arg]
                                            data=OrderPlaced(order_id="o", sale_id="s", sku="k", qty=1, unit_price=1))
    with pytest.raises(ValidationError) as info:
        prepare(wrong_payload)
    assert info.value.field.startswith("data.")
    huge = {**order(1).to_dict(), "ts": 2**64}  # beyond the epoch-ms range, and beyond what JSON readers carry
    with pytest.raises(ValidationError) as info:
        prepare(huge)
    assert info.value.field == "ts"


def test_batch_validation_error_names_index_and_field() -> None:
    bad = order(1).to_dict()
    bad["data"]["qty"] = "1"
    items, errors = prepare_all([order(0), bad, "x", order(3)])
    assert [i.event.event_id for i in items] == ["e-sku-a-0", "e-sku-a-3"]
    err = BatchValidationError(errors)
    assert isinstance(err, ValidationError)
    assert (err.index, err.field) == (1, "data.qty")
    assert str(err) == "event 1: data.qty: expected integer, got string (and 1 more invalid events)"
    assert [e.to_dict() for e in err.errors] == [
        {"index": 1, "field": "data.qty", "message": "expected integer, got string"},
        {"index": 2, "field": "", "message": "event must be a JSON object, got string"},
    ]


async def test_validation_comes_before_the_connection_check() -> None:
    pub = Publisher("127.0.0.1:1")
    with pytest.raises(BatchValidationError):
        await pub.publish_many([order(0), {"type": "x"}])
    with pytest.raises(RuntimeError, match="not started"):
        await pub.publish_many([order(0)])
    assert await pub.publish_prepared([]) == []


def test_order_event_id_is_stable_per_sale_and_order() -> None:
    assert order_event_id("s", "o") == order_event_id("s", "o")
    assert len({order_event_id("s", "o"), order_event_id("s2", "o"), order_event_id("s", "o2")}) == 3
    assert len(order_event_id("s" * 128, "o" * 128)) <= 128


def test_settings_from_env() -> None:
    s = get_settings({})
    assert s == PublisherSettings()
    assert (s.acks, s.linger_ms, s.compression, s.idempotence, s.batch_events) == ("all", 5, None, False, 500)
    s = get_settings({"FLASHSALE_BROKER_URL": "kafka://k1:9093;k2", "FLASHSALE_PRODUCER_ACKS": "-1",
                      "FLASHSALE_PRODUCER_COMPRESSION": "GZIP", "FLASHSALE_PRODUCER_IDEMPOTENCE": "true",
                      "FLASHSALE_PRODUCER_BATCH_EVENTS": "1", "FLASHSALE_REDIS_URL": "redis://:pw@r:6379/0"})
    assert s.bootstrap == "k1:9093,k2:9092" and s.acks == "all" and s.compression == "gzip" and s.idempotence
    assert "pw" not in repr(s)
    pub = Publisher.from_settings(s)
    assert pub.bootstrap == "k1:9093,k2:9092" and pub.max_batch_events == 1


@pytest.mark.parametrize(("name", "value"), [("PRODUCER_ACKS", "2"), ("PRODUCER_COMPRESSION", "brotli"),
                                             ("PRODUCER_LINGER_MS", "-1"), ("PRODUCER_BATCH_EVENTS", "0"),
                                             ("PRODUCER_IDEMPOTENCE", "maybe"), ("BROKER_URL", ",")])
def test_bad_settings(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"FLASHSALE_{name}" if name != "BROKER_URL" else "names no host"):
        get_settings({f"FLASHSALE_{name}": value})
