"""The event contract: envelope and payloads as msgspec Structs, a tagged union on ``type``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias, Union

import msgspec
from msgspec import Meta, Struct

CHANNELS: Final = ("live_room", "community_group", "mini_program", "share_link", "other")
REJECT_REASONS: Final = ("sold_out", "limit_exceeded", "sale_not_active", "duplicate", "invalid", "order_id_taken")
EXPIRY_CAUSES: Final = ("ttl", "cancelled")
MAX_ID_LEN: Final = 128
MAX_TEXT_LEN: Final = 2000
# Integers every reader carries exactly: Redis Lua's cjson prints 14 significant digits, and
# JavaScript's Number is exact below 2**53; money, counts and quantities stay below 10**14.
MAX_EXACT: Final = 10**14 - 1
# Event times are epoch milliseconds between 2000-01-01 and 2100-01-01: a time in seconds
# (about 1.7e9 today) is far below the floor and is refused with a message that says so.
EPOCH_MS_MIN: Final = 946_684_800_000
EPOCH_MS_MAX: Final = 4_102_444_800_000

Channel: TypeAlias = Literal["live_room", "community_group", "mini_program", "share_link", "other"]
RejectReason: TypeAlias = Literal["sold_out", "limit_exceeded", "sale_not_active", "duplicate", "invalid",
                                  "order_id_taken"]
Id: TypeAlias = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
MaybeEmptyId: TypeAlias = Annotated[str, Meta(max_length=MAX_ID_LEN)]
EventId: TypeAlias = Annotated[str, Meta(min_length=1, max_length=2 * MAX_ID_LEN + 16)]
# The ids that go into Redis keys, Cluster hash tags, output event ids, URL paths and headers allow
# letters, digits and ``. _ - ~ @ + =`` only: no key separator (``:``), hash-tag brace, slash, quote,
# white space or control character (CR/LF into a header). Checked once per distinct value of a
# record (a msgspec ``pattern`` would cost ~0.7 µs per field per event).
ID_CHARS: Final = "letters, digits and . _ - ~ @ + ="
ID_PATTERN: Final = "^[A-Za-z0-9._~@+=-]*$"
KEY_ID_FIELDS: Final = ("room_id", "data.sale_id", "data.sku", "data.order_id")
_ID_BYTES: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~@+=-"
EpochMs: TypeAlias = Annotated[int, Meta(ge=EPOCH_MS_MIN, le=EPOCH_MS_MAX,
                                         description="epoch milliseconds (UTC), 2000-01-01 to 2100-01-01")]
Money: TypeAlias = Annotated[int, Meta(ge=0, le=MAX_EXACT, description="integer minor units (fen/cents)")]
Count: TypeAlias = Annotated[int, Meta(ge=0, le=MAX_EXACT)]
Qty: TypeAlias = Annotated[int, Meta(ge=1, le=10_000)]
Rate: TypeAlias = Annotated[float, Meta(ge=0, le=1e15)]
Bps: TypeAlias = Annotated[int, Meta(ge=0, le=10_000, description="basis points: 100 = 1 %, 10000 = 100 %")]
MAX_TITLE_LEN: Final = 200
MAX_IMAGE_URL_LEN: Final = 2048
# Shown to hosts (and on a phone): one line of printable text, no control characters.
ProductTitle: TypeAlias = Annotated[str, Meta(min_length=1, max_length=MAX_TITLE_LEN, pattern=r"^[^\x00-\x1f\x7f]+$",
                                             description="product title shown on the dashboard, one line")]
# An https URL or a path on the dashboard's own origin; never http:, javascript:, data: or //host.
ImageUrl: TypeAlias = Annotated[str, Meta(min_length=2, max_length=MAX_IMAGE_URL_LEN,
                                          pattern=r"""^(https://[^\s"'<>\\]+|/[^/\s"'<>\\][^\s"'<>\\]*)$""",
                                          description="product image: an https:// URL or an absolute path (/...)")]


