"""Counters against real Redis: a scripted stream whose every number is recounted independently.

The scenario (also used by the end-to-end test through Kafka) is generated from a seed; the
reference answers are computed here by plain Python from the event list and the documented
rules, never by the code under test. The handler runs without Faust: records go straight to
``CountersService.handle`` (one batch at a time), and what it would produce is collected.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from consumers import readmodel
from schemas import keys
from schemas.codec import encode_batch
from schemas.events import (
    CHANNELS,
    CartAdded,
    CartRemoved,
    Event,
    OrderAccepted,
    OrderPaid,
    OrderPlaced,
    ProductClicked,
    SaleOpened,
    ViewerCommented,
    ViewerJoined,
    ViewerLeft,
    ViewerLiked,
    ViewerShared,
    make_event,
)
from schemas.topics import DECISIONS, ENGAGEMENT, ORDERS, logical_topic, partition_key
from streams.counters.params import CounterParams
from streams.counters.service import CountersService
from streams.counters.store import CountersStore
from streams.emit import Record
from streams.metrics import WorkerMetrics

pytestmark = pytest.mark.integration

T0 = 1_700_000_040_000
DURATION_S = 180
PARTITIONS = 4
PARAMS = CounterParams(lateness_ms=30_000, dedupe_ms=120_000, stale_viewer_ms=60_000)
SALES = {  # sale → (room, sku, price, allotment, opens at second)
    "s1": ("r1", "k1", 1999, 40, 60),
    "s2": ("r2", "k2", 500, 100, 30),
}
DISTRIBUTORS = ("d1", "d2", "d3")


@dataclass
class Scenario:
    events: list[Event] = field(default_factory=list)  # publish order within each partition
    late: set[str] = field(default_factory=set)  # event ids older than the lateness bound on arrival
    too_old: set[str] = field(default_factory=set)  # older than the dedupe horizon: dropped
    prices: dict[str, tuple[int, int]] = field(default_factory=dict)  # order_id → (qty, unit price) for stock
    # order_id → (sale_id, stock state) of orders whose payment the stock core refuses
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)
    burst: tuple[int, int] = (120, 135)  # r1's engagement burst, seconds after T0

    @property
    def newest(self) -> int:
        return max(e.ts for e in self.events)


def _ev(payload: Any, eid: str, ts: int, room: str, user: str, channel: str = "live_room") -> Event:
    ref = DISTRIBUTORS[zlib.crc32(user.encode()) % 3] if channel == "share_link" else None
    return make_event(payload, event_id=eid, ts=ts, room_id=room, user_id=user, channel=channel, referrer_id=ref)


def _payload(kind: str, sku: str, rng: random.Random) -> Any:
    if kind == "like":
        return ViewerLiked(count=rng.randint(1, 5))
    if kind == "cart":
        return CartAdded(sku=sku, qty=rng.randint(1, 3))
    return {"comment": ViewerCommented(text="hi"), "join": ViewerJoined(), "click": ProductClicked(sku=sku),
            "share": ViewerShared(), "leave": ViewerLeft(), "remove": CartRemoved(sku=sku)}[kind]


def build_scenario(seed: int = 11, too_old: bool = True) -> Scenario:
    rng = random.Random(seed)
    sc = Scenario()
    eng: list[Event] = []
    kinds = ["like"] * 40 + ["comment"] * 12 + ["join"] * 15 + ["click"] * 10 + ["cart"] * 8 + ["share"] * 5 + \
        ["leave"] * 7 + ["remove"] * 3
    for room, base in (("r1", 8), ("r2", 6)):
        users = [f"{room}-u{i}" for i in range(120)]
        channel_of = {u: rng.choice(CHANNELS) for u in users}
        for s in range(DURATION_S):
            rate = 60 if room == "r1" and sc.burst[0] <= s < sc.burst[1] else base
            for j, ms in enumerate(sorted(rng.randrange(1000) for _ in range(rate))):
                u = rng.choice(users)
                ch = channel_of[u]
                k = rng.choice(kinds)
                sku = rng.choice(("k1", "k2", "k3"))
                eng.append(_ev(_payload(k, sku, rng), f"{room}-e{s}-{j}", T0 + s * 1000 + ms, room, u, ch))
    # a producer duplicate (same event twice in a row) in r2
    dup_at = next(i for i, e in enumerate(eng) if e.room_id == "r2" and e.ts > T0 + 50_000)
    eng.insert(dup_at + 1, eng[dup_at])
    end = T0 + DURATION_S * 1000
    # late likes (45 s behind the room's newest; lateness is 30 s) and one event beyond the dedupe horizon
    for i in range(3):
        e = _ev(ViewerLiked(count=2), f"r1-late{i}", end - 45_000 - i, "r1", "r1-u1", "live_room")
        eng.append(e)
        sc.late.add(e.event_id)
    if too_old:
        e = _ev(ViewerCommented(text="old"), "r1-old", T0 + 5_000, "r1", "r1-u2", "live_room")
        eng.append(e)
        sc.too_old.add(e.event_id)

    orders: list[Event] = []
    decisions: list[Event] = []
    rejected_orders: list[tuple[str, str, str, int, str, str, str, int]] = []
    unpaid: list[tuple[str, str, str, int, str, str, str, int]] = []
    n = 0
    for sale_id, (room, sku, price, allot, opens) in SALES.items():
        orders.append(_ev(SaleOpened(sale_id=sale_id, sku=sku, price=price, allotment=allot, per_user_limit=3,
                                     starts_at=T0, ends_at=T0 + 3_600_000), f"open-{sale_id}", T0 + opens * 1000 - 1,
                          room, "host"))
        accepted = 0
        for s in range(opens, DURATION_S):
            per_s = 12 if sale_id == "s1" and s < opens + 15 else (1 if sale_id == "s1" or s % 2 == 0 else 0)
            for j in range(per_s):
                n += 1
                oid = f"o{n}"
                u = f"{room}-u{rng.randrange(120)}"
                ch = rng.choice(CHANNELS)
                qty = rng.randint(1, 2)
                ts = T0 + s * 1000 + j * 50 + 10
                orders.append(_ev(OrderPlaced(order_id=oid, sale_id=sale_id, sku=sku, qty=qty, unit_price=price),
                                  f"place-{oid}", ts, room, u, ch))
                if accepted + qty > allot:
                    rejected_orders.append((oid, sale_id, sku, ts, room, u, ch, qty * price))
                if accepted + qty <= allot:
                    accepted += qty
                    decisions.append(_ev(OrderAccepted(order_id=oid, sale_id=sale_id, sku=sku, qty=qty,
                                                       unit_price=price, reserved_until=ts + 300_000),
                                         f"dec:{oid}", ts + 20, room, u, ch))
                    sc.prices[oid] = (qty, price)
                    if rng.random() < 0.7 and s < DURATION_S - 4:
                        amount = qty * price if rng.random() < 0.5 else None
                        orders.append(_ev(OrderPaid(order_id=oid, sale_id=sale_id, sku=sku, amount=amount),
                                          f"pay-{oid}", ts + 3000, room, u, ch))
                    elif s < DURATION_S - 4:
                        unpaid.append((oid, sale_id, sku, ts, room, u, ch, qty * price))
    # a second payment event for an already paid order: the order's payment counts once
    first_paid = next(e for e in orders if e.type == "order.paid")
    d = first_paid.data
    assert isinstance(d, OrderPaid)
    orders.append(_ev(OrderPaid(order_id=d.order_id, sale_id=d.sale_id, sku=d.sku, amount=d.amount),
                      "pay-again", first_paid.ts + 500, first_paid.room_id, first_paid.user_id, first_paid.channel))
    # payments the stock core refuses: for a rejected order, and after a reservation was released
    # (one with an amount, one priced from the record): none of them counts in the room
    for (oid, sale_id, sku, ts, room, u, ch, _value), state, amount in (
            (rejected_orders[0], "rejected", rejected_orders[0][7]), (unpaid[0], "expired", unpaid[0][7]),
            (unpaid[1], "expired", None)):
        sc.refused[oid] = (sale_id, state)
        orders.append(_ev(OrderPaid(order_id=oid, sale_id=sale_id, sku=sku, amount=amount),
                          f"pay-{oid}", ts + 3000, room, u, ch))
    orders.sort(key=lambda e: e.ts)
    decisions.sort(key=lambda e: e.ts)
    sc.events = eng + orders + decisions
    return sc


# --- records, as a batching producer would write them --------------------------------------------


def partition_of(event: Event, partitions: int = PARTITIONS) -> int:
    return zlib.crc32(partition_key(event)) % partitions


def to_records(events: Iterable[Event], offset0: int = 0, per_record: int = 50) -> dict[str, list[Record]]:
    """Logical topic → records (JSON arrays of up to ``per_record`` events of one partition key),
    offsets growing per partition from ``offset0``."""
    runs: dict[tuple[str, int], list[list[Event]]] = defaultdict(list)
    for e in events:
        topic = logical_topic(e.type)
        lst = runs[(topic, partition_of(e))]
        if not lst or len(lst[-1]) >= per_record or partition_key(lst[-1][0]) != partition_key(e):
            lst.append([])
        lst[-1].append(e)
    out: dict[str, list[Record]] = defaultdict(list)
    for (topic, part), chunks in sorted(runs.items()):
        for i, chunk in enumerate(chunks):
            out[topic].append(Record(topic, part, offset0 + i, encode_batch(chunk)))
    return out


@dataclass
class Sink:
    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def alerts(self) -> list[dict[str, Any]]:
        out = []
        for topic, _, value in self.sent:
            if topic == "alerts":
                obj = orjson.loads(value)
                out.extend(obj if isinstance(obj, list) else [obj])
        return out


class Harness:
    def __init__(self, client: aioredis.Redis, params: CounterParams = PARAMS) -> None:
        self.metrics = WorkerMetrics()
        self.sink = Sink()
        store = CountersStore(client, params, self.metrics)
        self.services = {t: CountersService(store, params, self.metrics, self.sink.send, t)
                         for t in (ENGAGEMENT, ORDERS, DECISIONS)}

    async def feed(self, records: dict[str, list[Record]], batch: int = 7) -> None:
        for topic in (ENGAGEMENT, ORDERS, DECISIONS):
            recs = records.get(topic, [])
            # a consumer sees each partition in order; batches interleave partitions
            recs = sorted(recs, key=lambda r: (r.offset, r.partition))
            for i in range(0, len(recs), batch):
                await self.services[topic].handle(recs[i:i + batch])


async def write_stock_orders(client: aioredis.Redis, sc: Scenario) -> None:
    """What the stock core would have recorded for accepted orders: owner, units, unit price and deadline
    (the counters count a payment as the stock core prices it)."""
    placed = {e.data.order_id: e for e in sc.events if e.type == "order.placed"}  # type: ignore[attr-defined]
    for oid, (q, p) in sc.prices.items():
        e = placed[oid]
        await client.hset(keys.sale_orders(e.data.sale_id), oid,  # type: ignore[attr-defined]
                          orjson.dumps({"s": "reserved", "q": q, "p": p, "u": e.user_id, "d": e.ts + 300_000}))
    for oid, (sale_id, state) in sc.refused.items():
        await client.hset(keys.sale_orders(sale_id), oid,
                          orjson.dumps({"s": state, "q": 1, "p": 100, "u": placed[oid].user_id}))


# --- the reference ---------------------------------------------------------------------------------


@dataclass
class RoomTruth:
    totals: Counter[str] = field(default_factory=Counter)
    series: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    online_last: dict[str, int] = field(default_factory=dict)
    left_last: dict[str, int] = field(default_factory=dict)  # user → their latest leave
    peak: int = 0
    stage_users: dict[tuple[str, str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    money: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    ref_orders: Counter[str] = field(default_factory=Counter)
    ref_gmv: Counter[str] = field(default_factory=Counter)
    newest: int = 0


def reference(sc: Scenario) -> tuple[dict[str, RoomTruth], dict[str, Counter[str]], dict[str, dict[int, Counter[str]]]]:
    """Recount from the event list: unique event ids, documented lateness / staleness rules."""
    rooms: dict[str, RoomTruth] = defaultdict(RoomTruth)
    sales: dict[str, Counter[str]] = defaultdict(Counter)
    sale_series: dict[str, dict[int, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    seen: set[str] = set()
    paid_orders: set[str] = set()
    stale = PARAMS.stale_viewer_ms
    eng_kind = {"viewer.joined": "joins", "viewer.left": "leaves", "viewer.commented": "comments",
                "viewer.shared": "shares", "product.clicked": "clicks", "cart.added": "adds",
                "cart.removed": "removes"}

    def stage(r: RoomTruth, st: str, e: Event, sku: str | None) -> None:
        combos = [(e.channel, "*"), ("*", "*")] if sku is None else \
            [(e.channel, sku), (e.channel, "*"), ("*", sku), ("*", "*")]
        for ch, k in combos:
            r.stage_users[(st, ch, k)].add(e.user_id)

    def money(r: RoomTruth, code: str, e: Event, sku: str, n: int) -> None:
        for ch, k in ((e.channel, sku), (e.channel, "*"), ("*", sku), ("*", "*")):
            r.money[(code, ch, k)] += n

    for e in sc.events:
        if e.event_id in seen or e.event_id in sc.too_old:
            continue
        seen.add(e.event_id)
        d: Any = e.data
        sec = e.ts // 1000
        windowed = e.event_id not in sc.late
        if e.type in ("order.accepted",):
            sales[d.sale_id]["accepted"] += 1
            sales[d.sale_id]["accepted_units"] += d.qty
            sale_series[d.sale_id][sec]["accepted"] += 1
            continue
        if e.type in ("order.rejected", "order.expired", "sale.sold_out"):
            continue
        r = rooms[e.room_id]
        if e.type == "order.placed":
            sales[d.sale_id]["attempts"] += 1
            sale_series[d.sale_id][sec]["attempts"] += 1
            r.totals["orders"] += 1
            r.series[sec]["orders"] += 1
            stage(r, "orderers", e, d.sku)
            money(r, "o", e, d.sku, 1)
            if e.referrer_id:
                r.ref_orders[e.referrer_id] += 1
            continue
        if e.type == "order.paid":
            if d.order_id in paid_orders or d.order_id in sc.refused:
                continue
            paid_orders.add(d.order_id)
            amount = d.amount if d.amount is not None else sc.prices[d.order_id][0] * sc.prices[d.order_id][1]
            r.totals["paid"] += 1
            r.totals["gmv"] += amount
            stage(r, "payers", e, d.sku)
            money(r, "p", e, d.sku, 1)
            money(r, "g", e, d.sku, amount)
            if e.referrer_id:
                r.ref_gmv[e.referrer_id] += amount
            continue
        if e.type == "sale.opened":
            continue
        # engagement: presence, with staleness re-applied whenever the newest second advances
        prev_sec = r.newest // 1000
        r.newest = max(r.newest, e.ts)
        # (a viewer's latest leave shadows their events stamped at or before it, however late)
        if e.type == "viewer.left":
            r.left_last[e.user_id] = max(r.left_last.get(e.user_id, 0), e.ts)
            if e.user_id in r.online_last and r.online_last[e.user_id] <= e.ts:
                del r.online_last[e.user_id]
        elif e.ts >= r.newest - stale and e.ts > r.left_last.get(e.user_id, -1):
            r.online_last[e.user_id] = max(r.online_last.get(e.user_id, 0), e.ts)
        if r.newest // 1000 > prev_sec:
            for u in [u for u, t in r.online_last.items() if t < r.newest - stale]:
                del r.online_last[u]
        r.peak = max(r.peak, len(r.online_last))
        r.totals["events"] += 1
        stage(r, "viewers", e, None)
        if e.type == "viewer.liked":
            r.totals["likes"] += d.count
            if windowed:
                r.series[sec]["likes"] += d.count
        elif e.type == "cart.added":
            r.totals["add_units"] += d.qty
            stage(r, "carters", e, d.sku)
        elif e.type == "product.clicked":
            stage(r, "clickers", e, d.sku)
        if e.type in eng_kind:
            r.totals[eng_kind[e.type]] += 1
        if windowed:
            r.series[sec]["events"] += 1
            if e.type == "cart.added":
                r.series[sec]["adds"] += 1
            if e.type == "viewer.commented":
                r.series[sec]["comments"] += 1
    return rooms, sales, sale_series


def close(estimate: int, exact: int) -> bool:
    """HyperLogLog: within 2%, or 3 users for small sets (Redis counts these 120 users as 117)."""
    return abs(estimate - exact) <= max(3, 0.02 * exact)


async def counter_state(client: aioredis.Redis) -> dict[str, Any]:
    """Every counter key's content (dedupe sets and watermarks excluded), for before/after comparisons."""
    out: dict[str, Any] = {}
    async for key in client.scan_iter(match="fs:*"):
        k = key.decode()
        if ":dd:" in k:
            continue
        kind = (await client.type(key)).decode()
        if kind == "hash":
            # watermarks move and drop counters count on a republish; nothing else may change
            out[k] = {f.decode(): v for f, v in (await client.hgetall(key)).items()
                      if not f.startswith((b"wm:", b"nw:", b"dl:", b"dups", b"too_old"))}
        elif kind == "zset":
            out[k] = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            out[k] = sorted(await client.smembers(key))
        else:
            out[k] = await client.get(key)
    return out


