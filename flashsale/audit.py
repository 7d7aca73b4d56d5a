"""``flashsale audit``: recompute every sale (stock, refunds, the commission ledger) from the Kafka log and
compare with Redis.

The cut: Redis is read first, each sale in one MULTI (sale hash, orders, deadlines, outbox), then the
end offsets of the orders, decisions and dead-letter topics are fixed, then each topic is read from
its beginning to those offsets. Everything Redis had applied is then in the logs read (an input
precedes its effect), so the checks that must hold at every moment are exact on a live stack too.
The checks that depend on timing (a decision not emitted yet, an attempt not applied yet, a
reservation not yet due) are differences only for a settled sale; for a sale still in flight (open,
reservations or outbox items pending, or its last event less than ``--settle`` seconds old) they are
reported as in flight. A partition that cannot be read to its end is reported as unreadable (exit 2);
a sale the log names but Redis does not have is reported as not found, never as oversold.
Exit 0: no differences; 1: differences (the sales are named); 2: the audit could not run or read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from kernel.kafka_auth import KafkaAuth
from kernel.settings import ConfigError, redact_url
from schemas import keys as rk
from schemas.codec import DEFAULT_MAX_RECORD_BYTES, decode_record
from schemas.events import Event
from schemas.order_record import (
    DistributorTotals,
    LedgerEntry,
    OrderRecord,
    commission,
    parse_distributor_totals,
    parse_ledger_entry,
    parse_order_record,
)
from schemas.topics import TopicNames


@dataclass
class SaleLog:
    """What the Kafka log says about one sale."""

    # order id → its attempts: (event id, user); another user's reuse of an order id is an attempt too
    events_by_order: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    first_event: dict[str, str] = field(default_factory=dict)
    opened: bool = False
    accepted: dict[str, int] = field(default_factory=dict)  # order_id → qty
    rejected: set[str] = field(default_factory=set)
    expired: set[str] = field(default_factory=set)
    paid: set[str] = field(default_factory=set)
    refunded: set[str] = field(default_factory=set)  # orders with an order.refunded in the log
    sold_out_events: int = 0
    # the commission rule each order was paid under: order id → (distributor, bps) of share_link orders,
    # from the owner's first order.paid after its placement and the sale.opened rule in force then
    commission_rule: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def attempts(self) -> int:
        return sum(len(ids) for ids in self.events_by_order.values())


@dataclass
class SaleAudit:
    sale_id: str
    row: dict[str, Any]
    problems: list[str]  # differences: exit 1
    in_flight: list[str] = field(default_factory=list)  # what is not settled yet (live mode): not differences


@dataclass
class SaleSnapshot:
    """One sale as Redis holds it, read in one MULTI (all its keys share a cluster slot)."""

    sale: dict[str, str]
    orders: dict[str, OrderRecord]
    deadlines: int = 0
    outbox: int = 0
    ledger: dict[str, LedgerEntry] = field(default_factory=dict)
    distributors: dict[str, DistributorTotals] = field(default_factory=dict)


class Unreadable(RuntimeError):
    """Some partitions could not be read to the end offsets fixed at the start."""

    def __init__(self, topic: str, partitions: list[int], reason: str) -> None:
        super().__init__(f"{topic} partitions {partitions} unreadable: {reason}")
        self.topic, self.partitions, self.reason = topic, partitions, reason


def _auth(kafka_auth: KafkaAuth | None) -> dict[str, Any]:
    return kafka_auth.aiokafka_kwargs() if kafka_auth is not None else {}


async def end_offsets(bootstrap: str, topics: Iterable[str], kafka_auth: KafkaAuth | None = None
                      ) -> dict[TopicPartition, int]:
    """The end offset of every partition of ``topics``, all fixed now (the cut's upper bound)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=15_000,
                                **_auth(kafka_auth))
    await consumer.start()
    try:
        tps: list[TopicPartition] = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                await consumer._client.force_metadata_update()  # noqa: SLF001
                parts = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        return dict(await consumer.end_offsets(tps)) if tps else {}
    finally:
        await consumer.stop()