class ValidationError(ValueError):
    """One event failed validation; ``field`` names the offending field (dotted)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}" if field_name else message)
        self.field = field_name
        self.message = message


# --- payloads --------------------------------------------------------------------------
# Money is integer minor units (fen/cents); times are epoch milliseconds; quantities ints.
# Fields equal to their default are left out of the encoded JSON (omit_defaults); pipeline
# outputs have no defaults, so every field of an output is always written.


class Payload(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Base for payloads; subclasses declare ``TYPE``."""

    TYPE: ClassVar[str] = ""


class ViewerJoined(Payload, frozen=True):
    TYPE: ClassVar[str] = "viewer.joined"
    session_id: Id | None = None


class ViewerLeft(Payload, frozen=True):
    TYPE: ClassVar[str] = "viewer.left"
    session_id: Id | None = None


class ViewerLiked(Payload, frozen=True):
    TYPE: ClassVar[str] = "viewer.liked"
    count: Qty = 1


class ViewerCommented(Payload, frozen=True):
    TYPE: ClassVar[str] = "viewer.commented"
    text: Annotated[str, Meta(max_length=MAX_TEXT_LEN)] = ""


class ViewerShared(Payload, frozen=True):
    TYPE: ClassVar[str] = "viewer.shared"
    target: Channel | None = None


class ProductClicked(Payload, frozen=True):
    TYPE: ClassVar[str] = "product.clicked"
    sku: Id


class CartAdded(Payload, frozen=True):
    TYPE: ClassVar[str] = "cart.added"
    sku: Id
    qty: Qty = 1


class CartRemoved(Payload, frozen=True):
    TYPE: ClassVar[str] = "cart.removed"
    sku: Id
    qty: Qty = 1


class SaleOpened(Payload, frozen=True):
    TYPE: ClassVar[str] = "sale.opened"
    RULE: ClassVar[str] = "ends_at must be greater than starts_at."
    sale_id: Id
    sku: Id
    price: Money
    allotment: Annotated[int, Meta(ge=0, le=100_000_000)]
    per_user_limit: Qty
    starts_at: EpochMs
    ends_at: EpochMs
    reservation_ttl_s: Annotated[int, Meta(ge=1, le=86_400)] = 300
    # What the host's dashboard shows for the product (optional; without them it shows the SKU).
    title: ProductTitle | None = None
    image_url: ImageUrl | None = None
    # The commission rule, in basis points of an order's paid amount (floor(amount * bps / 10000),
    # integer minor units): ``commission_bps`` for the distributor (``referrer_id``) of a share_link
    # order, ``head_commission_bps`` for the group head of a group buy (stored, not used yet). A
    # re-open without them keeps the sale's current rule; 0 ends it.
    commission_bps: Bps | None = None
    head_commission_bps: Bps | None = None

    def __post_init__(self) -> None:
        if self.ends_at <= self.starts_at:
            raise ValidationError("data.ends_at", "must be after starts_at")


class SaleClosed(Payload, frozen=True):
    TYPE: ClassVar[str] = "sale.closed"
    sale_id: Id
    sku: Id


class StockAdjusted(Payload, frozen=True):
    TYPE: ClassVar[str] = "stock.adjusted"
    sale_id: Id
    sku: Id
    delta: Annotated[int, Meta(ge=-100_000_000, le=100_000_000)]
    reason: Annotated[str, Meta(max_length=200)] = ""


class OrderPlaced(Payload, frozen=True):
    TYPE: ClassVar[str] = "order.placed"
    order_id: Id
    sale_id: Id
    sku: Id
    qty: Qty
    unit_price: Money


class OrderPaid(Payload, frozen=True):
    TYPE: ClassVar[str] = "order.paid"
    order_id: Id
    sale_id: Id
    sku: Id
    amount: Money | None = None


class OrderCancelled(Payload, frozen=True):
    TYPE: ClassVar[str] = "order.cancelled"
    order_id: Id
    sale_id: Id
    sku: Id


