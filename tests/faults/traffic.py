"""A simulated flash sale for the fault suite: paced order attempts and engagement on the wall
clock, bad input at chosen rates, and a ledger of exactly what was published."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from schemas.events import (
    CartAdded,
    CartRemoved,
    Event,
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
from schemas.topics import ENGAGEMENT, ORDERS, TopicNames, logical_topic, partition_key
from tests.harness.worker_group import counters_available

PRICE = 9900
LIMIT = 2
RECORD_EVENTS = 200  # events per batched record, as a batching producer would send
ROOM_FIELDS = ("events", "joins", "leaves", "likes", "comments", "shares", "clicks", "adds", "add_units", "removes",
               "orders")


def now_ms() -> int:
    return int(time.time() * 1000)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the default Kafka partitioner picks (murmur2, as aiokafka and the Java client)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class SaleSpec:
    sale_id: str
    sku: str
    room_id: str
    allotment: int
    ttl_s: int
    probe: bool = False  # a sale kept for health probes and barriers, outside the simulated traffic

    def opened(self, ts: int) -> Event:
        return make_event(SaleOpened(sale_id=self.sale_id, sku=self.sku, price=PRICE, allotment=self.allotment,
                                     per_user_limit=LIMIT, starts_at=ts - 60_000, ends_at=ts + 3_600_000,
                                     reservation_ttl_s=self.ttl_s),
                          event_id=f"open-{self.sale_id}", ts=ts, room_id=self.room_id, user_id="host")


def make_sales(partitions: int, per_partition: int = 2, allotment: int = 1500, ttl_s: int = 3600) -> list[SaleSpec]:
    """``per_partition`` sales on every orders partition (so every worker owns some), plus one probe
    sale per partition; the rooms are spread the same way over the engagement partitions."""
    want = {p: per_partition + 1 for p in range(partitions)}
    out: list[SaleSpec] = []
    n = 0
    while any(want.values()) and n < 100_000:
        sku = f"sku-{n}"
        n += 1
        p = partition_of(sku.encode(), partitions)
        if want[p] == 0:
            continue
        want[p] -= 1
        probe = want[p] == 0
        sale_id = f"probe{p}" if probe else f"s{len(out)}"
        out.append(SaleSpec(sale_id, sku, f"room-{sale_id}", 1_000_000 if probe else allotment, ttl_s, probe))
    assert not any(want.values()), "no SKU set covering every partition"
    return out


def probe_rooms(partitions: int) -> list[str]:
    """One room per engagement partition: events there act as barriers behind everything sent before."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions and n < 100_000:
        room = f"probe-room-{n}"
        found.setdefault(partition_of(room.encode(), partitions), room)
        n += 1
    return [found[p] for p in sorted(found)]


@dataclass(frozen=True)
class BadMix:
    """Bad input, as fractions of the order attempts (half on orders, half on engagement, except
    the handler faults, which are order attempts)."""

    malformed: float = 0.0  # records that are not JSON
    unknown_type: float = 0.0  # records of an event type nobody knows
    bad_version: float = 0.0  # events of an unsupported schema version, inside batched records
    fault: float = 0.0  # order attempts whose event_id carries the FLASHSALE_FAULT_INJECT marker
    oversized: int = 0  # records larger than FLASHSALE_MAX_RECORD_BYTES (a batch of valid events)
    oversized_bytes: int = 70_000
    marker: str = "chaos"


@dataclass
class Ledger:
    """What was published, for exact recounts."""

    attempts: dict[tuple[str, str], str] = field(default_factory=dict)  # decidable (sale, order) → user
    dead_attempts: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # sale → orders dead-lettered
    bad: Counter[tuple[str, str]] = field(default_factory=Counter)  # (logical topic, reason) → bad items produced
    rooms: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))  # exact room totals
    seen_ids: set[str] = field(default_factory=set)
    probe_sales: set[str] = field(default_factory=set)  # answered by health probes, outside the sale
    records: int = 0
    events: int = 0
    started_ms: int = 0
    finished_ms: int = 0

    def count_event(self, e: Event) -> None:
        """A valid event reached the log: count it once per event_id (duplicates are no-ops)."""
        self.events += 1
        if e.event_id in self.seen_ids or e.type in ("sale.opened", "order.paid"):
            return
        self.seen_ids.add(e.event_id)
        room = self.rooms[e.room_id]
        d = e.data
        if isinstance(d, OrderPlaced):
            room["orders"] += 1
            return
        room["events"] += 1
        if isinstance(d, ViewerJoined):
            room["joins"] += 1
        elif isinstance(d, ViewerLeft):
            room["leaves"] += 1
        elif isinstance(d, ViewerLiked):
            room["likes"] += d.count
        elif isinstance(d, ViewerCommented):
            room["comments"] += 1
        elif isinstance(d, ViewerShared):
            room["shares"] += 1
        elif isinstance(d, ProductClicked):
            room["clicks"] += 1
        elif isinstance(d, CartAdded):
            room["adds"] += 1
            room["add_units"] += d.qty
        elif isinstance(d, CartRemoved):
            room["removes"] += 1

    def attempts_of(self, sale_id: str) -> set[str]:
        return {o for (s, o) in self.attempts if s == sale_id}


