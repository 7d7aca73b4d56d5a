"""The end of every fault scenario: wait for the answers, then check every pass criterion."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from schemas import keys as rk
from schemas.codec import DEFAULT_MAX_RECORD_BYTES
from schemas.topics import TopicNames
from tests.faults.checks import (
    Item,
    TopicTail,
    answered,
    check_audit,
    check_counters,
    check_dead_letters,
    check_decisions,
    check_stock,
    probe,
)
from tests.faults.traffic import ROOM_FIELDS, SaleSpec, Traffic
from tests.harness.worker_group import WorkerGroup, counters_available

ANSWER_TIMEOUT_S = 180.0


@dataclass
class Outcome:
    decisions: list[Item]
    summary: dict[str, Any]


async def wait_answers(bootstrap: str, prefix: str, traffic: Traffic, timeout: float = ANSWER_TIMEOUT_S) -> list[Item]:
    """Read the decisions log until every decidable attempt is answered (bounded)."""
    want = set(traffic.ledger.attempts)
    async with TopicTail(bootstrap, TopicNames(prefix).decisions) as tail:
        await tail.until(lambda xs: answered(xs) >= want, timeout)
        return tail.items


async def verify(bootstrap: str, redis_url: str, prefix: str, traffic: Traffic, sales: list[SaleSpec],
                 client: aioredis.Redis, group: WorkerGroup, tag: str = "fresh",
                 room_fields: tuple[str, ...] = ROOM_FIELDS,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 answer_timeout: float = ANSWER_TIMEOUT_S) -> Outcome:
    """Every pass criterion of the suite, in order; returns the decisions log and a summary."""
    started = time.monotonic()
    ledger = traffic.ledger
    decisions = await wait_answers(bootstrap, prefix, traffic, answer_timeout)
    answered_s = time.monotonic() - started
    missing = sorted(set(ledger.attempts) - answered(decisions))
    if missing:  # evidence for the report: does Redis know the orders the log never answered?
        known = {k: await client.hget(rk.sale_orders(k[0]), k[1]) for k in missing[:5]}
        raise AssertionError(f"{len(missing)} attempts never answered; Redis has for the first ones: {known}")
    accepted = check_decisions(ledger, decisions)
    stock = await check_stock(client, ledger, sales, accepted)
    await check_audit(bootstrap, redis_url, prefix, ledger, max_record_bytes)
    dead = await check_dead_letters(bootstrap, TopicNames(prefix).dead_letter, ledger)
    counters = await check_counters(client, ledger, fields=room_fields) if counters_available() else None
    for name in list(group.workers):
        status, body = await group.readyz(name)
        assert status == 200, f"{name} /readyz {status}: {body}"
    fresh_s = await probe(traffic, client, sales, tag)
    summary = {
        "attempts": len(ledger.attempts), "valid_events": ledger.events, "records": ledger.records,
        "accepted": len(accepted), "sold_units": sum(n["sold"] for n in stock.values()),
        "reserved_units": sum(n["reserved"] for n in stock.values()),
        "expired": sum(n["expired"] for n in stock.values()),
        "decision_records": len(decisions), **dead,
        "room_totals": counters, "answered_after_s": round(answered_s, 2), "fresh_order_s": round(fresh_s, 2),
        "sale_s": round((ledger.finished_ms - ledger.started_ms) / 1000, 1),
    }
    return Outcome(decisions, summary)