class OrderRefunded(Payload, frozen=True):
    """A sold order refunded in full (payments scope). ``restock``: its units go back on sale (default:
    no, the goods left with the buyer). ``amount``, if given, must equal what the order was paid
    (units x unit price): partial refunds are refused ``amount_mismatch``."""

    TYPE: ClassVar[str] = "order.refunded"
    order_id: Id
    sale_id: Id
    sku: Id
    restock: bool = False
    amount: Money | None = None


# --- pipeline outputs ------------------------------------------------------------------


class OrderAccepted(Payload, frozen=True):
    TYPE: ClassVar[str] = "order.accepted"
    order_id: Id
    sale_id: Id
    sku: Id
    qty: Annotated[int, Meta(ge=1, le=MAX_EXACT)]
    unit_price: Money
    reserved_until: EpochMs


class OrderRejected(Payload, frozen=True):
    TYPE: ClassVar[str] = "order.rejected"
    order_id: Id
    sale_id: MaybeEmptyId
    sku: MaybeEmptyId
    qty: Count
    reason: RejectReason
    detail: Annotated[str, Meta(max_length=500)] = ""


class OrderExpired(Payload, frozen=True):
    TYPE: ClassVar[str] = "order.expired"
    order_id: Id
    sale_id: Id
    sku: Id
    qty: Annotated[int, Meta(ge=1, le=MAX_EXACT)]
    cause: Literal["ttl", "cancelled"]


class SaleSoldOut(Payload, frozen=True):
    TYPE: ClassVar[str] = "sale.sold_out"
    sale_id: Id
    sku: Id
    sold_out_at: EpochMs
    opened_at: EpochMs
    allotted: Count


class StockChanged(Payload, frozen=True):
    """What a stock.adjusted did: units removed or added now, and units still to remove. Units that
    are reserved cannot be removed at once; they are removed as those reservations are released
    (never sold again), and ``removal_pending`` counts them until then."""

    TYPE: ClassVar[str] = "stock.changed"
    sale_id: Id
    sku: Id
    delta: Annotated[int, Meta(ge=-100_000_000, le=100_000_000)]
    applied: Annotated[int, Meta(ge=-MAX_EXACT, le=MAX_EXACT)]
    removal_pending: Count
    allotted: Count
    available: Count


class SpikeDetected(Payload, frozen=True):
    TYPE: ClassVar[str] = "spike.detected"
    scope: Literal["room", "sale"]
    subject_id: Id
    metric: Annotated[str, Meta(min_length=1, max_length=64)]
    rate: Rate
    baseline: Rate
    factor: Rate
    window_s: Annotated[int, Meta(ge=1, le=86_400)]


_PAYLOAD_CLASSES: Final[tuple[type[Payload], ...]] = (
    ViewerJoined, ViewerLeft, ViewerLiked, ViewerCommented, ViewerShared, ProductClicked,
    CartAdded, CartRemoved, SaleOpened, SaleClosed, StockAdjusted, OrderPlaced, OrderPaid,
    OrderCancelled, OrderRefunded, OrderAccepted, OrderRejected, OrderExpired, SaleSoldOut, StockChanged, SpikeDetected,
)
PAYLOADS: Final[dict[str, type[Payload]]] = {cls.TYPE: cls for cls in _PAYLOAD_CLASSES}
OUTPUT_TYPES: Final = frozenset({"order.accepted", "order.rejected", "order.expired", "sale.sold_out",
                                 "stock.changed", "spike.detected"})
INPUT_TYPES: Final = frozenset(PAYLOADS) - OUTPUT_TYPES
SUPPORTED_VERSIONS: Final[dict[str, frozenset[int]]] = {t: frozenset({1}) for t in PAYLOADS}


# --- the envelope ----------------------------------------------------------------------


class Event(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True, tag_field="type"):
    """The versioned envelope every event travels in; one subclass per type, tagged by ``type``."""

    v: Literal[1]
    event_id: EventId
    ts: EpochMs
    room_id: Id
    user_id: Id
    channel: Channel = "other"
    referrer_id: Id | None = None
    data: Payload

    @property
    def type(self) -> str:
        return self.data.TYPE

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready builtins (what the wire carries, fields at their default left out)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