# --- the tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario()


async def test_every_counter_equals_the_recount(redis_client: aioredis.Redis, scenario: Scenario) -> None:
    await write_stock_orders(redis_client, scenario)
    h = Harness(redis_client)
    await h.feed(to_records(scenario.events))
    await assert_matches_reference(redis_client, scenario)
    late = h.metrics.late_events.labels("counters_engagement")._value.get()
    assert late == len(scenario.late) + len(scenario.too_old)


async def assert_matches_reference(redis_client: aioredis.Redis, scenario: Scenario) -> None:
    """Every stored counter equals the recount (HyperLogLogs within their error)."""
    rooms, sales, sale_series = reference(scenario)

    for room_id, truth in rooms.items():
        raw = {k.decode(): int(v) for k, v in (await redis_client.hgetall(keys.room_base(room_id))).items()
               if not k.startswith((b"sp:", b"dc:"))}
        for name in ("joins", "leaves", "likes", "comments", "shares", "clicks", "adds", "add_units", "removes",
                     "events", "orders", "paid", "gmv"):
            assert raw.get(name, 0) == truth.totals[name], (room_id, name)
        assert raw["peak"] == truth.peak
        # per-second buckets: "events likes comments shares adds clicks" / "orders paid gmv"
        series = {k.decode(): v.decode() for k, v in (await redis_client.hgetall(keys.room_series(room_id))).items()}
        for sec, c in truth.series.items():
            e = series.get(f"{sec}e", "0 0 0 0 0 0").split()
            assert (int(e[0]), int(e[1]), int(e[2]), int(e[4])) == (c["events"], c["likes"], c["comments"],
                                                                    c["adds"]), (room_id, sec)
            o = series.get(f"{sec}o", "0 0 0").split()
            assert int(o[0]) == c["orders"], (room_id, sec)
        assert sum(int(v.split()[1]) for f, v in series.items() if f.endswith("e")) == \
            sum(c["likes"] for c in truth.series.values())
        # funnel stages (HyperLogLog) and money, per channel × SKU
        skus = sorted(x.decode() for x in await redis_client.smembers(keys.room_skus(room_id)))
        assert skus == sorted({k for (_, _, k) in truth.stage_users if k != "*"})
        for (st, ch, sku), users in truth.stage_users.items():
            est = await redis_client.pfcount(*readmodel.stage_keys(room_id, st, ch, sku, skus))
            assert close(est, len(users)), (room_id, st, ch, sku, est, len(users))
        funnel = {k.decode(): int(v) for k, v in (await redis_client.hgetall(keys.room_funnel(room_id))).items()}
        assert funnel == {f"{c}:{ch}:{k}": n for (c, ch, k), n in truth.money.items() if n}
        lb_orders = {r.decode(): int(s) for r, s in await redis_client.zrange(keys.room_ref_orders(room_id), 0, -1,
                                                                               withscores=True)}
        lb_gmv = {r.decode(): int(s) for r, s in await redis_client.zrange(keys.room_ref_gmv(room_id), 0, -1,
                                                                            withscores=True)}
        assert lb_orders == dict(truth.ref_orders) and lb_gmv == dict(truth.ref_gmv)
        online = await redis_client.zcount(keys.room_online(room_id), truth.newest - PARAMS.stale_viewer_ms, "+inf")
        assert online == len(truth.online_last)

    for sale_id, truth_s in sales.items():
        raw = {k.decode(): v for k, v in (await redis_client.hgetall(keys.sale_base(sale_id))).items()}
        assert int(raw["attempts"]) == truth_s["attempts"]
        assert int(raw["accepted"]) == truth_s["accepted"]
        assert int(raw["accepted_units"]) == truth_s["accepted_units"]
        stored = await redis_client.hgetall(keys.sale_series(sale_id))
        buckets = {int(k): v.decode().split() for k, v in stored.items()}
        newest_s = max(e.ts for e in scenario.events if getattr(e.data, "sale_id", None) == sale_id
                       and e.type != "sale.opened") // 1000
        for sec, c in sale_series[sale_id].items():
            if sec >= newest_s - PARAMS.sale_series_keep_s:
                got = buckets.get(sec, ["0", "0", "0"])
                assert (int(got[0]), int(got[1])) == (c["attempts"], c["accepted"]), (sale_id, sec)
        assert all(sec >= newest_s - PARAMS.sale_series_keep_s for sec in buckets)  # trimmed
    assert set(await redis_client.smembers(keys.room_sales("r1"))) == {b"s1"}
    assert set(await redis_client.smembers(keys.room_sales("r2"))) == {b"s2"}
    index = dict(await redis_client.zrange(keys.rooms_index(), 0, -1, withscores=True))
    assert index[b"r1"] == max(e.ts for e in scenario.events if e.room_id == "r1" and e.type != "order.accepted")


