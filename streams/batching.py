"""What an agent's batch of Faust events holds: the consumed records, coalesced or not.

With coalescing on (``FLASHSALE_COALESCE_RECORDS``, see ``streams.transport``) an event carries a
run of consecutive records of one partition; otherwise it is one record. Agents never read
``event.value`` of their input topics directly: :func:`records_of` expands either kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from streams.emit import Record, record_time_ms
from streams.transport import CoalescedMessage

# verify(logical_topic, value, headers) -> bool: a valid worker signature (order-decisions readers)
Verify = Callable[[str, bytes | None, Any], bool]


def records_of(events: Sequence[Any], topic: str, verify: Verify | None = None) -> list[Record]:
    """The records of ``events`` (Faust events of logical topic ``topic``), in offset order."""
    out: list[Record] = []
    add = out.append
    for e in events:
        message = e.message
        if isinstance(message, CoalescedMessage):
            partition = message.partition
            for r in message.records:
                ts = r.timestamp
                add(Record(topic, partition, r.offset, r.value,
                           timestamp_ms=ts if ts is not None and ts > 0 else None,
                           signature_ok=verify is None or verify(topic, r.value, r.headers)))
        else:
            add(Record(topic, message.partition, message.offset, e.value, timestamp_ms=record_time_ms(message),
                       signature_ok=verify is None or verify(topic, e.value, message.headers)))
    return out


def record_count(events: Sequence[Any]) -> int:
    """How many records ``events`` carry."""
    return sum(len(e.message.records) if isinstance(e.message, CoalescedMessage) else 1 for e in events)


def value_bytes(event: Any) -> int:
    """Bytes of record values one event carries."""
    message = getattr(event, "message", None)
    if isinstance(message, CoalescedMessage):
        return int(message.serialized_value_size)
    return len(event.value or b"")