async def read_log(bootstrap: str, topic: str, max_bytes: int | None = None, raw: bool = False,
                   ends: dict[TopicPartition, int] | None = None, stall_s: float = 30.0,
                   kafka_auth: KafkaAuth | None = None) -> list[Any]:
    """Every valid event in ``topic`` from the beginning to ``ends`` (the end offsets fixed by the caller,
    else now), no consumer group. Records over ``max_bytes`` are skipped, as the worker dead-letters them
    unread; ``raw`` returns decoded JSON values. A partition that makes no progress towards its end for
    ``stall_s`` raises :class:`Unreadable`."""
    # auto_offset_reset="earliest": assign() schedules a position reset by this policy, which can race
    # the explicit seek to the beginning below; with aiokafka's default ("latest") some partitions
    # were then read from their end and the audit reported lost attempts that were not lost.
    if ends is None:
        ends = await end_offsets(bootstrap, [topic], kafka_auth)
    tps = sorted((tp for tp in ends if tp.topic == topic), key=lambda tp: tp.partition)
    events: list[Any] = []
    if not tps:
        return events
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100,
                                request_timeout_ms=15_000, auto_offset_reset="earliest", **_auth(kafka_auth))
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # A partition is done once its position reached the fixed end. Tansu reports the last batch's
        # base offset + 1 as the end, so the whole last batch is read: the cut is at batch boundaries.
        pending = {tp for tp in tps if ends[tp] > 0}
        progress = asyncio.get_running_loop().time()
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=20_000)
            for msgs in batch.values():
                for m in msgs:
                    if raw:
                        events.append(orjson.loads(m.value))
                    elif max_bytes is None or len(m.value or b"") <= max_bytes:
                        events.extend(decode_record(m.value).events)
            done = {tp for tp in pending if await consumer.position(tp) >= ends[tp]}
            if batch or done:
                progress = asyncio.get_running_loop().time()
            pending -= done
            for tp in done:
                consumer.pause(tp)
            if pending and asyncio.get_running_loop().time() - progress > stall_s:
                raise Unreadable(topic, sorted(tp.partition for tp in pending),
                                 f"no progress towards the end offsets for {stall_s:.0f}s")
    finally:
        await consumer.stop()
    return events


def dead_lettered(letters: Iterable[dict[str, Any]]) -> set[str]:
    """Event ids the worker dead-lettered after decoding them (their handler raised): never applied."""
    out = set()
    for letter in letters:
        if letter.get("reason") != "handler_error":
            continue
        try:
            obj = orjson.loads(letter.get("raw", ""))
        except orjson.JSONDecodeError:
            continue
        for item in obj if isinstance(obj, list) else [obj]:
            if isinstance(item, dict) and isinstance(item.get("event_id"), str):
                out.add(item["event_id"])
    return out