def _envelope(payload_cls: type[Payload]) -> type[Event]:
    name = payload_cls.__name__ + "Event"
    cls = msgspec.defstruct(name, [("data", payload_cls)], bases=(Event,), tag=payload_cls.TYPE,
                            frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True,
                            module=__name__)
    assert issubclass(cls, Event)
    return cls


ENVELOPES: Final[dict[str, type[Event]]] = {t: _envelope(c) for t, c in PAYLOADS.items()}
AnyEvent: TypeAlias = Union[tuple(ENVELOPES.values())]  # type: ignore[valid-type]  # noqa: UP007
ENVELOPE_REQUIRED: Final = ("type", "v", "event_id", "ts", "room_id", "user_id", "data")

_EVENT_DECODER: Final = msgspec.json.Decoder(AnyEvent)
_ENCODER: Final = msgspec.json.Encoder()


def new_event(payload: Payload, *, event_id: str, ts: int, room_id: str, user_id: str,
              channel: str = "other", referrer_id: str | None = None) -> Event:
    """Build an event without validating it: for values the pipeline made itself from valid input."""
    cls = ENVELOPES[payload.TYPE]
    return cls(v=1, event_id=event_id, ts=ts, room_id=room_id, user_id=user_id,
               channel=channel, referrer_id=referrer_id, data=payload)  # type: ignore[arg-type]


def make_event(payload: Payload, *, event_id: str, ts: int, room_id: str, user_id: str,
               channel: str = "other", referrer_id: str | None = None) -> Event:
    """Build an event from a payload, validated the same way as decoded input."""
    event = new_event(payload, event_id=event_id, ts=ts, room_id=room_id, user_id=user_id,
                      channel=channel, referrer_id=referrer_id)
    return check_event(event)


def check_event(event: Event) -> Event:
    """Validate an event built in Python (Structs do not check constraints when constructed)."""
    try:
        raw = _ENCODER.encode(event)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError("", f"not encodable as JSON: {exc}") from None
    try:
        checked = _EVENT_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise translate(exc, event.to_dict()) from None
    _check_key_ids(checked)
    return checked


def parse_event(obj: Any) -> Event:
    """Validate one decoded JSON object (builtins) and build an :class:`Event`; raise ValidationError."""
    if not isinstance(obj, dict):
        raise ValidationError("", f"event must be a JSON object, got {_jtype(obj)}")
    _precheck(obj)
    try:
        event: Event = msgspec.convert(obj, AnyEvent, strict=True)
    except msgspec.ValidationError as exc:
        raise translate(exc, obj) from None
    except (TypeError, OverflowError):  # a Python int beyond 64 bits
        raise ValidationError(_huge_int_field(obj), "number out of range") from None
    _check_key_ids(event)
    return event


def is_key_id(value: str) -> bool:
    """Whether ``value`` may go into a Redis key, a hash tag, an event id or a header (see ID_CHARS)."""
    return value.isascii() and not value.encode().translate(None, _ID_BYTES)


def bad_key_ids(events: list[Event]) -> bool:
    """Whether any event of a decoded batch carries a key id outside ID_CHARS; each distinct value
    is checked once (a batch usually holds one room, one sale and one SKU)."""
    ids = {e.room_id for e in events}
    ids.update(getattr(e.data, "sale_id", "") for e in events)
    ids.update(getattr(e.data, "sku", "") for e in events)
    ids.update(getattr(e.data, "order_id", "") for e in events)
    return not all(is_key_id(v) for v in ids)


def _check_key_ids(event: Event) -> None:
    for name in KEY_ID_FIELDS:
        value = event.room_id if name == "room_id" else getattr(event.data, name[5:], "")
        if not is_key_id(value):
            raise ValidationError(name, f"may contain only {ID_CHARS}; got {value[:64]!r}")


def _huge_int_field(obj: Mapping[str, Any], prefix: str = "") -> str:
    for key, value in obj.items():
        if isinstance(value, dict):
            if found := _huge_int_field(value, f"{prefix}{key}."):
                return found
        elif type(value) is int and not -(2**63) <= value < 2**64:
            return f"{prefix}{key}"
    return ""


