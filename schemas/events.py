"""Event envelope and payload records, with a strict, dependency-free validator."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, get_type_hints

CHANNELS: Final = ("live_room", "community_group", "mini_program", "share_link", "other")
REJECT_REASONS: Final = ("sold_out", "limit_exceeded", "sale_not_active", "duplicate", "invalid")
MAX_ID_LEN: Final = 128
MAX_TEXT_LEN: Final = 2000


class ValidationError(ValueError):
    """One event failed validation; ``field`` names the offending field (dotted)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}" if field_name else message)
        self.field = field_name
        self.message = message


def _f(**meta: Any) -> Any:
    return field(metadata=meta)


def _opt(default: Any = None, **meta: Any) -> Any:
    return field(default=default, metadata=meta)


# --- payloads --------------------------------------------------------------------------
# Money is integer minor units (fen/cents); times are epoch milliseconds; quantities ints.


@dataclass(frozen=True, slots=True)
class Payload:
    """Base for payloads; subclasses declare ``TYPE``."""

    TYPE: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class ViewerJoined(Payload):
    TYPE: ClassVar[str] = "viewer.joined"
    session_id: str | None = _opt(max_len=MAX_ID_LEN)


@dataclass(frozen=True, slots=True)
class ViewerLeft(Payload):
    TYPE: ClassVar[str] = "viewer.left"
    session_id: str | None = _opt(max_len=MAX_ID_LEN)


@dataclass(frozen=True, slots=True)
class ViewerLiked(Payload):
    TYPE: ClassVar[str] = "viewer.liked"
    count: int = _opt(1, min=1, max=10_000)


@dataclass(frozen=True, slots=True)
class ViewerCommented(Payload):
    TYPE: ClassVar[str] = "viewer.commented"
    text: str = _opt("", max_len=MAX_TEXT_LEN, allow_empty=True)


@dataclass(frozen=True, slots=True)
class ViewerShared(Payload):
    TYPE: ClassVar[str] = "viewer.shared"
    target: str | None = _opt(enum=CHANNELS)


@dataclass(frozen=True, slots=True)
class ProductClicked(Payload):
    TYPE: ClassVar[str] = "product.clicked"
    sku: str = _f(max_len=MAX_ID_LEN)


@dataclass(frozen=True, slots=True)
class CartAdded(Payload):
    TYPE: ClassVar[str] = "cart.added"
    sku: str = _f(max_len=MAX_ID_LEN)
    qty: int = _opt(1, min=1, max=10_000)


@dataclass(frozen=True, slots=True)
class CartRemoved(Payload):
    TYPE: ClassVar[str] = "cart.removed"
    sku: str = _f(max_len=MAX_ID_LEN)
    qty: int = _opt(1, min=1, max=10_000)


@dataclass(frozen=True, slots=True)
class SaleOpened(Payload):
    TYPE: ClassVar[str] = "sale.opened"
    sale_id: str = _f(max_len=MAX_ID_LEN)
    sku: str = _f(max_len=MAX_ID_LEN)
    price: int = _f(min=0)
    allotment: int = _f(min=0, max=100_000_000)
    per_user_limit: int = _f(min=1, max=10_000)
    starts_at: int = _f(min=0)
    ends_at: int = _f(min=0)
    reservation_ttl_s: int = _opt(300, min=1, max=86_400)


@dataclass(frozen=True, slots=True)
class SaleClosed(Payload):
    TYPE: ClassVar[str] = "sale.closed"
    sale_id: str = _f(max_len=MAX_ID_LEN)
    sku: str = _f(max_len=MAX_ID_LEN)


@dataclass(frozen=True, slots=True)
class StockAdjusted(Payload):
    TYPE: ClassVar[str] = "stock.adjusted"
    sale_id: str = _f(max_len=MAX_ID_LEN)
    sku: str = _f(max_len=MAX_ID_LEN)
    delta: int = _f(min=-100_000_000, max=100_000_000)
    reason: str = _opt("", max_len=200, allow_empty=True)


@dataclass(frozen=True, slots=True)
class OrderPlaced(Payload):
    TYPE: ClassVar[str] = "order.placed"
    order_id: str = _f(max_len=MAX_ID_LEN)
    sale_id: str = _f(max_len=MAX_ID_LEN)
    sku: str = _f(max_len=MAX_ID_LEN)
    qty: int = _f(min=1, max=10_000)
    unit_price: int = _f(min=0)


@dataclass(frozen=True, slots=True)
class OrderPaid(Payload):
    TYPE: ClassVar[str] = "order.paid"
    order_id: str = _f(max_len=MAX_ID_LEN)
    sale_id: str = _f(max_len=MAX_ID_LEN)
    sku: str = _f(max_len=MAX_ID_LEN)
    amount: int | None = _opt(min=0)


@dataclass(frozen=True, slots=True)
class OrderCancelled(Payload):
    TYPE: ClassVar[str] = "order.cancelled"
    order_id: str = _f(max_len=MAX_ID_LEN)
    sale_id: str = _f(max_len=MAX_ID_LEN)
    sku: str = _f(max_len=MAX_ID_LEN)