async def test_replays_and_duplicate_publishes_change_nothing(redis_client: aioredis.Redis,
                                                              scenario: Scenario) -> None:
    await write_stock_orders(redis_client, scenario)
    h = Harness(redis_client)
    records = to_records(scenario.events)
    await h.feed(records)
    before = await counter_state(redis_client)
    alerts = len(h.sink.alerts())
    assert alerts > 0
    # 1. the same records again (a consumer restart from an older offset), in other batch sizes
    await h.feed(records, batch=3)
    assert await counter_state(redis_client) == before
    # 2. every event published again: new offsets, same event ids
    await h.feed(to_records(scenario.events, offset0=10_000), batch=11)
    assert await counter_state(redis_client) == before
    assert len(h.sink.alerts()) == alerts
    dropped = 0
    for room in ("r1", "r2"):
        dropped += int(await redis_client.hget(keys.room_base(room), "dups") or 0)
        dropped += int(await redis_client.hget(keys.room_base(room), "too_old") or 0)
    refused_payments = {f"pay-{oid}" for oid in scenario.refused}  # never reach the room
    room_events = [e for e in scenario.events if e.type != "order.accepted" and e.event_id != "pay-again"
                   and e.event_id not in refused_payments]
    # every room-side event of the republish was dropped: as a duplicate, or (the first minutes of
    # the stream) as older than the dedupe horizon; plus the in-stream duplicate and the too-old
    # event of the first pass
    assert dropped == len(room_events) + 1 + len(scenario.too_old)