def _precheck(obj: Mapping[Any, Any]) -> None:
    """Rules that must win over whatever msgspec would report first (checked only on the slow path)."""
    for key in obj:
        if type(key) is not str:
            raise ValidationError(str(key)[:64], "unknown envelope field")
    data = obj.get("data")
    if isinstance(data, dict):
        for key in data:
            if type(key) is not str:
                raise ValidationError(f"data.{str(key)[:64]}", "unknown field")
    if "type" not in obj:
        raise ValidationError("type", "missing required field")
    type_ = obj["type"]
    if type(type_) is not str:
        raise ValidationError("type", f"expected string, got {_jtype(type_)}")
    if type_ not in PAYLOADS:
        raise ValidationError("type", f"unknown event type {type_[:64]!r}")
    v = obj.get("v")
    if type(v) is int and v not in SUPPORTED_VERSIONS[type_]:
        raise ValidationError("v", f"unsupported schema version {v} for {type_} "
                                   f"(supported: {sorted(SUPPORTED_VERSIONS[type_])})")


_MAX_REPORTED_FIELDS: Final = 32


def all_errors(obj: Any) -> list[ValidationError]:
    """Every invalid field of one event, not just the first: each error found is set aside (an unknown
    or optional field dropped, a required one given a valid stand-in) and the event checked again."""
    errors: list[ValidationError] = []
    if not isinstance(obj, dict):
        return [ValidationError("", f"event must be a JSON object, got {_jtype(obj)}")]
    work = {k: (dict(v) if isinstance(v, dict) else v) for k, v in obj.items()}
    for _ in range(_MAX_REPORTED_FIELDS):
        try:
            parse_event(work)
            return errors
        except ValidationError as err:
            errors.append(err)
            if err.field in ("", "type", "v") or not _set_aside(work, err):
                return errors
    return errors


def _set_aside(work: dict[str, Any], err: ValidationError) -> bool:
    parts = err.field.split(".")
    target, name = (work, parts[0]) if len(parts) == 1 else (work.get("data"), parts[1])
    if not isinstance(target, dict) or len(parts) > 2:
        return False
    cls: type[Struct] = PAYLOADS[work["type"]] if len(parts) == 2 else ENVELOPES[work["type"]]
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    if name not in fields or fields[name].default is not msgspec.NODEFAULT:
        return target.pop(name, msgspec.UNSET) is not msgspec.UNSET or name not in fields
    stand_in = _STAND_INS.get(name)
    current = target.get(name)
    if stand_in is None or (type(current) is type(stand_in) and current == stand_in):
        return False
    target[name] = stand_in
    return True


_STAND_INS: Final[dict[str, Any]] = {
    "event_id": "x", "ts": EPOCH_MS_MIN, "room_id": "x", "user_id": "x", "data": {}, "order_id": "x",
    "sale_id": "x", "sku": "x", "qty": 1, "unit_price": 0, "price": 0, "allotment": 0, "per_user_limit": 1,
    "starts_at": EPOCH_MS_MIN, "ends_at": EPOCH_MS_MAX, "delta": 0, "reserved_until": EPOCH_MS_MIN,
    "sold_out_at": EPOCH_MS_MIN, "opened_at": EPOCH_MS_MIN, "allotted": 0, "subject_id": "x", "metric": "x",
    "rate": 0, "baseline": 0, "factor": 0, "window_s": 1, "scope": "room", "cause": "ttl",
}


# --- msgspec errors in the contract's words ----------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_JSON_TYPES: Final = {"int": "integer", "str": "string", "float": "number", "bool": "boolean", "null": "null",
                      "object": "object", "array": "array"}
_TIME_FIELDS: Final = frozenset({"ts", "starts_at", "ends_at", "reserved_until", "sold_out_at", "opened_at"})