# --- pipeline outputs ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderAccepted(Payload):
    TYPE: ClassVar[str] = "order.accepted"
    order_id: str = _f(max_len=MAX_ID_LEN)
    sale_id: str = _f(max_len=MAX_ID_LEN)
    sku: str = _f(max_len=MAX_ID_LEN)
    qty: int = _f(min=1)
    unit_price: int = _f(min=0)
    reserved_until: int = _f(min=0)


@dataclass(frozen=True, slots=True)
class OrderRejected(Payload):
    TYPE: ClassVar[str] = "order.rejected"
    order_id: str = _f(max_len=MAX_ID_LEN)
    sale_id: str = _f(max_len=MAX_ID_LEN, allow_empty=True)
    sku: str = _f(max_len=MAX_ID_LEN, allow_empty=True)
    qty: int = _f(min=0)
    reason: str = _f(enum=REJECT_REASONS)
    detail: str = _opt("", max_len=500, allow_empty=True)


@dataclass(frozen=True, slots=True)
class OrderExpired(Payload):
    TYPE: ClassVar[str] = "order.expired"
    order_id: str = _f(max_len=MAX_ID_LEN)
    sale_id: str = _f(max_len=MAX_ID_LEN)
    sku: str = _f(max_len=MAX_ID_LEN)
    qty: int = _f(min=1)
    cause: str = _opt("ttl", enum=("ttl", "cancelled"))


@dataclass(frozen=True, slots=True)
class SaleSoldOut(Payload):
    TYPE: ClassVar[str] = "sale.sold_out"
    sale_id: str = _f(max_len=MAX_ID_LEN)
    sku: str = _f(max_len=MAX_ID_LEN)
    sold_out_at: int = _f(min=0)
    opened_at: int = _f(min=0)
    allotted: int = _f(min=0)


@dataclass(frozen=True, slots=True)
class SpikeDetected(Payload):
    TYPE: ClassVar[str] = "spike.detected"
    scope: str = _f(enum=("room", "sale"))
    subject_id: str = _f(max_len=MAX_ID_LEN)
    metric: str = _f(max_len=64)
    rate: float = _f(min=0)
    baseline: float = _f(min=0)
    factor: float = _f(min=0)
    window_s: int = _f(min=1)


PAYLOADS: Final[dict[str, type[Payload]]] = {
    cls.TYPE: cls
    for cls in (
        ViewerJoined, ViewerLeft, ViewerLiked, ViewerCommented, ViewerShared, ProductClicked,
        CartAdded, CartRemoved, SaleOpened, SaleClosed, StockAdjusted, OrderPlaced, OrderPaid,
        OrderCancelled, OrderAccepted, OrderRejected, OrderExpired, SaleSoldOut, SpikeDetected,
    )
}
INPUT_TYPES: Final = frozenset(PAYLOADS) - {
    "order.accepted", "order.rejected", "order.expired", "sale.sold_out", "spike.detected",
}
OUTPUT_TYPES: Final = frozenset(PAYLOADS) - INPUT_TYPES
SUPPORTED_VERSIONS: Final[dict[str, frozenset[int]]] = {t: frozenset({1}) for t in PAYLOADS}


@dataclass(frozen=True, slots=True)
class Event:
    """The versioned envelope every event travels in."""

    type: str
    event_id: str
    ts: int
    room_id: str
    user_id: str
    data: Payload
    channel: str = "other"
    referrer_id: str | None = None
    v: int = 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type, "v": self.v, "event_id": self.event_id, "ts": self.ts,
            "room_id": self.room_id, "user_id": self.user_id, "channel": self.channel,
        }
        if self.referrer_id is not None:
            out["referrer_id"] = self.referrer_id
        out["data"] = payload_to_dict(self.data)
        return out


ENVELOPE_SPEC: Final[dict[str, dict[str, Any]]] = {
    "type": {"enum": tuple(sorted(PAYLOADS))},
    "v": {"min": 1},
    "event_id": {"max_len": MAX_ID_LEN},
    "ts": {"min": 0},
    "room_id": {"max_len": MAX_ID_LEN},
    "user_id": {"max_len": MAX_ID_LEN},
    "channel": {"enum": CHANNELS},
    "referrer_id": {"max_len": MAX_ID_LEN},
}
ENVELOPE_REQUIRED: Final = ("type", "v", "event_id", "ts", "room_id", "user_id", "data")


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    kind: type  # int, str or float
    optional: bool
    required: bool
    default: Any
    meta: dict[str, Any]


def _specs(cls: type[Payload]) -> tuple[FieldSpec, ...]:
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = getattr(hint, "__args__", ())
        optional = type(None) in args
        kind = next(a for a in args if a is not type(None)) if args else hint
        required = f.default is dataclasses.MISSING
        out.append(FieldSpec(f.name, kind, optional, required, f.default, dict(f.metadata)))
    return tuple(out)


PAYLOAD_SPECS: Final[dict[str, tuple[FieldSpec, ...]]] = {t: _specs(c) for t, c in PAYLOADS.items()}


