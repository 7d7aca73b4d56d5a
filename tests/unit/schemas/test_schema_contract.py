"""Contract tests: every event type round-trips, every validation error is reported precisely."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import orjson
import pytest

from schemas.codec import MAX_BATCH_ITEMS, dead_letter, decode_record, encode_batch, encode_event, repeated_keys
from schemas.events import (
    INPUT_TYPES,
    OUTPUT_TYPES,
    PAYLOADS,
    Event,
    OrderPlaced,
    SpikeDetected,
    ValidationError,
    all_errors,
    make_event,
    parse_event,
)
from schemas.topics import TopicNames, logical_topic, partition_key
from tests.unit.schemas.schema_samples import ERROR_CASES, SAMPLES, Mutator, sample_dict, sample_event

ALL_TYPES = sorted(PAYLOADS)
T0 = 1_700_000_000_000


def test_every_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(PAYLOADS)
    assert INPUT_TYPES | OUTPUT_TYPES == set(PAYLOADS) and not INPUT_TYPES & OUTPUT_TYPES


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_round_trip_single(type_: str) -> None:
    event = sample_event(type_)
    decoded = decode_record(encode_event(event))
    assert decoded.errors == []
    assert decoded.events == [event]
    assert decoded.events[0].to_dict() == event.to_dict()


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_round_trip_through_parse_event(type_: str) -> None:
    obj = orjson.loads(encode_event(sample_event(type_)))
    assert parse_event(obj) == sample_event(type_)


def test_round_trip_batch_of_every_type() -> None:
    events = [sample_event(t, event_id=f"b-{i}") for i, t in enumerate(ALL_TYPES)]
    decoded = decode_record(encode_batch(events))
    assert decoded.errors == []
    assert decoded.events == events


def test_optional_fields_and_defaults() -> None:
    event = make_event(OrderPlaced(order_id="o", sale_id="s", sku="k", qty=1, unit_price=0),
                       event_id="e", ts=T0, room_id="r", user_id="u")
    out = event.to_dict()
    # fields at their default are left out of the wire form and restored by every reader
    assert event.channel == "other" and "referrer_id" not in out and parse_event(out).channel == "other"
    minimal = {"type": "viewer.left", "v": 1, "event_id": "e", "ts": T0, "room_id": "r", "user_id": "u",
               "data": {}}
    parsed = parse_event(minimal)
    assert parsed.channel == "other" and parsed.referrer_id is None
    with_null = {**minimal, "referrer_id": None, "data": {"session_id": None}}
    assert parse_event(with_null) == parsed


def test_every_type_routes_to_a_topic_and_key() -> None:
    names = TopicNames("x.")
    for type_ in ALL_TYPES:
        event = sample_event(type_)
        assert names.for_event(event).startswith("x.")
        key = partition_key(event)
        if logical_topic(type_) in ("orders", "order-decisions"):
            assert key == b"sku-1"
        elif logical_topic(type_) == "engagement":
            assert key == b"room-1"
        else:
            assert key == b"room-1" and type_ == "spike.detected"  # subject_id of the sample


@pytest.mark.parametrize(("type_", "mutate", "field", "fragment", "reason"),
                         [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_validation_errors(type_: str, mutate: Mutator, field: str, fragment: str, reason: str) -> None:
    obj = copy.deepcopy(sample_dict(type_))
    mutate(obj)
    with pytest.raises(ValidationError) as info:
        parse_event(obj)
    assert info.value.field == field
    assert fragment in info.value.message
    assert str(info.value).startswith(f"{field}: ")

    decoded = decode_record(orjson.dumps(obj))
    assert decoded.events == []
    [bad] = decoded.errors
    assert (bad.index, bad.reason) == (0, reason)
    assert orjson.loads(bad.raw) == obj


@pytest.mark.parametrize("value", [[1], "text", 3, None, True])
def test_not_an_object(value: Any) -> None:
    with pytest.raises(ValidationError, match="event must be a JSON object"):
        parse_event(value)
    decoded = decode_record(orjson.dumps(value))
    assert decoded.events == [] and len(decoded.errors) >= 1


def test_nested_array_in_a_batch_is_not_an_object() -> None:
    decoded = decode_record(orjson.dumps([[sample_dict()]]))
    [bad] = decoded.errors
    assert bad.index == 0 and bad.reason == "invalid_event" and "JSON object" in bad.detail


@pytest.mark.parametrize("raw", [b"{", b"not json", b'{"type": "order.placed",}', b"\xff\xfe", b""])
def test_malformed_json(raw: bytes) -> None:
    decoded = decode_record(raw)
    assert decoded.events == []
    [bad] = decoded.errors
    assert (bad.index, bad.reason, bad.raw) == (-1, "malformed_json", raw)


def test_none_record_value() -> None:
    [bad] = decode_record(None).errors
    assert bad.reason == "malformed_json" and bad.index == -1


def test_batch_with_some_bad_items_keeps_the_good_ones() -> None:
    good = [sample_dict("order.placed"), sample_dict("cart.added")]
    bad_qty = {**sample_dict("order.placed"), "event_id": "bad-1"}
    bad_qty["data"] = {**bad_qty["data"], "qty": True}
    unknown = {**sample_dict("order.placed"), "type": "nope"}
    decoded = decode_record(orjson.dumps([good[0], bad_qty, good[1], unknown, "junk"]))
    assert [e.to_dict() for e in decoded.events] == good
    assert [(b.index, b.reason) for b in decoded.errors] == [(1, "invalid_event"), (3, "unknown_type"),
                                                            (4, "invalid_event")]
    assert "data.qty" in decoded.errors[0].detail
    assert orjson.loads(decoded.errors[0].raw) == bad_qty


def test_empty_batch_is_an_error() -> None:
    decoded = decode_record(b"[]")
    assert decoded.events == []
    [bad] = decoded.errors
    assert bad.index == -1 and bad.reason == "invalid_event"


def test_too_large_record_and_batch() -> None:
    raw = encode_event(sample_event("order.placed"))
    [bad] = decode_record(raw, max_bytes=len(raw) - 1).errors
    assert bad.reason == "too_large"
    assert decode_record(raw, max_bytes=len(raw)).events
    huge = orjson.dumps([1] * (MAX_BATCH_ITEMS + 1))
    [bad] = decode_record(huge).errors
    assert bad.reason == "too_large" and bad.index == -1


def test_deeply_nested_input_does_not_raise() -> None:
    # orjson reads deeper nesting than it writes; the decoder must still report, not raise.
    raw = b'{"type":"viewer.liked","data":' + b"[" * 300 + b"]" * 300 + b"}"
    decoded = decode_record(raw)
    assert decoded.events == [] and decoded.errors[0].reason == "invalid_event"
    batch = b"[" + raw + b"]"
    assert decode_record(batch).errors[0].index == 0


def test_non_finite_float_rejected() -> None:
    payload = SpikeDetected(scope="room", subject_id="r", metric="m", rate=float("nan"), baseline=1.0,
                            factor=1.0, window_s=1)
    with pytest.raises(ValidationError) as info:
        make_event(payload, event_id="e", ts=T0, room_id="r", user_id="u")
    assert info.value.field == "data.rate"


def test_non_string_keys_from_python_callers() -> None:
    obj: dict[Any, Any] = {**sample_dict(), 5: "x"}
    with pytest.raises(ValidationError) as info:
        parse_event(obj)
    assert info.value.field == "5"


def test_make_event_validates() -> None:
    with pytest.raises(ValidationError) as info:
        make_event(OrderPlaced(order_id="o", sale_id="s", sku="k", qty=0, unit_price=1),
                   event_id="e", ts=T0, room_id="r", user_id="u")
    assert info.value.field == "data.qty"


def test_dead_letter_record_names_the_origin() -> None:
    [bad] = decode_record(b"{oops").errors
    out = orjson.loads(dead_letter(bad, topic="t", partition=3, offset=9, now_ms=5))
    assert out == {"reason": "malformed_json", "detail": bad.detail, "topic": "t", "partition": 3, "offset": 9,
                   "index": -1, "ts": 5, "raw": "{oops", "raw_bytes": 5,
                   "raw_sha256": hashlib.sha256(b"{oops").hexdigest()}


def test_a_dead_letter_always_fits_the_producers_limit() -> None:
    """Issue 13, item 1: a 300 KB malformed record of control bytes made a 1.8 MB dead letter."""
    raw = b"\x01" * 300_000
    [bad] = decode_record(raw).errors
    out = dead_letter(bad, topic="t", partition=0, offset=1, now_ms=5)
    assert len(out) < 1_000_000
    letter = orjson.loads(out)
    assert letter["raw_truncated"] is True and letter["raw_bytes"] == 300_000
    assert letter["raw_sha256"] == hashlib.sha256(raw).hexdigest()


def test_events_are_frozen_values() -> None:
    event = sample_event("order.placed")
    assert isinstance(event, Event)
    with pytest.raises(AttributeError):
        event.ts = 5  # type: ignore[misc]
    assert hash(event) == hash(sample_event("order.placed"))


def test_python_int_beyond_64_bits_names_its_field() -> None:
    obj = sample_dict("sale.opened")
    obj["data"]["price"] = 2**64
    with pytest.raises(ValidationError) as info:
        parse_event(obj)
    assert info.value.field == "data.price"
    big = b'{"type":"viewer.liked","v":1,"event_id":"e","ts":1700000000000,"room_id":"r","user_id":"u",' \
          b'"data":{"count":18446744073709551616}}'
    [bad] = decode_record(big).errors
    assert bad.reason == "invalid_event" and "data.count" in bad.detail


def test_every_bad_item_of_a_batch_is_reported_with_its_index() -> None:
    items = [sample_dict("order.placed") for _ in range(4)]
    items[1]["data"]["qty"] = 0
    items[3]["ts"] = 1_700_000_000
    decoded = decode_record(orjson.dumps(items))
    assert len(decoded.events) == 2
    assert [(b.index, b.detail.split(":")[0]) for b in decoded.errors] == [(1, "data.qty"), (3, "ts")]


def test_cross_field_rule_applies_to_decoded_and_built_events() -> None:
    obj = sample_dict("sale.opened")
    obj["data"]["ends_at"] = obj["data"]["starts_at"]
    [bad] = decode_record(orjson.dumps(obj)).errors
    assert bad.detail == "data.ends_at: must be after starts_at"
    with pytest.raises(ValidationError) as info:
        SAMPLES["sale.opened"].__class__(sale_id="s", sku="k", price=1, allotment=1, per_user_limit=1,
                                         starts_at=T0, ends_at=T0)
    assert info.value.field == "data.ends_at"


def test_fast_and_slow_paths_agree_on_valid_events() -> None:
    events = [sample_event(t, event_id=f"b-{i}") for i, t in enumerate(ALL_TYPES)]
    raw = encode_batch(events)
    assert decode_record(raw).events == [parse_event(o) for o in orjson.loads(raw)] == events


def test_repeated_keys_are_found_with_their_item_and_field() -> None:
    one = orjson.dumps(sample_dict("order.placed")).decode()
    twice = one.replace('"qty":1', '"qty":1,"qty":9')
    assert repeated_keys(one.encode()) == []
    assert repeated_keys(twice.encode()) == [(0, "data.qty")]
    assert repeated_keys(f"[{one},{twice},{one}]".encode()) == [(1, "data.qty")]
    assert repeated_keys(one.replace('"ts":', '"ts":1,"ts":').encode()) == [(0, "ts")]
    assert repeated_keys(b"{not json") == [] and repeated_keys(b'{"a": NaN}') == []


def test_all_errors_names_every_invalid_field() -> None:
    obj = sample_dict("order.placed")
    obj["ts"] = 1_700_000_000
    obj["color"] = "red"
    obj["data"]["qty"] = True
    del obj["data"]["sku"]
    assert sorted(e.field for e in all_errors(obj)) == ["color", "data.qty", "data.sku", "ts"]
    assert all_errors(sample_dict("order.placed")) == []
    assert [e.field for e in all_errors({**obj, "type": "nope"})] == ["type"]