async def test_spike_detected_once_per_episode(redis_client: aioredis.Redis, scenario: Scenario) -> None:
    await write_stock_orders(redis_client, scenario)
    h = Harness(redis_client)
    await h.feed(to_records(scenario.events), batch=2)
    alerts = h.sink.alerts()
    by_subject = Counter((a["data"]["scope"], a["data"]["subject_id"], a["data"]["metric"]) for a in alerts)
    assert by_subject[("room", "r1", "events")] == 1
    assert by_subject[("sale", "s1", "attempts")] == 1  # the opening rush of 12 attempts/s
    assert by_subject[("room", "r2", "events")] == 0
    assert by_subject[("sale", "s2", "attempts")] == 0
    room_alert = next(a for a in alerts if a["data"]["subject_id"] == "r1")
    assert T0 + scenario.burst[0] * 1000 <= room_alert["ts"] <= T0 + scenario.burst[1] * 1000
    assert room_alert["data"]["rate"] > 3 * room_alert["data"]["baseline"]
    assert h.metrics.spikes.labels("room")._value.get() == sum(n for k, n in by_subject.items() if k[0] == "room")
    assert h.metrics.spikes.labels("sale")._value.get() == sum(n for k, n in by_subject.items() if k[0] == "sale")
    # stored for the dashboard, once
    snap = await readmodel.room_snapshot(redis_client, "r1", scenario.newest)
    assert snap is not None
    assert [(s["scope"], s["subject_id"], s["metric"]) for s in snap["spikes"]].count(("room", "r1", "events")) == 1
    assert any(s["scope"] == "sale" and s["subject_id"] == "s1" for s in snap["spikes"])


