"""Record codec: one event or a batched envelope (a JSON array of events) per Kafka record.

A record is decoded and validated in one msgspec call; only a record with something wrong in it
takes the slow path, which finds every bad item and names its field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import orjson

from schemas.events import AnyEvent, Event, ValidationError, bad_key_ids, parse_event

MAX_BATCH_ITEMS: Final = 10_000
# Default record size limit of the agents' input (FLASHSALE_MAX_RECORD_BYTES) and of their output batches.
DEFAULT_MAX_RECORD_BYTES: Final = 1_048_576
# What one output record of the workers may hold: below the Faust producer's request limit (set
# explicitly to PRODUCER_MAX_REQUEST_BYTES) and Kafka's default message.max.bytes, with room for the
# record's framing and headers, whatever FLASHSALE_MAX_RECORD_BYTES the readers accept.
PRODUCER_MAX_REQUEST_BYTES: Final = 1_000_000
OUTPUT_MAX_BYTES: Final = 900_000


@dataclass(frozen=True, slots=True)
class BadItem:
    """One undecodable or invalid item of a record: ``index`` is -1 for the whole record."""

    index: int
    reason: str  # low-cardinality: malformed_json, invalid_event, unknown_type, bad_version, too_large
    detail: str
    raw: bytes


@dataclass(slots=True)
class Decoded:
    events: list[Event] = field(default_factory=list)
    errors: list[BadItem] = field(default_factory=list)


_RECORD_DECODER: Final = msgspec.json.Decoder(list[AnyEvent] | AnyEvent)  # type: ignore[valid-type]
_ENCODER: Final = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    return _ENCODER.encode(event)


def encode_batch(events: Iterable[Event]) -> bytes:
    return _ENCODER.encode(events if isinstance(events, list) else list(events))


def classify(err: ValidationError) -> str:
    if err.field == "type" and "unknown event type" in err.message:
        return "unknown_type"
    if err.field == "v" and "unsupported" in err.message:
        return "bad_version"
    return "invalid_event"


def decode_obj(obj: Any, index: int = 0, raw: bytes | None = None) -> Event | BadItem:
    try:
        return parse_event(obj)
    except ValidationError as err:
        return BadItem(index, classify(err), str(err), raw if raw is not None else _dumps_raw(obj))


def _dumps_raw(obj: Any) -> bytes:
    # orjson.loads accepts nesting deeper than orjson.dumps writes; a bad item must not raise here.
    try:
        return orjson.dumps(obj)
    except TypeError:
        return b""


def decode_record(value: bytes | None, max_bytes: int | None = None) -> Decoded:
    """Decode a record holding one event (object) or a batch (array); never raises."""
    out = Decoded()
    if value is None:
        out.errors.append(BadItem(-1, "malformed_json", "empty record value", b""))
        return out
    if max_bytes is not None and len(value) > max_bytes:
        out.errors.append(BadItem(-1, "too_large", f"record of {len(value)} bytes exceeds {max_bytes}", value[:1024]))
        return out
    try:
        fast = _RECORD_DECODER.decode(value)
    except msgspec.DecodeError:  # invalid JSON or an invalid event: find out which, item by item
        pass
    else:
        events = fast if isinstance(fast, list) else [fast]
        if events and len(events) <= MAX_BATCH_ITEMS and not bad_key_ids(events):
            out.events = events
            return out
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        out.errors.append(BadItem(-1, "malformed_json", f"malformed JSON: {exc}", value))
        return out
    if not isinstance(obj, list):
        res = decode_obj(obj, 0, value)
        if isinstance(res, Event):
            out.events.append(res)
        else:
            out.errors.append(res)
        return out
    if not obj:
        out.errors.append(BadItem(-1, "invalid_event", "empty batch", value))
        return out
    if len(obj) > MAX_BATCH_ITEMS:
        detail = f"batch of {len(obj)} events exceeds {MAX_BATCH_ITEMS}"
        out.errors.append(BadItem(-1, "too_large", detail, value[:1024]))
        return out
    for i, item in enumerate(obj):
        res = decode_obj(item, i)
        if isinstance(res, Event):
            out.events.append(res)
        else:
            out.errors.append(res)
    return out


# The raw input a dead letter carries, at most: JSON-escaping can grow control bytes 6x, so even a
# truncated raw of control bytes stays far below the producer's 1,000,000-byte record limit.
MAX_DEAD_LETTER_RAW: Final = 65_536


def dead_letter(item: BadItem, *, topic: str, partition: int, offset: int, now_ms: int) -> bytes:
    """The dead-letter record for one bad item: reason, detail, origin, and the raw input (cut to
    MAX_DEAD_LETTER_RAW bytes, with its full size and SHA-256 so the original can be found)."""
    raw = item.raw
    out: dict[str, Any] = {
        "reason": item.reason, "detail": item.detail[:1000], "topic": topic, "partition": partition,
        "offset": offset, "index": item.index, "ts": now_ms,
        "raw": raw[:MAX_DEAD_LETTER_RAW].decode("utf-8", errors="replace"),
        "raw_bytes": len(raw), "raw_sha256": hashlib.sha256(raw).hexdigest(),
    }
    if len(raw) > MAX_DEAD_LETTER_RAW:
        out["raw_truncated"] = True
    return orjson.dumps(out)


class _Pairs(dict[str, Any]):
    """A decoded JSON object that remembers the first key it saw twice."""

    repeated: str | None = None


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                obj.repeated = key
                break
            seen.add(key)
    return obj


def _repeated_path(node: Any, prefix: str) -> str | None:
    if isinstance(node, _Pairs):
        if node.repeated is not None:
            return prefix + node.repeated
        for key, value in node.items():
            if (found := _repeated_path(value, f"{prefix}{key}.")) is not None:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if (found := _repeated_path(value, f"{prefix}{i}.")) is not None:
                return found
    return None


def repeated_keys(raw: bytes) -> list[tuple[int, str]]:
    """(item index, dotted field) of every item of a JSON body that repeats an object key.

    msgspec and orjson keep the last of repeated keys, other parsers the first: a request that
    repeats one could mean different things to different readers, so the gateway and the SDK
    refuse it. This parse costs ~3 µs per event: it runs on request bodies, not in the worker.
    """
    try:
        obj = json.loads(raw, object_pairs_hook=_pairs_hook, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return []  # not JSON (the caller's own parse reports it) or too deep to hold a repeat that matters
    items = obj if isinstance(obj, list) else [obj]
    return [(i, path) for i, item in enumerate(items) if (path := _repeated_path(item, "")) is not None]


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# --- decisions, read cheaply ---------------------------------------------------------------------
# Readers of the workers' own output (the gateway's DecisionWaiter) need five fields of two types.
# The full validator costs what the worker's input path needs; output a worker signed was
# validated when it was made, so these readers take one typed decode that checks shapes, not
# bounds, and ignores every field and type they do not use.


class DecisionData(msgspec.Struct, frozen=True):
    order_id: str = ""
    sale_id: str = ""
    qty: int = 0
    reason: str = ""
    reserved_until: int = 0


class DecisionItem(msgspec.Struct, frozen=True):
    """One item of an order-decisions record, as far as a decision reader cares."""

    type: str
    user_id: str = ""
    data: DecisionData = DecisionData()

    @property
    def is_decision(self) -> bool:
        return self.type in _DECISION_TYPES


_DECISION_TYPES: Final = frozenset({"order.accepted", "order.rejected"})
_DECISIONS_DECODER: Final = msgspec.json.Decoder(list[DecisionItem] | DecisionItem)


def decode_decisions(value: bytes | None) -> list[DecisionItem] | None:
    """The order.accepted / order.rejected items of a decisions record, by one typed decode; other
    types are skipped. None when the record does not have the expected shape (the caller may take
    :func:`decode_record` to say why)."""
    if value is None:
        return None
    try:
        items = _DECISIONS_DECODER.decode(value)
    except msgspec.DecodeError:
        return None
    if isinstance(items, DecisionItem):
        items = [items]
    return [item for item in items if item.type in _DECISION_TYPES and item.data.order_id]