def fold(inputs: Iterable[Event], outputs: Iterable[Event], skipped: set[str] | frozenset[str] = frozenset()
         ) -> dict[str, SaleLog]:
    sales: dict[str, SaleLog] = defaultdict(SaleLog)
    bps: dict[str, int] = defaultdict(int)  # sale → its commission rule so far in the log
    owner: dict[tuple[str, str], tuple[str, str | None]] = {}  # (sale, order) → (user, distributor)
    for e in inputs:
        sale_id = getattr(e.data, "sale_id", None)
        if sale_id is None or e.event_id in skipped:
            continue
        s = sales[sale_id]
        if e.type == "order.placed":
            order_id = e.data.order_id  # type: ignore[attr-defined]
            s.events_by_order[order_id].add((e.event_id, e.user_id))
            s.first_event.setdefault(order_id, e.event_id)
            dist = e.referrer_id if e.channel == "share_link" and e.referrer_id else None
            owner.setdefault((sale_id, order_id), (e.user_id, dist))
        elif e.type == "sale.opened":
            s.opened = True
            if e.data.commission_bps is not None:  # type: ignore[attr-defined]
                bps[sale_id] = e.data.commission_bps  # type: ignore[attr-defined]
        elif e.type == "order.paid":
            order_id = e.data.order_id  # type: ignore[attr-defined]
            s.paid.add(order_id)
            who = owner.get((sale_id, order_id))
            if who is not None and who[0] == e.user_id and who[1] is not None:
                s.commission_rule.setdefault(order_id, (who[1], bps[sale_id]))
        elif e.type == "order.refunded":
            s.refunded.add(e.data.order_id)  # type: ignore[attr-defined]
    for e in outputs:
        sale_id = getattr(e.data, "sale_id", None)
        if sale_id is None:
            continue
        s = sales[sale_id]
        if e.type == "order.accepted":
            s.accepted[e.data.order_id] = e.data.qty  # type: ignore[attr-defined]
        elif e.type == "order.rejected" and e.data.reason not in ("duplicate", "order_id_taken"):  # type: ignore[attr-defined]
            s.rejected.add(e.data.order_id)  # type: ignore[attr-defined]
        elif e.type == "order.expired":
            s.expired.add(e.data.order_id)  # type: ignore[attr-defined]
        elif e.type == "sale.sold_out":
            s.sold_out_events += 1
    return sales


def check_ledger(log: SaleLog, orders: dict[str, OrderRecord], ledger: dict[str, LedgerEntry],
                 distributors: dict[str, DistributorTotals]) -> list[str]:
    """The commission ledger recomputed from the log (the rule in force at each order's payment) and the
    orders Redis sold, against the ledger and the distributors' totals in Redis."""
    problems: list[str] = []
    expected: dict[str, LedgerEntry] = {}
    for oid, rec in orders.items():
        if rec.state not in ("sold", "refunded") or oid not in log.commission_rule:
            continue
        dist, rate = log.commission_rule[oid]
        amount = rec.qty * rec.unit_price
        c = commission(amount, rate)
        expected[oid] = LedgerEntry(distributor=dist, amount=amount, bps=rate, commission=c,
                                    clawed_back=c if rec.state == "refunded" else 0)
    def key(e: LedgerEntry | None) -> tuple[str, int, int, int, int] | None:
        return None if e is None else (e.distributor, e.amount, e.bps, e.commission, e.clawed_back)

    wrong = sorted(o for o in set(expected) | set(ledger) if key(expected.get(o)) != key(ledger.get(o)))
    if wrong:
        o = wrong[0]
        problems.append(f"ledger: {len(wrong)} entries differ from a recount, e.g. {o}: log "
                        f"{key(expected.get(o))} != redis {key(ledger.get(o))}")
    sums: dict[str, DistributorTotals] = {}
    for e in ledger.values():
        t = DistributorTotals(orders=1, paid_gmv=e.amount, earned=e.commission, refunds=1 if e.refunded_at else 0,
                              refunded_gmv=e.amount if e.refunded_at else 0, clawed_back=e.clawed_back)
        sums[e.distributor] = sums[e.distributor] + t if e.distributor in sums else t
    if sums != distributors:
        bad = sorted(d for d in set(sums) | set(distributors) if sums.get(d) != distributors.get(d))
        problems.append(f"ledger: totals of {len(bad)} distributors != the sum of their entries, e.g. {bad[:3]}")
    return problems