async def test_spike_gauge_follows_the_episode(redis_client: aioredis.Redis, scenario: Scenario) -> None:
    """flashsale_spikes_active counts subjects in an open episode: r1 once its alert fired, none
    after the burst."""
    await write_stock_orders(redis_client, scenario)
    h = Harness(redis_client)
    gauge = h.metrics.spikes_active
    bounds = [T0 + sec * 1000 for sec in range(scenario.burst[0], scenario.burst[1] + 1)]
    chunks = [(None, bounds[0])] + list(zip(bounds, bounds[1:], strict=False)) + [(bounds[-1], None)]
    seen_open = False
    for k, (lo, hi) in enumerate(chunks):  # the burst fed one second at a time
        part = [e for e in scenario.events if (lo is None or e.ts >= lo) and (hi is None or e.ts < hi)]
        await h.feed(to_records(part, offset0=k * 100_000), batch=2)
        fired = any(a["data"]["subject_id"] == "r1" for a in h.sink.alerts())
        if fired and hi is not None and not seen_open:
            assert gauge.labels("room", "events")._value.get() == 1  # r1's episode is open
            seen_open = True
        elif not fired:
            assert gauge.labels("room", "events")._value.get() == 0
    assert seen_open, "r1's alert fired during its burst"
    assert gauge.labels("room", "events")._value.get() == 0  # the episode ended after the burst
    assert gauge.labels("sale", "attempts")._value.get() == 0


