"""``flashsale audit``: recompute every sale from the Kafka log and compare with Redis.

Inputs (orders topic) and outputs (order-decisions topic) are read from the beginning to the
end offsets seen at start; Redis is read once. Any difference exits 1.
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

from kernel.settings import ConfigError
from schemas import keys as rk
from schemas.codec import DEFAULT_MAX_RECORD_BYTES, decode_record
from schemas.events import Event
from schemas.order_record import OrderRecord, parse_order_record
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
    sold_out_events: int = 0

    @property
    def attempts(self) -> int:
        return sum(len(ids) for ids in self.events_by_order.values())


@dataclass
class SaleAudit:
    sale_id: str
    row: dict[str, Any]
    problems: list[str]


async def read_log(bootstrap: str, topic: str, max_bytes: int | None = None, raw: bool = False) -> list[Any]:
    """Every valid event in ``topic`` up to the end offsets seen now (no consumer group). Records over
    ``max_bytes`` are skipped, as the worker dead-letters them unread; ``raw`` returns decoded JSON values."""
    # auto_offset_reset="earliest": assign() schedules a position reset by this policy, which can race
    # the explicit seek to the beginning below; with aiokafka's default ("latest") some partitions
    # were then read from their end and the audit reported lost attempts that were not lost.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100,
                                request_timeout_ms=15_000, auto_offset_reset="earliest")
    await consumer.start()
    events: list[Any] = []
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return events
        consumer.assign(tps)
        # End offsets are a floor, not the end: Tansu reports the last batch's base offset + 1.
        # So read until every partition reached its reported end AND the log stays quiet.
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        quiet = 0
        while quiet < 3 or any([await consumer.position(tp) < ends[tp] for tp in tps]):
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            quiet = 0 if batch else quiet + 1
            for msgs in batch.values():
                for m in msgs:
                    if raw:
                        events.append(orjson.loads(m.value))
                    elif max_bytes is None or len(m.value or b"") <= max_bytes:
                        events.extend(decode_record(m.value).events)
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
    for e in inputs:
        sale_id = getattr(e.data, "sale_id", None)
        if sale_id is None or e.event_id in skipped:
            continue
        s = sales[sale_id]
        if e.type == "order.placed":
            order_id = e.data.order_id  # type: ignore[attr-defined]
            s.events_by_order[order_id].add((e.event_id, e.user_id))
            s.first_event.setdefault(order_id, e.event_id)
        elif e.type == "sale.opened":
            s.opened = True
        elif e.type == "order.paid":
            s.paid.add(e.data.order_id)  # type: ignore[attr-defined]
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


def check(sale_id: str, log: SaleLog, sale: dict[str, str], orders: dict[str, OrderRecord],
          limit_by_user: dict[str, int]) -> SaleAudit:
    problems: list[str] = []
    n = {k: int(sale.get(k, "0") or 0) for k in ("allotted", "available", "reserved", "sold", "attempts",
                                                  "accepted", "per_user_limit", "expired", "cancelled")}
    if not sale:
        problems.append("sale missing in Redis")
    if n["allotted"] != n["available"] + n["reserved"] + n["sold"]:
        problems.append("allotted != available + reserved + sold")
    if n["available"] < 0 or n["reserved"] < 0 or n["sold"] > n["allotted"]:
        problems.append("oversold")
    unanswered = set(log.events_by_order) - set(log.accepted) - log.rejected
    if unanswered:
        problems.append(f"{len(unanswered)} attempts without a decision (lost), e.g. {sorted(unanswered)[:3]}")
    both = set(log.accepted) & log.rejected
    if both:
        problems.append(f"{len(both)} orders both accepted and rejected")
    if log.attempts != n["attempts"]:
        problems.append(f"attempts: log {log.attempts} != redis {n['attempts']}")
    redis_accepted = {o: r for o, r in orders.items() if r.accepted}
    if set(redis_accepted) != set(log.accepted) or len(log.accepted) != n["accepted"]:
        problems.append(f"accepted: log {len(log.accepted)}, redis counter {n['accepted']}, "
                        f"redis orders {len(redis_accepted)}")
    by_state: dict[str, int] = defaultdict(int)
    for r in redis_accepted.values():
        by_state[r.state] += r.qty
    if by_state["reserved"] != n["reserved"] or by_state["sold"] != n["sold"]:
        problems.append(f"recount from orders: reserved {by_state['reserved']} sold {by_state['sold']} "
                        f"!= sale hash reserved {n['reserved']} sold {n['sold']}")
    sold = {o for o, r in redis_accepted.items() if r.state == "sold"}
    unpaid = sold - log.paid
    if unpaid:
        problems.append(f"{len(unpaid)} orders sold without an order.paid in the log, e.g. {sorted(unpaid)[:3]}")
    stuck = {o for o in log.paid & set(log.accepted) if o in redis_accepted and redis_accepted[o].state == "reserved"}
    if stuck:
        problems.append(f"{len(stuck)} paid orders still reserved (payment lost), e.g. {sorted(stuck)[:3]}")
    if int(sale.get("paid", "0") or 0) != len(sold):
        problems.append(f"paid counter {sale.get('paid', '0')} != {len(sold)} sold orders")
    held_by_log = sum(q for o, q in log.accepted.items() if o not in log.expired)
    if held_by_log > n["allotted"]:
        problems.append(f"oversold by the log: {held_by_log} units accepted and not released > allotted "
                        f"{n['allotted']}")
    released = {o for o, r in redis_accepted.items() if r.released}
    missing = released - log.expired
    if missing:
        problems.append(f"{len(missing)} released reservations without an order.expired event")
    if log.sold_out_events > 0 and "sold_out_at" not in sale:
        problems.append("sale.sold_out emitted but no sold_out_at in Redis")
    over = [u for u, q in limit_by_user.items() if q > n["per_user_limit"] > 0]
    if over:
        problems.append(f"{len(over)} users over the per-user limit")
    row = {"sale": sale_id, "allotted": n["allotted"], "available": n["available"], "reserved": n["reserved"],
           "sold": n["sold"], "attempts": f"{log.attempts}/{n['attempts']}",
           "accepted": f"{len(log.accepted)}/{n['accepted']}", "expired": n["expired"] + n["cancelled"],
           "status": "OK" if not problems else "DIFF"}
    return SaleAudit(sale_id, row, problems)


async def audit(bootstrap: str, redis_url: str, prefix: str, cluster: bool = False,
                only: str | None = None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> list[SaleAudit]:
    """Audit every sale. Records over ``max_record_bytes`` (the worker's FLASHSALE_MAX_RECORD_BYTES)
    and events dead-lettered with handler_error were never applied, so they are not expected in Redis."""
    from kernel.redis import connect

    names = TopicNames(prefix)
    inputs, outputs, letters = await asyncio.gather(
        read_log(bootstrap, names.orders, max_record_bytes), read_log(bootstrap, names.decisions),
        read_log(bootstrap, names.dead_letter, raw=True))
    logs = fold(inputs, outputs, dead_lettered(letters))
    client = connect(redis_url, cluster)
    results = []
    try:
        sale_ids = {_s(m) for m in await client.smembers(rk.sales_index())} | set(logs)  # type: ignore[misc]
        for sale_id in sorted(sale_ids):
            if only and sale_id != only:
                continue
            sale = {_s(k): _s(v) for k, v in (await client.hgetall(rk.sale(sale_id))).items()}  # type: ignore[misc]
            orders = {_s(k): parse_order_record(v)
                      for k, v in (await client.hgetall(rk.sale_orders(sale_id))).items()}  # type: ignore[misc]
            held: dict[str, int] = defaultdict(int)
            for r in orders.values():
                if r.holds_units:
                    held[r.user_id] += r.qty
            results.append(check(sale_id, logs.get(sale_id, SaleLog()), sale, orders, held))
    finally:
        await client.aclose()
    return results


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


def main(argv: list[str] | None = None) -> int:
    from streams.settings import get_settings

    try:
        s = get_settings()  # the workers' settings: the audit reads what they wrote
    except ConfigError as exc:
        print(f"flashsale audit: {exc}", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="flashsale audit", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--broker", default=s.broker_url)
    p.add_argument("--redis", default=s.redis_url)
    p.add_argument("--redis-cluster", action="store_true", default=s.redis_cluster)
    p.add_argument("--prefix", default=s.topic_prefix)
    p.add_argument("--sale", help="audit one sale only")
    p.add_argument("--max-record-bytes", type=int, default=s.max_record_bytes,
                   help="the workers' FLASHSALE_MAX_RECORD_BYTES: larger records were dead-lettered unread")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    try:
        s = s.updated({"broker_url": args.broker, "redis_url": args.redis, "redis_cluster": args.redis_cluster,
                       "topic_prefix": args.prefix, "max_record_bytes": args.max_record_bytes}, FLAGS)
        results = asyncio.run(audit(s.bootstrap, s.redis_url, s.topic_prefix, s.redis_cluster, args.sale,
                                    s.max_record_bytes))
    except ConfigError as exc:
        print(f"flashsale audit: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a CLI reports any failure plainly
        print(f"flashsale audit: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps([{**r.row, "problems": r.problems} for r in results], option=orjson.OPT_INDENT_2).decode())
    else:
        print(table([r.row for r in results]))
        for r in results:
            for prob in r.problems:
                print(f"{r.sale_id}: {prob}")
    bad = [r for r in results if r.problems]
    if not args.json:
        print(f"\n{len(results)} sales audited, {len(bad)} with differences")
    return 1 if bad else 0