def check(sale_id: str, log: SaleLog, sale: dict[str, str], orders: dict[str, OrderRecord],
          limit_by_user: dict[str, int], in_flight: list[str] | None = None,
          ledger: dict[str, LedgerEntry] | None = None,
          distributors: dict[str, DistributorTotals] | None = None) -> SaleAudit:
    """Compare one sale. ``in_flight``: why the sale is not settled (live mode; None = strict). The checks
    that must hold at every moment (Redis read before the log) are always differences; the ones that
    depend on timing are differences for a settled sale and in-flight notes for one in flight."""
    problems: list[str] = []
    lag: list[str] = []  # timing-dependent
    n = {k: int(sale.get(k, "0") or 0) for k in ("allotted", "available", "reserved", "sold", "attempts",
                                                  "accepted", "per_user_limit", "expired", "cancelled",
                                                  "refunded")}
    if not sale:
        # Never "oversold" for a sale that is not there: nothing to compare its stock with.
        (lag if in_flight else problems).append(
            f"not found in Redis ({log.attempts} attempts in the log{', opened' if log.opened else ''})")
        row: dict[str, Any] = {"sale": sale_id, "allotted": "-", "available": "-", "reserved": "-", "sold": "-",
               "attempts": f"{log.attempts}/-", "accepted": f"{len(log.accepted)}/-", "expired": "-",
               "status": "IN FLIGHT" if in_flight and not problems else "MISSING"}
        return SaleAudit(sale_id, row, problems, [*(in_flight or []), *lag] if not problems else [])
    if n["allotted"] != n["available"] + n["reserved"] + n["sold"] + n["refunded"]:
        problems.append("allotted != available + reserved + sold + refunded")
    if n["available"] < 0 or n["reserved"] < 0 or n["sold"] > n["allotted"]:
        problems.append("oversold")
    unanswered = set(log.events_by_order) - set(log.accepted) - log.rejected
    if unanswered:
        lag.append(f"{len(unanswered)} attempts without a decision (lost), e.g. {sorted(unanswered)[:3]}")
    both = set(log.accepted) & log.rejected
    if both:
        problems.append(f"{len(both)} orders both accepted and rejected")
    if n["attempts"] > log.attempts:  # Redis was read first: it cannot have applied more than the log holds
        problems.append(f"attempts: log {log.attempts} < redis {n['attempts']}")
    elif log.attempts != n["attempts"]:
        lag.append(f"attempts: log {log.attempts} != redis {n['attempts']}")
    unlogged = set(orders) - set(log.events_by_order)
    if unlogged:
        problems.append(f"{len(unlogged)} orders in Redis without an attempt in the log, e.g. {sorted(unlogged)[:3]}")
    redis_accepted = {o: r for o, r in orders.items() if r.accepted}
    if set(redis_accepted) != set(log.accepted) or len(log.accepted) != n["accepted"]:
        lag.append(f"accepted: log {len(log.accepted)}, redis counter {n['accepted']}, "
                   f"redis orders {len(redis_accepted)}")
    refused = {o for o in log.accepted if o in orders and not orders[o].accepted}
    if refused:
        problems.append(f"{len(refused)} orders accepted in the log but not in Redis, e.g. {sorted(refused)[:3]}")
    by_state: dict[str, int] = defaultdict(int)
    for r in redis_accepted.values():
        by_state[r.state] += r.qty
    kept = sum(r.qty for r in redis_accepted.values() if r.state == "refunded" and not r.restocked)
    if by_state["reserved"] != n["reserved"] or by_state["sold"] != n["sold"] or kept != n["refunded"]:
        problems.append(f"recount from orders: reserved {by_state['reserved']} sold {by_state['sold']} "
                        f"refunded {kept} != sale hash reserved {n['reserved']} sold {n['sold']} "
                        f"refunded {n['refunded']}")
    sold = {o for o, r in redis_accepted.items() if r.state == "sold"}
    refunded = {o for o, r in redis_accepted.items() if r.state == "refunded"}
    unpaid = (sold | refunded) - log.paid
    if unpaid:
        problems.append(f"{len(unpaid)} orders sold without an order.paid in the log, e.g. {sorted(unpaid)[:3]}")
    unasked = refunded - log.refunded
    if unasked:
        problems.append(f"{len(unasked)} orders refunded without an order.refunded in the log, "
                        f"e.g. {sorted(unasked)[:3]}")
    stuck = {o for o in log.paid & set(log.accepted) if o in redis_accepted and redis_accepted[o].state == "reserved"}
    if stuck:
        lag.append(f"{len(stuck)} paid orders still reserved (payment lost), e.g. {sorted(stuck)[:3]}")
    if int(sale.get("paid", "0") or 0) != len(sold):
        problems.append(f"paid counter {sale.get('paid', '0')} != {len(sold)} sold orders")
    held_by_log = sum(q for o, q in log.accepted.items() if o not in log.expired)
    if held_by_log > n["allotted"]:
        lag.append(f"oversold by the log: {held_by_log} units accepted and not released > allotted "
                   f"{n['allotted']}")
    released = {o for o, r in redis_accepted.items() if r.released}
    missing = released - log.expired
    if missing:
        lag.append(f"{len(missing)} released reservations without an order.expired event")
    if log.sold_out_events > 0 and "sold_out_at" not in sale:
        lag.append("sale.sold_out emitted but no sold_out_at in Redis")
    if ledger is not None:
        problems += check_ledger(log, orders, ledger, distributors or {})
    over = [u for u, q in limit_by_user.items() if q > n["per_user_limit"] > 0]
    if over:
        problems.append(f"{len(over)} users over the per-user limit")
    notes: list[str] = []
    if in_flight:
        notes = [*in_flight, *lag]
    else:
        problems += lag
    status = "DIFF" if problems else "IN FLIGHT" if in_flight else "OK"
    row = {"sale": sale_id, "allotted": n["allotted"], "available": n["available"], "reserved": n["reserved"],
           "sold": n["sold"], "attempts": f"{log.attempts}/{n['attempts']}",
           "accepted": f"{len(log.accepted)}/{n['accepted']}", "expired": n["expired"] + n["cancelled"],
           "status": status}
    return SaleAudit(sale_id, row, problems, notes)