async def test_readmodel_snapshot_sale_and_funnel(redis_client: aioredis.Redis, scenario: Scenario) -> None:
    await write_stock_orders(redis_client, scenario)
    h = Harness(redis_client)
    await h.feed(to_records(scenario.events))
    rooms, _, sale_series = reference(scenario)
    now = max(e.ts for e in scenario.events if e.room_id == "r1" and e.type != "order.accepted")
    now_s = now // 1000
    truth = rooms["r1"]
    snap = await readmodel.room_snapshot(redis_client, "r1", now)
    assert snap is not None
    last10 = range(now_s - 10, now_s)
    assert snap["as_of_ms"] == now
    assert snap["viewers_online"] == len(truth.online_last)
    assert snap["viewers_peak"] == truth.peak
    assert snap["likes_per_s"] == round(sum(truth.series[s]["likes"] for s in last10) / 10, 3)
    assert snap["comments_per_s"] == round(sum(truth.series[s]["comments"] for s in last10) / 10, 3)
    assert snap["cart_adds_per_s"] == round(sum(truth.series[s]["adds"] for s in last10) / 10, 3)
    assert snap["orders_per_s"] == round(sum(truth.series[s]["orders"] for s in last10) / 10, 3)
    assert snap["shares"] == truth.totals["shares"]
    assert snap["gmv"] == truth.totals["gmv"]
    uv = len(truth.stage_users[("viewers", "*", "*")])
    assert close(snap["unique_viewers"], uv)
    assert snap["gmv_per_1000_viewers"] == round(truth.totals["gmv"] * 1000 / snap["unique_viewers"], 2)
    likes = dict((ts // 1000, v) for ts, v in snap["series"]["likes_per_s"])
    assert len(snap["series"]["likes_per_s"]) == 300 and len(snap["series"]["viewers"]) == 300
    assert all(likes[s] == truth.series[s]["likes"] for s in likes)
    assert snap["series"]["viewers"][-1][1] == len(truth.online_last)  # the gauge at the newest second
    board = snap["leaderboard"]
    assert [b["gmv"] for b in board] == sorted((b["gmv"] for b in board), reverse=True)
    assert {b["referrer_id"]: (b["orders"], b["gmv"]) for b in board} == {
        r: (truth.ref_orders[r], truth.ref_gmv[r]) for r in set(truth.ref_orders) | set(truth.ref_gmv)}
    assert [s["sale_id"] for s in snap["sales"]] == ["s1"]

    # the sale view joins the stock core's hash (written here as the stock script would) with rates
    await redis_client.hset(keys.sale("s1"), mapping={
        "sale_id": "s1", "sku": "k1", "room_id": "r1", "price": 1999, "allotted": 40, "available": 0,
        "reserved": 10, "sold": 30, "status": "open", "opened_at": T0 + 60_000, "sold_out_at": T0 + 64_500,
        "attempts": 999, "accepted": 25, "rej_sold_out": 900, "rej_limit_exceeded": 74})
    view = await readmodel.sale_view(redis_client, "s1", now)
    assert view is not None
    series = sale_series["s1"]
    assert view["attempts_per_s"] == {"1s": float(series[now_s - 1]["attempts"]),
                                      "10s": round(sum(series[s]["attempts"] for s in last10) / 10, 3),
                                      "60s": round(sum(series[s]["attempts"] for s in range(now_s - 60, now_s)) / 60,
                                                   3)}
    assert view["accepted_per_s"]["60s"] == round(sum(series[s]["accepted"] for s in range(now_s - 60, now_s)) / 60,
                                                  3)
    assert view["seconds_to_sell_out"] == 4.5 and view["sell_through"] == 0.75
    assert view["attempts"] == 999 and view["rejected"]["sold_out"] == 900 and view["rejected"]["invalid"] == 0
    assert view["projected_sell_out_at"] is None
    assert await readmodel.sale_view(redis_client, "nope", now) is None
    assert await readmodel.room_snapshot(redis_client, "nope", now) is None

    funnel = await readmodel.room_funnel(redis_client, "r1", None, now)
    stages = {s["stage"]: s["users"] for s in funnel["stages"]}
    for st in ("viewers", "clickers", "carters", "orderers", "payers"):
        assert close(stages[st], len(truth.stage_users[(st, "*", "*")])), st
    assert funnel["gmv"] == truth.totals["gmv"] and funnel["orders"] == truth.totals["orders"]
    assert funnel["aov"] == round(truth.totals["gmv"] / truth.totals["paid"], 2)
    assert funnel["stages"][1]["rate_from_prev"] == round(stages["clickers"] / stages["viewers"], 4)
    ch = "share_link"
    f_ch = await readmodel.room_funnel(redis_client, "r1", ch, now, sku="k1")
    ch_stages = {s["stage"]: s["users"] for s in f_ch["stages"]}
    assert close(ch_stages["viewers"], len(truth.stage_users[("viewers", ch, "*")]))
    assert close(ch_stages["clickers"], len(truth.stage_users[("clickers", ch, "k1")]))
    assert f_ch["gmv"] == truth.money[("g", ch, "k1")]
    assert f_ch["windows"]["5m"] is None  # minute windows are per channel or per SKU, not both
    f_sku = await readmodel.room_funnel(redis_client, "r1", None, now, sku="k1")
    assert f_sku["gmv"] == truth.money[("g", "*", "k1")]
    # the SKU's last five minutes, all channels: clickers, carters, orderers counted from the events
    first = now // 60_000 - 4
    kinds = {"clickers": "product.clicked", "carters": "cart.added", "orderers": "order.placed"}
    sku_recent = {s["stage"]: s["users"] for s in f_sku["windows"]["5m"]["stages"]}
    for stage_name, type_ in kinds.items():
        exact = {e.user_id for e in scenario.events if e.room_id == "r1" and e.type == type_
                 and getattr(e.data, "sku", None) == "k1" and e.ts // 60_000 >= first
                 and e.event_id not in scenario.late | scenario.too_old}
        assert exact and close(sku_recent[stage_name], len(exact)), stage_name
    recent_orders = [e for e in scenario.events if e.room_id == "r1" and e.type == "order.placed"
                     and e.data.sku == "k1" and e.ts // 60_000 >= first]  # type: ignore[attr-defined]
    assert f_sku["windows"]["5m"]["orders"] == len(recent_orders)
    f_share = await readmodel.room_funnel(redis_client, "r1", ch, now)
    recent_share = {e.user_id for e in scenario.events
                    if e.room_id == "r1" and e.channel == ch and e.type == "product.clicked"
                    and e.ts // 60_000 >= now // 60_000 - 4 and e.event_id not in scenario.late}
    assert close(f_share["windows"]["5m"]["stages"][1]["users"], len(recent_share))
    # the 5-minute window holds the last five event-time minutes, late events excluded
    recent = {s["stage"]: s["users"] for s in funnel["windows"]["5m"]["stages"]}
    first_min = now // 60_000 - 4
    recent_viewers = {e.user_id for e in scenario.events
                      if e.room_id == "r1" and e.type.startswith(("viewer.", "product.", "cart."))
                      and e.ts // 60_000 >= first_min and e.event_id not in scenario.late | scenario.too_old}
    assert close(recent["viewers"], len(recent_viewers))
    rooms_list = await readmodel.list_rooms(redis_client, now)
    assert {r["room_id"] for r in rooms_list} == {"r1", "r2"}
    assert next(r for r in rooms_list if r["room_id"] == "r1")["viewers_online"] == len(truth.online_last)


async def test_stale_viewers_expire(redis_client: aioredis.Redis) -> None:
    params = CounterParams(stale_viewer_ms=60_000)
    h = Harness(redis_client, params)
    evs = [make_event(ViewerJoined(), event_id=f"j{i}", ts=T0 + i, room_id="rs", user_id=f"u{i}") for i in range(5)]
    evs.append(make_event(ViewerLeft(), event_id="left0", ts=T0 + 1000, room_id="rs", user_id="u0"))
    # u1 stays active; the others go quiet
    evs += [make_event(ViewerLiked(), event_id=f"l{s}", ts=T0 + s * 10_000, room_id="rs", user_id="u1")
            for s in range(1, 10)]
    first = [e for e in evs if e.ts <= T0 + 30_000]
    await h.feed(to_records(first))
    snap = await readmodel.room_snapshot(redis_client, "rs", T0 + 30_000)
    assert snap is not None and snap["viewers_online"] == 4  # u1..u4 (u0 left)
    assert snap["viewers_peak"] == 5
    await h.feed(to_records(evs[len(first):], offset0=100))
    # the stream's newest event is T0+90s: u2..u4 were last seen at T0, more than 60 s before
    # ("now" is never before the newest event time, so an early now_ms reads the same)
    for now in (T0 + 90_000, T0):
        snap = await readmodel.room_snapshot(redis_client, "rs", now)
        assert snap is not None and snap["viewers_online"] == 1
    assert snap["viewers_peak"] == 5
    # the worker also trims them from the set (bounded memory)
    assert await redis_client.zcard(keys.room_online("rs")) == 1
    # and an idle room expires its viewers on the read side as wall time passes
    later = await readmodel.room_snapshot(redis_client, "rs", T0 + 90_000 + 61_000)
    assert later is not None and later["viewers_online"] == 0


async def test_presence_honours_each_viewers_latest_event_however_late(redis_client: aioredis.Redis) -> None:
    """A viewer who left is not counted online again by an event of theirs stamped at or before the
    leave that arrives after it; a rejoin after the leave counts, and a late leave older than the
    viewer's latest event does not remove them."""
    h = Harness(redis_client, CounterParams(stale_viewer_ms=60_000))

    def ev(payload: Any, eid: str, ts: int, user: str) -> Event:
        return make_event(payload, event_id=eid, ts=T0 + ts, room_id="rp", user_id=user)

    async def online(now: int) -> int:
        snap = await readmodel.room_snapshot(redis_client, "rp", T0 + now)
        assert snap is not None
        return int(snap["viewers_online"])

    await h.feed(to_records([ev(ViewerJoined(), "j1", 0, "u1"), ev(ViewerJoined(), "j2", 10, "u2"),
                             ev(ViewerLiked(count=1), "k1", 1000, "u1"), ev(ViewerLeft(), "x1", 5000, "u1")]))
    assert await online(5000) == 1  # u2
    # u1's like at 3 s and comment at 5 s (the leave's own time) were delayed: u1 stays gone
    await h.feed(to_records([ev(ViewerLiked(count=1), "k1-late", 3000, "u1"),
                             ev(ViewerCommented(text="hi"), "c1-late", 5000, "u1")], offset0=100))
    assert await online(5000) == 1
    assert await redis_client.zscore(keys.room_online("rp"), "u1") is None
    # a rejoin after the leave counts; a delayed leave older than it does not remove u1
    await h.feed(to_records([ev(ViewerJoined(), "j1-again", 6000, "u1")], offset0=200))
    await h.feed(to_records([ev(ViewerLeft(), "x1-late", 5500, "u1")], offset0=300))
    assert await online(6000) == 2
    snap = await readmodel.room_snapshot(redis_client, "rp", T0 + 6000)
    assert snap is not None and snap["viewers_peak"] == 2  # never 3: the late events never counted u1 twice
    # leaves are remembered only within the stale window (bounded memory)
    await h.feed(to_records([ev(ViewerLiked(count=1), "k2", 200_000, "u2")], offset0=400))
    assert await redis_client.zcard(keys.room_left("rp")) == 0


async def test_hll_error_within_two_percent_at_100k_users(redis_client: aioredis.Redis) -> None:
    h = Harness(redis_client)
    n = 100_000
    evs = [make_event(ViewerJoined(), event_id=f"j{i}", ts=T0 + i, room_id="big", user_id=f"user-{i}",
                      channel=CHANNELS[i % 2]) for i in range(n)]
    await h.feed(to_records(evs, per_record=5000), batch=2)
    est = await redis_client.pfcount(keys.room_hll("big", "viewers"))
    assert abs(est - n) <= 0.02 * n, est
    per_channel = await redis_client.pfcount(keys.room_hll("big", "viewers", CHANNELS[0]))
    assert abs(per_channel - n / 2) <= 0.02 * n / 2
    assert int(await redis_client.hget(keys.room_base("big"), "joins")) == n  # the exact counter


async def test_memory_per_room_stays_bounded_over_a_long_stream(redis_client: aioredis.Redis) -> None:
    """Twenty minutes of event time: windowed keys are trimmed, so the key count and the series
    hash stop growing after the first five minutes."""
    h = Harness(redis_client)

    def minute(m: int) -> list[Event]:
        return [make_event(ViewerLiked(), event_id=f"m{m}-{i}", ts=T0 + m * 60_000 + i * 200, room_id="long",
                           user_id=f"u{i % 50}") for i in range(300)]

    sizes = []
    for m in range(20):
        await h.feed(to_records(minute(m), offset0=m * 100))
        series_fields = await redis_client.hlen(keys.room_series("long"))
        dedupe_keys = len([k async for k in redis_client.scan_iter(match="*:dd:*")])
        minutes = {k.split(b":")[4] async for k in redis_client.scan_iter(match="*{r:long}*:uw:*")}
        sizes.append((series_fields, dedupe_keys, len(minutes)))
    assert max(f for f, _, _ in sizes) <= 2 * (PARAMS.series_keep_s + 1)  # "<sec>e" and "<sec>v" per second
    assert max(d for _, d, _ in sizes) <= PARAMS.dedupe_ms // 10_000 + 2  # 10 s buckets, one shard at 5/s
    # minute windows are deleted by event time once behind the window and the lateness bound
    assert max(m for _, _, m in sizes) <= PARAMS.window_minutes + PARAMS.lateness_ms // 60_000 + 2
    assert sizes[-1] == sizes[-5]  # steady state


async def test_dedupe_sets_stay_integer_sets_at_high_rates(redis_client: aioredis.Redis) -> None:
    """Each 10 s bucket is split into as many shards as the previous bucket needs to keep every set
    under 512 ids, so Redis keeps them as compact integer sets (8 bytes per id)."""
    h = Harness(redis_client)
    rate = 300  # events/s: 3000 per bucket
    evs = [make_event(ViewerLiked(), event_id=f"h{i}", ts=T0 + i * 1000 // rate, room_id="hot", user_id=f"u{i % 99}")
           for i in range(rate * 40)]
    await h.feed(to_records(evs, per_record=500), batch=3)
    sets = [k async for k in redis_client.scan_iter(match="*{r:hot}*:dd:*")]
    info = {}
    for k in sets:
        bucket, shard = (int(x) for x in k.decode().rsplit(":", 2)[1:])
        info[(bucket, shard)] = ((await redis_client.object("encoding", k)).decode(), await redis_client.scard(k))
    # every set also holds the sentinel "0" it was created with (a missing set then means expired)
    assert all([await redis_client.sismember(k, "0") for k in sets])
    assert sum(n for _, n in info.values()) == len(evs) + len(sets)
    first = min(b for b, _ in info)
    # the first bucket has no history, so one set (a hashtable of 3000); the later ones are sharded
    assert [enc for (b, _), (enc, _) in info.items() if b == first] == ["hashtable"]
    later = [(enc, n) for (b, _), (enc, n) in info.items() if b != first]
    assert len(later) >= 3 * 16 and all(enc == "intset" and n <= 512 for enc, n in later)
    # and a republish of all of it is still recognised
    await h.feed(to_records(evs, offset0=1000, per_record=500), batch=3)
    assert int(await redis_client.hget(keys.room_base("hot"), "dups")) == len(evs)
    assert int(await redis_client.hget(keys.room_base("hot"), "likes")) == len(evs)


async def test_a_failing_record_is_dead_lettered_and_the_rest_applied(redis_client: aioredis.Redis) -> None:
    """Handler errors: the shared resilience path retries the batch record by record; the record
    that keeps failing goes to the dead-letter topic with reason handler_error."""
    from streams.resilience import process

    metrics = WorkerMetrics()
    sink = Sink()
    svc = CountersService(CountersStore(redis_client, PARAMS, metrics), PARAMS, metrics, sink.send, ENGAGEMENT,
                          fault_marker="boom")
    good = [make_event(ViewerJoined(), event_id=f"ok{i}", ts=T0 + i, room_id="rf", user_id=f"u{i}") for i in range(3)]
    bad = make_event(ViewerJoined(), event_id="boom-1", ts=T0 + 5, room_id="rf", user_id="x")
    records = [Record(ENGAGEMENT, 0, 0, encode_batch(good[:2])), Record(ENGAGEMENT, 0, 1, encode_batch([bad])),
               Record(ENGAGEMENT, 0, 2, encode_batch(good[2:]))]
    await process(svc.handle, records, sink.send, metrics, svc.agent)
    assert int(await redis_client.hget(keys.room_base("rf"), "joins")) == 3
    dead = [orjson.loads(v) for t, _, v in sink.sent if t == "dead-letter"]
    assert [(d["reason"], d["offset"]) for d in dead] == [("handler_error", 1)]
    assert metrics.handler_errors.labels(svc.agent)._value.get() == 1


async def test_scripts_are_reloaded_after_a_script_flush(redis_client: aioredis.Redis) -> None:
    h = Harness(redis_client)
    evs = [make_event(ViewerJoined(), event_id=f"j{i}", ts=T0 + i, room_id="rn", user_id=f"u{i}") for i in range(4)]
    await h.feed(to_records(evs[:2]))
    await redis_client.script_flush()  # what a Redis restart or failover does to loaded scripts
    await h.feed(to_records(evs[2:], offset0=10))
    assert int(await redis_client.hget(keys.room_base("rn"), "joins")) == 4