class Traffic:
    """Publishes a flash sale at ``rate`` attempts/s: attempts with retries (a user trying again
    with a new order), over-limit quantities and exact duplicate sends, engagement in the sales'
    rooms, and bad input per ``bad``. With ``duplicate_produce`` every record is sent twice.
    ``hold`` (optional) keeps the last ``hold_fraction`` of attempts back until it is set, so
    the faults a test injects always happen mid-sale."""

    def __init__(self, bootstrap: str, prefix: str, sales: list[SaleSpec], attempts: int, rate: float,
                 bad: BadMix | None = None, seed: int = 1, users: int = 6000, dup_rate: float = 0.03,
                 retry_rate: float = 0.25, big_qty_rate: float = 0.05, engagement_ratio: float = 0.5,
                 duplicate_produce: bool = False, hold: asyncio.Event | None = None,
                 hold_fraction: float = 0.1, tick_s: float = 0.1) -> None:
        self.bootstrap = bootstrap
        self.names = TopicNames(prefix)
        self.sales = [s for s in sales if not s.probe]
        self.all_sales = sales
        self.total = attempts
        self.rate = rate
        self.bad = bad or BadMix()
        self.rng = random.Random(seed)
        self.users = users
        self.dup_rate = dup_rate
        self.retry_rate = retry_rate
        self.big_qty_rate = big_qty_rate
        # Without the counters agent nobody consumes the engagement topic: publish orders only.
        self.with_engagement = counters_available()
        self.engagement_ratio = engagement_ratio if self.with_engagement else 0.0
        self.copies = 2 if duplicate_produce else 1
        self.hold = hold
        self.hold_at = int(attempts * (1 - hold_fraction)) if hold is not None else attempts
        self.tick_s = tick_s
        self.ledger = Ledger(probe_sales={s.sale_id for s in sales if s.probe})
        self.sent = 0  # attempts sent so far
        self._recent: list[str] = []
        self._online: dict[str, list[str]] = defaultdict(list)
        self._progress = asyncio.Condition()
        self._bad_n: Counter[str] = Counter()
        self._producer: AIOKafkaProducer | None = None

    # --- building ---------------------------------------------------------------------------

    def _is(self, i: int, rate: float) -> bool:
        """Spread ``rate`` evenly: true for exactly round-down(rate * n) of the first n indexes."""
        return rate > 0 and int((i + 1) * rate) > int(i * rate)

    def _sale(self, i: int) -> SaleSpec:
        """Round robin, shifted every 997 attempts so that evenly spread bad input hits every sale."""
        return self.sales[(i + i // 997) % len(self.sales)]

    def _attempt(self, i: int, ts: int) -> Event:
        sale = self._sale(i)
        if self._recent and self.rng.random() < self.retry_rate:
            user = self.rng.choice(self._recent[-500:])
        else:
            user = f"u{self.rng.randrange(self.users)}"
            self._recent.append(user)
        qty = 3 if self.rng.random() < self.big_qty_rate else 1
        order_id = f"{sale.sale_id}-o{i}"
        event_id = f"e-{order_id}"
        if self._is(i, self.bad.fault):
            event_id += f"-{self.bad.marker}"
        return make_event(OrderPlaced(order_id=order_id, sale_id=sale.sale_id, sku=sale.sku, qty=qty,
                                      unit_price=PRICE), event_id=event_id, ts=ts, room_id=sale.room_id,
                          user_id=user, channel="live_room")

    def _engagement(self, j: int, ts: int) -> Event:
        sale = self.sales[self.rng.randrange(len(self.sales))]
        room = sale.room_id
        online = self._online[room]
        r = self.rng.random()
        eid = f"g{j}"
        if r < 0.2 or not online:
            user = f"v{self.rng.randrange(self.users)}"
            online.append(user)
            payload: Any = ViewerJoined()
        else:
            user = self.rng.choice(online[-300:])
            if r < 0.5:
                payload = ViewerLiked(count=self.rng.randint(1, 5))
            elif r < 0.62:
                payload = ViewerCommented(text="666")
            elif r < 0.67:
                payload = ViewerShared(target="community_group")
            elif r < 0.8:
                payload = ProductClicked(sku=sale.sku)
            elif r < 0.9:
                payload = CartAdded(sku=sale.sku, qty=self.rng.randint(1, 2))
            elif r < 0.94:
                payload = CartRemoved(sku=sale.sku)
            else:
                payload = ViewerLeft()
        return make_event(payload, event_id=eid, ts=ts, room_id=room, user_id=user, channel="live_room")

    def _bad_records(self, i: int, ts: int) -> list[tuple[str, bytes, bytes]]:
        """Standalone bad records due at attempt ``i``: (logical topic, key, value)."""
        out = []
        sale = self._sale(i)
        if self._is(i, self.bad.malformed):
            topic, key = self._alternate("malformed", sale)
            out.append((topic, key, b'{"type": "order.placed", "event_id": "mal-%d", "data": {' % i))
            self.ledger.bad[(topic, "malformed_json")] += self.copies
        if self._is(i, self.bad.unknown_type):
            topic, key = self._alternate("unknown", sale)
            body = {"type": "order.teleported" if topic == ORDERS else "viewer.teleported", "v": 1,
                    "event_id": f"unk-{i}", "ts": ts, "room_id": sale.room_id, "user_id": "u0", "data": {}}
            out.append((topic, key, orjson.dumps(body)))
            self.ledger.bad[(topic, "unknown_type")] += self.copies
        return out

    def _bad_version(self, i: int, ts: int) -> tuple[str, str, dict[str, Any]] | None:
        """An event of schema version 2 to slip into a batched record at attempt ``i``."""
        if not self._is(i, self.bad.bad_version):
            return None
        sale = self._sale(i)
        topic, _ = self._alternate("version", sale)
        if topic == ORDERS:
            ev = make_event(OrderPlaced(order_id=f"bv-{i}", sale_id=sale.sale_id, sku=sale.sku, qty=1,
                                        unit_price=PRICE), event_id=f"bv-{i}", ts=ts, room_id=sale.room_id,
                            user_id="u0", channel="live_room")
        else:
            ev = make_event(ViewerLiked(count=1), event_id=f"bv-{i}", ts=ts, room_id=sale.room_id, user_id="v0")
        return topic, partition_key(ev).decode(), {**ev.to_dict(), "v": 2}

    def _alternate(self, kind: str, sale: SaleSpec) -> tuple[str, bytes]:
        """Bad input of each kind goes to the orders and the engagement topic in turn."""
        self._bad_n[kind] += 1
        if self._bad_n[kind] % 2 or not self.with_engagement:
            return ORDERS, sale.sku.encode()
        return ENGAGEMENT, sale.room_id.encode()

    def _oversized(self, k: int, ts: int) -> tuple[str, bytes, bytes]:
        """A batched record of valid order attempts, larger than the worker's record limit."""
        sale = self.sales[k % len(self.sales)]
        items: list[dict[str, Any]] = []
        size = 2
        n = 0
        while size < self.bad.oversized_bytes:
            order_id = f"{sale.sale_id}-big{k}-{n}"
            ev = make_event(OrderPlaced(order_id=order_id, sale_id=sale.sale_id, sku=sale.sku, qty=1,
                                        unit_price=PRICE), event_id=f"e-{order_id}", ts=ts, room_id=sale.room_id,
                            user_id=f"u{n}", channel="live_room")
            items.append(ev.to_dict())
            size += len(orjson.dumps(items[-1])) + 1
            self.ledger.dead_attempts[sale.sale_id].add(order_id)
            n += 1
        self.ledger.bad[(ORDERS, "too_large")] += self.copies
        return ORDERS, sale.sku.encode(), orjson.dumps(items)

    def _tick(self, first: int, n: int, eng_first: int, m: int) -> list[tuple[str, bytes, bytes]]:
        ts = now_ms()
        runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)  # (topic, key) → items
        loose: list[tuple[str, bytes, bytes]] = []
        valid: list[Event] = []
        for i in range(first, first + n):
            ev = self._attempt(i, ts)
            d = ev.data
            assert isinstance(d, OrderPlaced)
            if self.bad.marker in ev.event_id and self.bad.fault > 0:
                self.ledger.dead_attempts[d.sale_id].add(d.order_id)
                self.ledger.bad[(ORDERS, "handler_error")] += self.copies
            else:
                self.ledger.attempts[(d.sale_id, d.order_id)] = ev.user_id
            valid.append(ev)
            if self.rng.random() < self.dup_rate and self.bad.marker not in ev.event_id:
                valid.append(ev)  # an exact duplicate send (client retry of the same event)
            loose.extend(self._bad_records(i, ts))
            bv = self._bad_version(i, ts)
            if bv is not None:
                topic, key, item = bv
                runs[(topic, key)].append(item)
                self.ledger.bad[(topic, "bad_version")] += self.copies
        for j in range(eng_first, eng_first + m):
            ev = self._engagement(j, ts)
            valid.append(ev)
            if self.rng.random() < self.dup_rate:
                valid.append(ev)
        for ev in valid:
            topic = ORDERS if isinstance(ev.data, OrderPlaced) else ENGAGEMENT
            runs[(topic, partition_key(ev).decode())].append(ev.to_dict())
            # Every agent honours FLASHSALE_FAULT_INJECT: a faulting event is dead-lettered, not counted.
            if not (self.bad.fault > 0 and self.bad.marker in ev.event_id):
                self.ledger.count_event(ev)
        out = []
        for (topic, key), items in runs.items():
            for k in range(0, len(items), RECORD_EVENTS):
                chunk = items[k:k + RECORD_EVENTS]
                out.append((topic, key.encode(), orjson.dumps(chunk if len(chunk) > 1 else chunk[0])))
        return out + loose

    @staticmethod
    def decode(value: bytes) -> list[dict[str, Any]]:
        """The JSON events of a record (one event or a batched array)."""
        obj = orjson.loads(value)
        return obj if isinstance(obj, list) else [obj]

    # --- sending -----------------------------------------------------------------------------

    async def __aenter__(self) -> Traffic:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                          max_request_size=4_194_304, request_timeout_ms=30_000)
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(self, records: Iterable[tuple[str, bytes, bytes]], copies: int | None = None) -> None:
        """Send (logical topic, key, value) records (each ``copies`` times, by default as configured)
        and wait for the broker's acks."""
        assert self._producer is not None
        futs = []
        for topic, key, value in records:
            for _ in range(copies or self.copies):
                futs.append(await self._producer.send(self.names.name(topic), value, key=key))
                self.ledger.records += 1
        await asyncio.gather(*futs)

    async def send_events(self, events: Iterable[Event]) -> None:
        evs = list(events)
        for e in evs:
            self.ledger.count_event(e)
        await self.send([(logical_topic(e.type), partition_key(e), orjson.dumps(e.to_dict())) for e in evs])

    async def engagement_barrier(self, tag: str, partitions: int) -> None:
        """A viewer.joined in a room of every engagement partition (counted in the ledger): once the
        counters show them, everything sent before them to the engagement topic was applied."""
        if self.with_engagement:
            ts = now_ms()
            await self.send_events([make_event(ViewerJoined(), event_id=f"{tag}-{room}", ts=ts, room_id=room,
                                               user_id=f"probe-{tag}") for room in probe_rooms(partitions)])

    async def open_sales(self) -> None:
        ts = now_ms()
        await self.send_events([s.opened(ts) for s in self.all_sales])

    async def run(self, hold_timeout: float = 120.0) -> None:
        """Publish every attempt at the configured rate (bounded: the hold waits at most hold_timeout)."""
        self.ledger.started_ms = now_ms()
        per_tick = max(1, round(self.rate * self.tick_s))
        eng = 0
        over = 0
        over_every = self.total // (self.bad.oversized + 1) if self.bad.oversized else 0
        next_tick = time.monotonic()
        while self.sent < self.total:
            if self.hold is not None and self.sent >= self.hold_at and not self.hold.is_set():
                await asyncio.wait_for(self.hold.wait(), hold_timeout)
                next_tick = time.monotonic()
            n = min(per_tick, self.total - self.sent)
            if self.sent < self.hold_at:
                n = min(n, self.hold_at - self.sent)
            m = round(n * self.engagement_ratio)
            records = self._tick(self.sent, n, eng, m)
            if over_every and over < self.bad.oversized and self.sent + n >= over_every * (over + 1):
                records.append(self._oversized(over, now_ms()))
                over += 1
            eng += m
            await self.send(records)
            async with self._progress:
                self.sent += n
                self._progress.notify_all()
            next_tick += self.tick_s
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        self.ledger.finished_ms = now_ms()

    def release(self, n: int) -> None:
        """Let ``n`` more attempts through the hold; the hold keeps the rest back until it is set."""
        self.hold_at = min(self.total, max(self.hold_at, self.sent) + n)
        if self.hold is not None and not self.hold.is_set():
            self.hold.set()  # wakes a waiting run(); it stops again at the new hold_at
            self.hold.clear()

    async def reached(self, fraction: float, timeout: float = 120.0) -> None:
        """Wait until ``fraction`` of the attempts has been published."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.sent >= self.total * fraction), timeout)