def in_flight_reasons(snap: SaleSnapshot | None, last_event_ms: int | None, now_ms: int, settle_ms: int
                      ) -> list[str]:
    """Why a sale is not settled yet: open, reservations not yet due or swept, decisions in its outbox,
    or an event in the log less than ``settle_ms`` old. [] = settled: every timing-dependent check applies."""
    reasons = []
    if snap is not None and snap.sale.get("status") == "open":
        reasons.append("open")
    if snap is not None and snap.deadlines:
        reasons.append(f"{snap.deadlines} reservations not yet due or released")
    if snap is not None and snap.outbox:
        reasons.append(f"{snap.outbox} decisions not yet emitted")
    if last_event_ms is not None and now_ms - last_event_ms < settle_ms:
        reasons.append(f"last event {max(0, now_ms - last_event_ms) / 1000:.0f}s ago")
    return reasons


async def audit(bootstrap: str, redis_url: str, prefix: str, cluster: bool = False,
                only: str | None = None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                settle_s: float | None = None, now_ms: int | None = None,
                kafka_auth: KafkaAuth | None = None) -> list[SaleAudit]:
    """Audit every sale. Records over ``max_record_bytes`` (the worker's FLASHSALE_MAX_RECORD_BYTES)
    and events dead-lettered with handler_error were never applied, so they are not expected in Redis.

    ``settle_s`` None: strict, every difference counts (a quiet system, the tests). A number: live mode,
    a sale still in flight (see :func:`in_flight_reasons`) has its timing-dependent checks reported as
    in flight. Raises :class:`Unreadable` when a partition cannot be read to the cut."""
    import time

    from kernel.redis import connect

    names = TopicNames(prefix)
    client = connect(redis_url, cluster)
    snaps: dict[str, SaleSnapshot] = {}
    try:
        indexed = {_s(m) for m in await client.smembers(rk.sales_index())}  # type: ignore[misc]
        for sale_id in sorted(indexed):
            if not only or sale_id == only:
                snaps[sale_id] = await snapshot(client, sale_id, atomic=not cluster)
        # The cut: fixed after Redis was read, so the logs hold every input Redis applied.
        ends = await end_offsets(bootstrap, [names.orders, names.decisions, names.dead_letter], kafka_auth)
        inputs, outputs, letters = await asyncio.gather(
            read_log(bootstrap, names.orders, max_record_bytes, ends=ends, kafka_auth=kafka_auth),
            read_log(bootstrap, names.decisions, ends=ends, kafka_auth=kafka_auth),
            read_log(bootstrap, names.dead_letter, raw=True, ends=ends, kafka_auth=kafka_auth))
        logs = fold(inputs, outputs, dead_lettered(letters))
        last: dict[str, int] = {}
        for e in inputs:
            sid = getattr(e.data, "sale_id", None)
            if isinstance(sid, str):
                last[sid] = max(last.get(sid, 0), e.ts)
        for sid in sorted(set(logs) - set(snaps)):
            if not only or sid == only:  # named by the log only: look again, it may be new
                snaps[sid] = await snapshot(client, sid, atomic=not cluster)
    finally:
        await client.aclose()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    results = []
    for sale_id in sorted(snaps):
        snap = snaps[sale_id]
        held: dict[str, int] = defaultdict(int)
        for r in snap.orders.values():
            if r.holds_units:
                held[r.user_id] += r.qty
        reasons = None if settle_s is None else in_flight_reasons(
            snap if snap.sale else None, last.get(sale_id), now, int(settle_s * 1000))
        results.append(check(sale_id, logs.get(sale_id, SaleLog()), snap.sale, snap.orders, held, reasons,
                             snap.ledger, snap.distributors))
    return results


