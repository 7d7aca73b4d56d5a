"""Front-door parts without a broker: the coalescer's records and failures, the admission rule, the
repeated-key shortcut."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
import pytest

from producers.gateway.coalesce import OrderCoalescer
from producers.gateway.routes import repeated_in_body
from producers.gateway.state import InFlight, SaleStock
from producers.sdk import Prepared, PublishError, Record, prepare
from schemas.codec import decode_record, repeated_keys
from schemas.topics import TopicNames


def order(i: int, sku: str = "sku-1") -> Prepared:
    return prepare(
        {
            "type": "order.placed",
            "v": 1,
            "event_id": f"e-{i}",
            "ts": 1_700_000_000_000,
            "room_id": "r",
            "user_id": f"u-{i}",
            "channel": "live_room",
            "data": {"order_id": f"o-{i}", "sale_id": "s", "sku": sku, "qty": 1, "unit_price": 990},
        }
    )


class RecordingPublisher:
    """Stands in for the SDK's Publisher at its one seam (``send_records``): keeps the records, fails the
    ones whose first event id is in ``fail``."""

    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.names = TopicNames("t.")
        self.records: list[Record] = []
        self.fail = fail

    async def send_records(self, records: list[Record]) -> list[Any]:
        await asyncio.sleep(0.001)
        for r in records:
            self.records.append(r)
            ids = [e.event_id for e in decode_record(r.value).events]
            if ids[0] in self.fail:
                raise PublishError("broker said no")
        return []


def coalescer(pub: RecordingPublisher, **kw: Any) -> OrderCoalescer:
    opts: dict[str, Any] = {"window_s": 0.01, "max_events": 500, "max_bytes": 100_000}
    opts.update(kw)
    return OrderCoalescer(pub, **opts)  # type: ignore[arg-type]


async def test_concurrent_orders_of_one_key_share_a_record_in_arrival_order() -> None:
    pub = RecordingPublisher()
    c = coalescer(pub)
    await asyncio.gather(*(c.publish(order(i, "sku-1" if i % 2 else "sku-2")) for i in range(10)))
    by_key = {r.key: [e.event_id for e in decode_record(r.value).events] for r in pub.records}
    assert by_key == {b"sku-1": [f"e-{i}" for i in range(1, 10, 2)], b"sku-2": [f"e-{i}" for i in range(0, 10, 2)]}
    assert all(r.count == 5 for r in pub.records)


async def test_records_are_bounded_by_count_and_bytes() -> None:
    pub = RecordingPublisher()
    c = coalescer(pub, max_events=4)
    await asyncio.gather(*(c.publish(order(i)) for i in range(10)))
    assert [r.count for r in pub.records] == [4, 4, 2]
    pub.records.clear()
    size = len(order(0).raw)
    c = coalescer(pub, max_bytes=3 * size + 4)  # three events, two commas, two brackets
    await asyncio.gather(*(c.publish(order(i)) for i in range(7)))
    assert [r.count for r in pub.records] == [3, 3, 1]
    assert all(len(r.value) <= 3 * size + 4 for r in pub.records)
    pub.records.clear()
    c = coalescer(pub, max_events=1)  # off: one record per order, each a plain object
    await asyncio.gather(*(c.publish(order(i)) for i in range(3)))
    assert [r.value[:1] for r in pub.records] == [b"{"] * 3


async def test_a_failed_record_fails_exactly_its_orders() -> None:
    pub = RecordingPublisher(fail=frozenset({"e-0"}))
    c = coalescer(pub, max_events=3)
    results = await asyncio.gather(*(c.publish(order(i)) for i in range(6)), return_exceptions=True)
    assert [isinstance(r, PublishError) for r in results] == [True] * 3 + [False] * 3


async def test_a_caller_that_goes_away_does_not_cancel_the_record() -> None:
    pub = RecordingPublisher()
    c = coalescer(pub, window_s=0.02)
    gone = asyncio.create_task(c.publish(order(0)))
    stays = asyncio.create_task(c.publish(order(1)))
    await asyncio.sleep(0)
    gone.cancel()
    await stays
    assert [r.count for r in pub.records] == [2]
    await c.close()


async def test_close_sends_what_is_gathered() -> None:
    pub = RecordingPublisher()
    c = coalescer(pub, window_s=60)
    task = asyncio.create_task(c.publish(order(0)))
    await asyncio.sleep(0)
    await c.close()
    await task
    assert [r.count for r in pub.records] == [1]


def test_admission_rule() -> None:
    f = InFlight()
    known = SaleStock(False, 3)
    assert f.admits("s", 5, known)  # nothing in flight: always to the worker (it answers sold_out or invalid)
    f.add("s", 2)
    assert f.admits("s", 1, known) and not f.admits("s", 2, known)
    assert f.admits("s", 2, SaleStock(False, None))  # units unknown: the worker decides
    assert f.admits("other", 1, SaleStock(False, 0))
    f.add("s", 1)
    assert not f.admits("s", 1, known)
    f.remove("s", 3)
    assert f.units("s") == 0 and f.total() == 0 and f.admits("s", 3, known)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":1,"b":2}',
        b'{"a":1,"a":2}',
        b'{"a":1,"a" :2}',
        b'{"a" : 1 , "a":2}',
        b'{"a":"x:y","a":1}',
        b'{"a":{"b":1,"b":2}}',
        b'{"a":[{"b":1},{"b":2,"b":3}]}',
        b'{"a:":1,"b":"::"}',
        b'{"a":"\\":","a":1}',
        b'{"t":"12:00","u":1}',
        b'[{"a":1},{"a":1,"a":2}]',
    ],
)
def test_the_repeated_key_shortcut_never_hides_a_repeat(raw: bytes) -> None:
    assert repeated_in_body(raw, orjson.loads(raw)) == repeated_keys(raw)


def test_the_repeated_key_shortcut_on_generated_bodies() -> None:
    keys = ["a", "b", "a:", ":"]
    for n in range(1, 4):
        for names in itertools.product(keys, repeat=n):
            for sep in (":", " :", ": "):
                raw = ("{" + ",".join(f'"{k}"{sep}1' for k in names) + "}").encode()
                assert repeated_in_body(raw, orjson.loads(raw)) == repeated_keys(raw), raw


@pytest.mark.parametrize(("sale", "order_id"), [("s", "o"), ("sale-1", "o-1"), ("ü", "x" * 200), ("", "")])
def test_the_order_event_id_is_the_uuid5_it_always_was(sale: str, order_id: str) -> None:
    import uuid

    from producers.sdk import order_event_id

    namespace = uuid.UUID("6f1c3f4e-8a53-4d0a-9a43-53a1e5f1a7c1")
    assert order_event_id(sale, order_id) == uuid.uuid5(namespace, f"order.placed\x00{sale}\x00{order_id}").hex
