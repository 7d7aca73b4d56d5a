"""The coalescing transport's ack bookkeeping (streams.transport), on Faust's own Consumer (no broker
needed: nothing here fetches). The end-to-end checks, with committed offsets read back from a real
broker, are in test_record_batching.py."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import AsyncIterator
from typing import Any

import pytest
from faust.types import TP

from streams.pipeline import FlashsaleApp
from streams.transport import CoalescedMessage, Consumer, _cut

Rec = namedtuple("Rec", "topic partition offset timestamp timestamp_type key value headers")
TOPIC = "orders"
TP0 = TP(TOPIC, 0)


@pytest.fixture
async def consumer() -> AsyncIterator[Any]:
    """Made inside the test's running loop, which the never-started app then uses."""
    app = FlashsaleApp("unit-coalesce", broker="flashsale://127.0.0.1:1", store="memory://")
    c = app.consumer
    assert isinstance(c, Consumer)
    app.topics.acking_topics.add(TOPIC)  # what subscribing an agent to the topic does
    c._committed_offset[TP0] = 10  # committed: the next record to read is offset 10
    yield c
    c._thread.thread_loop.close()  # the consumer thread's own loop (the thread never started)


def run(consumer: Any, first: int, last: int) -> CoalescedMessage:
    recs = [Rec(TOPIC, 0, o, 1_700_000_000_000, 0, b"k", b"v%d" % o, []) for o in range(first, last + 1)]
    return CoalescedMessage(TP0, recs, consumer.app.consumer_generation_id)


async def test_a_run_commits_exactly_its_offsets_and_only_in_order(consumer: Any) -> None:
    a, b = run(consumer, 10, 19), run(consumer, 20, 29)
    assert consumer.ack(b)
    assert consumer._new_offset(TP0) is None, "offsets 10-19 are not done: nothing may commit"
    assert consumer.ack(a)
    assert consumer._new_offset(TP0) == 30, "both runs done: commit right after the last offset"
    assert not consumer.ack(a), "a second ack of the same run records nothing"


async def test_a_run_of_a_revoked_partition_or_an_older_generation_commits_nothing(consumer: Any) -> None:
    a, b, c = run(consumer, 10, 19), run(consumer, 20, 29), run(consumer, 30, 39)
    for m in (a, b, c):
        consumer._live.add(m)
    assert consumer.kill_runs({TP(TOPIC, 1)}) == 0, "another partition's revocation kills nothing"
    assert consumer.kill_runs({TP0}) == 2 + 1
    assert not consumer.ack(a) and not consumer.ack(b)
    assert consumer._new_offset(TP0) is None
    stale = run(consumer, 10, 19)
    consumer.app.consumer_generation_id += 1  # a rebalance happened since it was fetched
    assert not consumer.ack(stale)
    assert consumer._new_offset(TP0) is None
    fresh = run(consumer, 10, 19)
    assert consumer.ack(fresh)
    assert consumer._new_offset(TP0) == 20


def test_runs_are_cut_by_count_and_bytes_never_empty_never_reordered() -> None:
    recs = [Rec(TOPIC, 0, o, 0, 0, None, b"x" * (10 if o != 5 else 500), []) for o in range(12)]
    runs = _cut(recs, max_records=4, max_bytes=100)
    assert [r.offset for run in runs for r in run] == list(range(12))
    assert all(run and len(run) <= 4 for run in runs)
    assert [len(run) for run in runs] == [4, 1, 1, 4, 2], "the 500-byte record travels alone"