async def snapshot(client: Any, sale_id: str, atomic: bool = True) -> SaleSnapshot:
    """The sale's hash, orders, deadline and outbox sizes in one MULTI (``atomic``; a Redis Cluster
    client sends them as one pipeline to the sale's node): one consistent moment."""
    async with client.pipeline(transaction=atomic) as pipe:
        pipe.hgetall(rk.sale(sale_id))
        pipe.hgetall(rk.sale_orders(sale_id))
        pipe.zcard(rk.sale_deadlines(sale_id))
        pipe.zcard(rk.sale_outbox(sale_id))
        pipe.hgetall(rk.sale_ledger(sale_id))
        pipe.hgetall(rk.sale_distributors(sale_id))
        sale, orders, deadlines, outbox, ledger, dists = await pipe.execute()
    return SaleSnapshot({_s(k): _s(v) for k, v in sale.items()},
                        {_s(k): parse_order_record(v) for k, v in orders.items()}, int(deadlines), int(outbox),
                        {_s(k): parse_ledger_entry(v) for k, v in ledger.items()},
                        {_s(k): parse_distributor_totals(v) for k, v in dists.items()})


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no sales)"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols), "  ".join("-" * width[c] for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)


FLAGS = {"broker_url": "--broker", "redis_url": "--redis", "redis_cluster": "--redis-cluster",
         "topic_prefix": "--prefix", "max_record_bytes": "--max-record-bytes"}  # settings field → flag


DESCRIPTION = """Recompute every sale from the Kafka log (orders, decisions, dead letters) and compare it with
Redis. Redis is read first, then the end offsets of the topics are fixed and each topic is read to
them: a consistent cut, so a healthy live stack passes. A sale still in flight (open, reservations not
yet due, decisions not yet emitted, or an event in the last --settle seconds) is reported IN FLIGHT,
not as a difference. Broker, Redis and prefix default to the FLASHSALE_* settings, which include
the env file flashsale up writes (FLASHSALE_ENV_FILE, .flashsale/endpoints.env). Exit 0: no
differences; 1: differences, the sales named; 2: bad settings, or the log or Redis could not be read."""