def payload_to_dict(payload: Payload) -> dict[str, Any]:
    return {s.name: getattr(payload, s.name) for s in PAYLOAD_SPECS[payload.TYPE]
            if getattr(payload, s.name) is not None}


def _check(name: str, value: Any, kind: type, meta: dict[str, Any]) -> None:
    if kind is int:
        if type(value) is not int:
            raise ValidationError(name, f"expected integer, got {_jtype(value)}")
    elif kind is float:
        if type(value) not in (int, float):
            raise ValidationError(name, f"expected number, got {_jtype(value)}")
        if not math.isfinite(value):  # JSON has no NaN/Infinity; orjson would write null
            raise ValidationError(name, f"must be a finite number; got {value}")
    elif kind is str:
        if type(value) is not str:
            raise ValidationError(name, f"expected string, got {_jtype(value)}")
        if not value and not meta.get("allow_empty"):
            raise ValidationError(name, "must not be empty")
        if len(value) > meta.get("max_len", MAX_TEXT_LEN):
            raise ValidationError(name, f"longer than {meta.get('max_len', MAX_TEXT_LEN)} characters")
    if "enum" in meta and value not in meta["enum"]:
        raise ValidationError(name, f"must be one of {', '.join(meta['enum'])}; got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise ValidationError(name, f"must be >= {meta['min']}; got {value}")
    if "max" in meta and value > meta["max"]:
        raise ValidationError(name, f"must be <= {meta['max']}; got {value}")


def _jtype(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def parse_payload(type_: str, data: Any) -> Payload:
    if not isinstance(data, dict):
        raise ValidationError("data", f"expected object, got {_jtype(data)}")
    specs = PAYLOAD_SPECS[type_]
    known = {s.name for s in specs}
    unknown = sorted(set(data) - known, key=str)  # key=str: Python callers may pass non-str keys
    if unknown:
        raise ValidationError(f"data.{unknown[0]}", f"unknown field for {type_}")
    kwargs: dict[str, Any] = {}
    for s in specs:
        if s.name not in data:
            if s.required:
                raise ValidationError(f"data.{s.name}", "missing required field")
            continue
        value = data[s.name]
        if value is None and s.optional:
            continue
        _check(f"data.{s.name}", value, s.kind, s.meta)
        kwargs[s.name] = value
    payload = PAYLOADS[type_](**kwargs)
    if isinstance(payload, SaleOpened) and payload.ends_at <= payload.starts_at:
        raise ValidationError("data.ends_at", "must be after starts_at")
    return payload


def parse_event(obj: Any) -> Event:
    """Validate one decoded JSON object and build an :class:`Event`; raise ValidationError."""
    if not isinstance(obj, dict):
        raise ValidationError("", f"event must be a JSON object, got {_jtype(obj)}")
    if "type" not in obj:
        raise ValidationError("type", "missing required field")
    type_ = obj["type"]
    if type(type_) is not str:
        raise ValidationError("type", f"expected string, got {_jtype(type_)}")
    if type_ not in PAYLOADS:
        raise ValidationError("type", f"unknown event type {type_[:64]!r}")
    if "v" in obj and type(obj["v"]) is int and obj["v"] not in SUPPORTED_VERSIONS[type_]:
        raise ValidationError(
            "v", f"unsupported schema version {obj['v']} for {type_} "
            f"(supported: {sorted(SUPPORTED_VERSIONS[type_])})")
    for name in ENVELOPE_REQUIRED:
        if name not in obj:
            raise ValidationError(name, "missing required field")
    unknown = sorted(set(obj) - set(ENVELOPE_SPEC) - {"data"}, key=str)
    if unknown:
        raise ValidationError(str(unknown[0])[:64], "unknown envelope field")
    for name, meta in ENVELOPE_SPEC.items():
        if name == "type" or name not in obj:
            continue
        value = obj[name]
        if name == "referrer_id" and value is None:
            continue
        _check(name, value, int if name in ("v", "ts") else str, meta)
    if obj["v"] not in SUPPORTED_VERSIONS[type_]:
        raise ValidationError(
            "v", f"unsupported schema version {obj['v']} for {type_} "
            f"(supported: {sorted(SUPPORTED_VERSIONS[type_])})")
    return Event(
        type=type_, v=obj["v"], event_id=obj["event_id"], ts=obj["ts"], room_id=obj["room_id"],
        user_id=obj["user_id"], channel=obj.get("channel", "other"),
        referrer_id=obj.get("referrer_id"), data=parse_payload(type_, obj["data"]),
    )


def make_event(payload: Payload, *, event_id: str, ts: int, room_id: str, user_id: str,
               channel: str = "other", referrer_id: str | None = None) -> Event:
    """Build an event from a payload (validated the same way as decoded input)."""
    event = Event(type=payload.TYPE, event_id=event_id, ts=ts, room_id=room_id, user_id=user_id,
                  channel=channel, referrer_id=referrer_id, data=payload)
    return parse_event(event.to_dict())