def _jtype(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def _dotted(path: str) -> tuple[int | None, str]:
    """``[3].data.qty`` → (3, ``data.qty``); ``.data.qty`` → (None, ``data.qty``)."""
    index = None
    m = re.match(r"^\[(\d+)\]", path)
    if m:
        index = int(m.group(1))
        path = path[m.end():]
    return index, re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split(".") if dotted else ():
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            return msgspec.UNSET
    return obj


def _enum_values(dotted: str) -> tuple[str, ...]:
    name = dotted.rsplit(".", 1)[-1]
    if dotted == "channel" or name == "target":
        return CHANNELS
    if name == "reason":
        return REJECT_REASONS
    if name == "cause":
        return EXPIRY_CAUSES
    if name == "scope":
        return ("room", "sale")
    return ()


def translate(exc: msgspec.ValidationError, obj: Any = None) -> ValidationError:
    """A msgspec error as a ValidationError naming the dotted field, in the contract's words."""
    m = _AT.match(str(exc))
    assert m is not None
    msg, path = m.group("msg"), m.group("path") or ""
    _, field_name = _dotted(path)
    value = _lookup(obj, field_name) if obj is not None else msgspec.UNSET
    got = "" if value is msgspec.UNSET or isinstance(value, dict | list) else f"; got {value!r}"

    if mm := re.match(r"Object missing required field `(\w+)`", msg):
        return ValidationError(_join(field_name, mm.group(1)), "missing required field")
    if mm := re.match(r"Object contains unknown field `(.*)`", msg, re.S):
        name = mm.group(1)[:64]
        if field_name:
            type_ = obj.get("type") if isinstance(obj, dict) else None
            return ValidationError(_join(field_name, name), f"unknown field for {type_}")
        return ValidationError(name, "unknown envelope field")
    if mm := re.match(r"Expected `(\w+)`(?: \| `null`)?, got `(\w+)`", msg):
        want, have = _JSON_TYPES.get(mm.group(1), mm.group(1)), _JSON_TYPES.get(mm.group(2), mm.group(2))
        if field_name == "":
            return ValidationError("", f"event must be a JSON object, got {have}")
        return ValidationError(field_name, f"expected {want}, got {have}")
    if mm := re.match(r"Expected `(?:int|float)` (>=|<=) (\S+)", msg):
        op, bound = mm.group(1), mm.group(2)
        text = f"must be {op} {bound}{got}"
        if op == ">=" and field_name.rsplit(".", 1)[-1] in _TIME_FIELDS and isinstance(value, int) and value > 0:
            text += " (times are epoch milliseconds; this looks like seconds)" if value < 10**11 else ""
        return ValidationError(field_name, text)
    if mm := re.match(r"Expected `str` of length >= 1", msg):
        return ValidationError(field_name, "must not be empty")
    if mm := re.match(r"Expected `str` of length <= (\d+)", msg):
        return ValidationError(field_name, f"longer than {mm.group(1)} characters")
    if msg.startswith("Invalid enum value"):
        if field_name == "v":
            return ValidationError("v", f"unsupported schema version{got.replace('; got', '')}")
        allowed = _enum_values(field_name)
        return ValidationError(field_name, f"must be one of {', '.join(allowed)}{got}")
    if msg.startswith("Invalid value") and field_name == "type":
        return ValidationError("type", f"unknown event type{got.replace('; got', '')}")
    if msg == "Number out of range":
        return ValidationError(field_name, "number out of range")
    if mm := re.match(r"(data\.\w+): (.*)", msg, re.S):  # a __post_init__ rule names its own field
        return ValidationError(mm.group(1), mm.group(2))
    return ValidationError(field_name, msg[:300])


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


__all__ = [
    "CHANNELS", "ENVELOPES", "EPOCH_MS_MAX", "EPOCH_MS_MIN", "Event", "INPUT_TYPES", "MAX_EXACT", "MAX_ID_LEN",
    "OUTPUT_TYPES", "PAYLOADS", "Payload", "REJECT_REASONS", "ValidationError", "all_errors", "make_event",
    "new_event",
    "parse_event", "translate", "is_key_id", "bad_key_ids",
]
