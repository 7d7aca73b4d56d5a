"""orjson codec: one event or a batched envelope (a JSON array of events) per Kafka record."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from schemas.events import Event, ValidationError, parse_event

MAX_BATCH_ITEMS: Final = 10_000
# Default record size limit of the agents' input (FLASHSALE_MAX_RECORD_BYTES) and of their output batches.
DEFAULT_MAX_RECORD_BYTES: Final = 1_048_576


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


def encode_event(event: Event) -> bytes:
    return orjson.dumps(event.to_dict())


def encode_batch(events: Iterable[Event]) -> bytes:
    return orjson.dumps([e.to_dict() for e in events])


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


def dead_letter(item: BadItem, *, topic: str, partition: int, offset: int, now_ms: int) -> bytes:
    """The dead-letter record for one bad item: reason, detail, origin, and the raw input."""
    return orjson.dumps({
        "reason": item.reason, "detail": item.detail, "topic": topic, "partition": partition,
        "offset": offset, "index": item.index, "ts": now_ms,
        "raw": item.raw.decode("utf-8", errors="replace"),
    })