def main(argv: list[str] | None = None) -> int:
    from streams.settings import get_settings

    try:
        s = get_settings()  # the workers' settings: the audit reads what they wrote
    except ConfigError as exc:
        print(f"flashsale audit: {exc}", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="flashsale audit", description=DESCRIPTION)
    p.add_argument("--broker", default=s.broker_url, help=f"Kafka bootstrap (default {s.broker_url}, "
                                                          "FLASHSALE_BROKER_URL)")
    p.add_argument("--redis", default=s.redis_url, help=f"Redis URL (default {redact_url(s.redis_url)}, "
                                                        "FLASHSALE_REDIS_URL)")
    p.add_argument("--redis-cluster", action="store_true", default=s.redis_cluster,
                   help=f"talk Redis Cluster protocol (default {str(s.redis_cluster).lower()}, "
                        "FLASHSALE_REDIS_CLUSTER)")
    p.add_argument("--prefix", default=s.topic_prefix, help=f"topic prefix (default {s.topic_prefix!r}, "
                                                            "FLASHSALE_TOPIC_PREFIX)")
    p.add_argument("--sale", help="audit one sale only (default: every sale)")
    p.add_argument("--max-record-bytes", type=int, default=s.max_record_bytes,
                   help="the workers' FLASHSALE_MAX_RECORD_BYTES: larger records were dead-lettered unread "
                        f"(default {s.max_record_bytes})")
    p.add_argument("--settle", type=float, default=30.0,
                   help="seconds after a sale's last event before it counts as settled (default 30)")
    p.add_argument("--strict", action="store_true",
                   help="no in-flight allowance: every difference counts (for a quiet system; default off)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: a table)")
    args = p.parse_args(argv)
    if args.settle < 0:
        print("flashsale audit: --settle must be >= 0", file=sys.stderr)
        return 2
    try:
        s = s.updated({"broker_url": args.broker, "redis_url": args.redis, "redis_cluster": args.redis_cluster,
                       "topic_prefix": args.prefix, "max_record_bytes": args.max_record_bytes}, FLAGS)
        results = asyncio.run(audit(s.bootstrap, s.redis_url, s.topic_prefix, s.redis_cluster, args.sale,
                                    s.max_record_bytes, settle_s=None if args.strict else args.settle,
                                    kafka_auth=s.kafka_auth))
    except ConfigError as exc:
        print(f"flashsale audit: {exc}", file=sys.stderr)
        return 2
    except Unreadable as exc:
        print(f"flashsale audit: UNREADABLE: {exc}; no verdict", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a CLI reports any failure plainly
        print(f"flashsale audit: {type(exc).__name__}: {exc} (broker {s.bootstrap}, "
              f"redis {redact_url(s.redis_url)})", file=sys.stderr)
        return 2
    bad = [r for r in results if r.problems]
    flying = [r for r in results if r.in_flight and not r.problems]
    verdict = (f"verdict: DIFF in {', '.join(r.sale_id for r in bad)}" if bad
               else "verdict: OK, no differences")
    if args.json:
        print(orjson.dumps({"broker": s.bootstrap, "redis": redact_url(s.redis_url), "verdict": verdict,
                            "sales": [{**r.row, "problems": r.problems, "in_flight": r.in_flight}
                                      for r in results]}, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"broker {s.bootstrap}, redis {redact_url(s.redis_url)}, prefix {s.topic_prefix!r}")
        print(table([r.row for r in results]))
        for r in results:
            for prob in r.problems:
                print(f"{r.sale_id}: {prob}")
        for r in flying:
            print(f"{r.sale_id}: in flight: {'; '.join(r.in_flight)}")
        print(f"\n{len(results)} sales audited, {len(bad)} with differences, {len(flying)} in flight")
        print(verdict)
    return 1 if bad else 0
