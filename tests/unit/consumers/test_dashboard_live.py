"""LiveHub mechanics: one read per room per tick, fan-out, single-slot mailboxes, idle cleanup, close.

The source here is an in-memory read model (the Redis-backed one is exercised in
test_dashboard_server.py); these tests are about the hub's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from consumers.dashboard.live import ALL, LiveHub, Subscriber, parse_channel, sse_frame
from consumers.dashboard.metrics import DashboardMetrics

WAIT_S = 5.0


class MemorySource:
    """A read model over a dict; counts every read so tests can see how often the hub reads."""

    def __init__(self, rooms: dict[str, dict[str, Any]]) -> None:
        self.data = rooms
        self.snapshot_calls: dict[str, int] = {}
        self.funnel_calls: dict[tuple[str, str | None], int] = {}
        self.room_list_calls = 0
        self.fail = False

    async def snapshot(self, room_id: str, now_ms: int) -> dict[str, Any] | None:
        self.snapshot_calls[room_id] = self.snapshot_calls.get(room_id, 0) + 1
        if self.fail:
            raise ConnectionError("redis is down")
        snap = self.data.get(room_id)
        return None if snap is None else {**snap, "room_id": room_id}

    async def funnel(self, room_id: str, channel: str | None, now_ms: int) -> dict[str, Any] | None:
        self.funnel_calls[(room_id, channel)] = self.funnel_calls.get((room_id, channel), 0) + 1
        return {"room_id": room_id, "channel": channel, "stages": []}

    async def rooms(self, now_ms: int) -> list[dict[str, Any]]:
        self.room_list_calls += 1
        return [{"room_id": r, "last_event_ms": 0, "viewers_online": 1} for r in self.data]


def parse(frame: bytes) -> tuple[str, dict[str, Any]]:
    lines = frame.decode().strip().split("\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return fields["event"], orjson.loads(fields["data"])


async def frames(sub: Subscriber, n: int) -> list[bytes]:
    out: list[bytes] = []
    async with asyncio.timeout(WAIT_S):
        while len(out) < n:
            frame = await sub.next(1.0)
            assert frame is not None, "stream closed early"
            if frame:
                out.append(frame)
    return out


def make_hub(source: MemorySource, **kw: Any) -> tuple[LiveHub, DashboardMetrics]:
    metrics = DashboardMetrics(CollectorRegistry())
    opts: dict[str, Any] = {"interval_s": 0.05, "rooms_refresh_s": 60.0, "idle_grace_s": 0.0}
    opts.update(kw)
    return LiveHub(source, metrics, **opts), metrics


async def test_one_read_per_tick_fanned_out_to_every_subscriber() -> None:
    source = MemorySource({"r1": {"viewers_online": 7}})
    hub, metrics = make_hub(source)
    subs = [hub.subscribe("r1") for _ in range(50)]
    try:
        got = await asyncio.gather(*(frames(s, 3) for s in subs))
        seqs: dict[int, set[bytes]] = {}
        for per_sub in got:
            for frame in per_sub:
                event, payload = parse(frame)
                assert event == "snapshot"
                assert payload["snapshot"]["viewers_online"] == 7
                seqs.setdefault(payload["seq"], set()).add(frame)
        # Every subscriber that saw tick N got the very same bytes.
        assert all(len(variants) == 1 for variants in seqs.values())
        ticks = int(metrics.ticks._value.get())
        assert source.snapshot_calls["r1"] == ticks
        assert ticks < 3 * 50  # reads follow ticks, not subscribers
        assert max(seqs) <= ticks
        assert hub.connections == 50
        assert metrics.connections._value.get() == 50
    finally:
        await hub.close()


async def test_rooms_are_independent_and_unknown_room_gets_null_snapshot() -> None:
    source = MemorySource({"r1": {"viewers_online": 1}})
    hub, _ = make_hub(source)
    try:
        known, unknown = hub.subscribe("r1"), hub.subscribe("ghost")
        (f1,), (f2,) = await asyncio.gather(frames(known, 1), frames(unknown, 1))
        assert parse(f1)[1]["snapshot"]["room_id"] == "r1"
        payload = parse(f2)[1]
        assert payload["room_id"] == "ghost" and payload["snapshot"] is None and payload["funnel"] is None
        assert [r["room_id"] for r in payload["rooms"]] == ["r1"]
        assert ("ghost", None) not in source.funnel_calls  # no funnel reads for a room with no data
        assert hub.feed_count() == 2
    finally:
        await hub.close()


async def test_funnel_is_read_once_per_channel_in_use() -> None:
    source = MemorySource({"r1": {}})
    hub, metrics = make_hub(source)
    subs = [hub.subscribe("r1", ALL) for _ in range(5)] + [hub.subscribe("r1", "live_room") for _ in range(5)]
    try:
        got = await asyncio.gather(*(frames(s, 2) for s in subs))
        for sub, per_sub in zip(subs, got, strict=True):
            for frame in per_sub:
                payload = parse(frame)[1]
                assert payload["channel"] == sub.channel
                assert payload["funnel"]["channel"] == (None if sub.channel == ALL else sub.channel)
        ticks = int(metrics.ticks._value.get())
        assert source.funnel_calls[("r1", None)] <= ticks
        assert source.funnel_calls[("r1", "live_room")] <= ticks
        assert source.room_list_calls == 1  # cached across ticks and rooms
    finally:
        await hub.close()


async def test_slow_subscriber_gets_the_newest_frame_not_a_backlog() -> None:
    sub = Subscriber("r1", ALL)
    assert sub.offer(b"one") is False
    assert sub.offer(b"two") is True  # replaced an unread frame
    assert await sub.next(0.1) == b"two"
    assert await sub.next(0.01) == b""  # nothing pending: keepalive
    sub.close()
    assert await sub.next(0.1) is None


async def test_feed_stops_when_the_last_subscriber_leaves() -> None:
    source = MemorySource({"r1": {}})
    hub, metrics = make_hub(source)
    try:
        sub = hub.subscribe("r1")
        await frames(sub, 1)
        hub.unsubscribe(sub)
        hub.unsubscribe(sub)  # twice is harmless
        assert hub.connections == 0
        async with asyncio.timeout(WAIT_S):
            while hub.feed_count():  # noqa: ASYNC110 - polling the hub's state, bounded by the timeout
                await asyncio.sleep(0.02)
        assert metrics.rooms_watched._value.get() == 0
        calls = source.snapshot_calls["r1"]
        await asyncio.sleep(0.2)
        assert source.snapshot_calls["r1"] == calls  # no reads for nobody
        again = hub.subscribe("r1")  # a new feed starts on demand
        await frames(again, 1)
    finally:
        await hub.close()


async def test_close_ends_every_stream() -> None:
    hub, metrics = make_hub(MemorySource({"r1": {}}))
    subs = [hub.subscribe("r1") for _ in range(3)]
    await frames(subs[0], 1)
    await hub.close()
    for sub in subs:
        assert await sub.next(0.5) is None  # even one with an unread frame: the stream ends
    assert hub.feed_count() == 0 and hub.connections == 0
    assert metrics.connections._value.get() == 0
    with pytest.raises(RuntimeError):
        hub.subscribe("r1")


async def test_read_failure_sends_status_then_recovers() -> None:
    source = MemorySource({"r1": {"viewers_online": 3}})
    source.fail = True
    hub, metrics = make_hub(source)
    try:
        sub = hub.subscribe("r1")
        (frame,) = await frames(sub, 1)
        event, payload = parse(frame)
        assert event == "status" and payload["error"]
        assert metrics.errors._value.get() >= 1
        source.fail = False
        async with asyncio.timeout(WAIT_S):
            while True:
                (frame,) = await frames(sub, 1)
                if parse(frame)[0] == "snapshot":
                    break
        assert parse(frame)[1]["snapshot"]["viewers_online"] == 3
    finally:
        await hub.close()


def test_frame_format_and_channels() -> None:
    assert sse_frame("snapshot", b'{"a":1}', 7) == b'id: 7\nevent: snapshot\ndata: {"a":1}\n\n'
    assert parse_channel(None) == ALL and parse_channel("") == ALL
    assert parse_channel("share_link") == "share_link"
    assert parse_channel("other") == "other"  # events that name no channel have a funnel too (issue 15)
    assert parse_channel("bogus") is None


async def test_a_page_that_leaves_before_the_first_tick_does_not_busy_loop() -> None:
    source = MemorySource({"r1": {}})
    hub, metrics = make_hub(source, interval_s=0.5, idle_grace_s=0.5)
    try:
        sub = hub.subscribe("r1")  # wakes the feed...
        hub.unsubscribe(sub)  # ...and leaves before it ran
        cpu = time.process_time()
        await asyncio.sleep(0.3)
        assert time.process_time() - cpu < 0.1  # waited, did not spin on the stale wake-up
        assert hub.feed_count() == 1  # kept for the grace period
        assert source.snapshot_calls.get("r1", 0) == 0  # nobody to read for
        async with asyncio.timeout(WAIT_S):
            while hub.feed_count():  # noqa: ASYNC110 - polling the hub's state, bounded by the timeout
                await asyncio.sleep(0.05)
    finally:
        await hub.close()
