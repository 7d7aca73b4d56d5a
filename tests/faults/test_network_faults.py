"""Network faults between the workers and Redis, and between the workers and the broker, through
a TCP fault proxy (tests/harness/tcp_proxy.py), mid-burst: connections cut for a few seconds,
added latency, a blackhole (accepted, never answered). Same pass criteria as the other fault
cases, plus the stock equation at every sampled moment; the time from each heal to the next
decision goes to test-artifacts/faults.jsonl (docs/RELIABILITY.md quotes it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from kernel.kafka_admin import ensure_topics
from schemas.topics import TopicNames
from tests.faults.checks import (
    InvariantSampler,
    decided,
    first_decision_after,
    longest_pause,
    record,
    resumed_after,
)
from tests.faults.scenario import Outcome, verify
from tests.faults.traffic import BadMix, SaleSpec, Traffic, make_sales
from tests.harness.aof_redis import AofRedis
from tests.harness.broker import Broker
from tests.harness.tcp_proxy import TcpProxy, proxied_broker, proxy_factory  # noqa: F401 - fixtures
from tests.harness.worker_group import PARTITIONS, WorkerGroup, fault_env

pytestmark = pytest.mark.faults

ATTEMPTS = 20_000
RATE = 1000  # attempts/s: the burst lasts ~20 s, long enough to hold all three faults
FAULT_S = 3.0  # how long each fault lasts
LATENCY_MS = 150  # per chunk, each way
PLAN = ((0.1, "cut"), (0.3, "latency"), (0.5, "blackhole"))
LIGHT_BAD = BadMix(malformed=0.002, unknown_type=0.001, bad_version=0.001)
# The broker cases keep a 6 s session (heartbeat 1 s), not the suite's 2 s: a 3 s cut of the workers'
# broker connections must stay shorter than the session, as it is in production (8 s), or every fault
# here would turn into an eviction and a rebalance and the case would test something else.
BROKER_CASE_TIMING = {"FLASHSALE_SESSION_TIMEOUT_S": "6", "FLASHSALE_HEARTBEAT_S": "1"}


async def run_faults(proxy: TcpProxy, group: WorkerGroup, traffic: Traffic, rc: aioredis.Redis,
                     sales: list[SaleSpec], plan: tuple[tuple[float, str], ...] = PLAN,
                     resume_timeout: float = 90.0) -> list[dict[str, Any]]:
    """The faults of ``plan`` (at a fraction of the burst, in turn) while the burst goes on; returns
    one entry per fault with its wall-clock window and the time from heal to the next decision
    (Redis attempt counters, read directly)."""
    inject: dict[str, Callable[[], float]] = {
        "cut": lambda: proxy.cut(FAULT_S),
        "latency": lambda: proxy.latency(LATENCY_MS),
        "blackhole": proxy.blackhole,
    }
    faults = []
    for fraction, kind in plan:
        await traffic.reached(fraction)
        stats = dict(proxy.stats)
        at_start = await decided(rc, sales)
        started = inject[kind]()
        await asyncio.sleep(FAULT_S / 2)
        readyz = {n: (await group.readyz(n))[0] for n in group.workers}
        await asyncio.sleep(max(0.0, started + FAULT_S - time.time()))
        before = await decided(rc, sales)
        healed = proxy.heal()
        traffic.release(300)  # something left to decide after the heal, whatever the timing
        resumed_s = await resumed_after(rc, sales, before, healed, resume_timeout)
        hit = {k: v - stats.get(k, 0) for k, v in proxy.stats.items() if v != stats.get(k, 0)}
        faults.append({"fault": kind, "started_ms": int(started * 1000), "healed_ms": int(healed * 1000),
                       "decided_during": before - at_start, "readyz_during": readyz,
                       "heal_to_progress_s": round(resumed_s, 2), "proxy": hit})
        await asyncio.sleep(1.0)
    return faults


def summarize(faults: list[dict[str, Any]], out: Outcome) -> list[dict[str, Any]]:
    """Add the decisions log's view: the first answer to an attempt (order.accepted or rejected; not
    the sweeper's outputs) stamped after the heal, and the longest pause between answers."""
    answers = [i for i in out.decisions if i.value["type"] in ("order.accepted", "order.rejected")]
    for f in faults:
        first = first_decision_after(answers, set(range(PARTITIONS)), f["healed_ms"])
        assert first is not None, f"no decision after the {f['fault']} healed"
        f["heal_to_first_decision_s"] = round((first - f["healed_ms"]) / 1000, 2)
        f["longest_decision_pause_s"] = round(longest_pause(answers, f["started_ms"] - 1000, first + 1000) / 1000, 2)
    return faults


async def test_redis_network_faults(broker: Broker, aof_redis: AofRedis, rc: aioredis.Redis, topic_prefix: str,
                                    group_factory: Any, proxy_factory: Any,  # noqa: F811
                                    artifacts_dir: Path) -> None:
    proxy: TcpProxy = proxy_factory(aof_redis.port, name="redis")
    group = group_factory(FLASHSALE_REDIS_URL=proxy.url)  # the workers reach Redis only through the proxy
    await group.start("a", "b")
    await group.wait_split(TopicNames(topic_prefix).orders)
    sales = make_sales(PARTITIONS, allotment=2000)  # sells out late in the burst, after the faults
    hold = asyncio.Event()
    async with (Traffic(broker.bootstrap, topic_prefix, sales, ATTEMPTS, rate=RATE, bad=LIGHT_BAD, hold=hold,
                        hold_fraction=0.15, seed=13) as traffic,
                InvariantSampler(rc, sales) as sampler):
        await traffic.open_sales()
        sending = asyncio.create_task(traffic.run())
        faults = await run_faults(proxy, group, traffic, rc, sales)
        hold.set()
        await sending
        out = await verify(broker.bootstrap, aof_redis.url, topic_prefix, traffic, sales, rc, group,
                           tag="fresh-redis-net")
    sampled = sampler.check()
    by_kind = {f["fault"]: f for f in faults}
    assert by_kind["cut"]["proxy"].get("cut_closed"), f"the cut closed no worker connection: {by_kind['cut']}"
    assert by_kind["blackhole"]["proxy"].get("blackholed"), f"the blackhole caught nothing: {by_kind['blackhole']}"
    record(artifacts_dir, {"test": "redis_network_faults", "fault_s": FAULT_S, "latency_ms_each_way": LATENCY_MS,
                           "faults": summarize(faults, out), **sampled, **out.summary})


async def broker_case(broker: Broker, proxy: TcpProxy, aof_redis: AofRedis, rc: aioredis.Redis, prefix: str,
                      log_dir: Path, plan: tuple[tuple[float, str], ...], seed: int, resume_timeout: float = 90.0,
                      answer_timeout: float = 180.0, attempts: int = ATTEMPTS) -> dict[str, Any]:
    """The burst of ``attempts`` with ``plan``'s faults on the workers' broker connections; every pass
    criterion. The allotment scales with the burst, so the sales sell out late in it, after the faults."""
    await ensure_topics(broker.bootstrap, prefix, partitions=PARTITIONS)
    group = WorkerGroup(fault_env(broker, aof_redis.url, prefix, **BROKER_CASE_TIMING), log_dir)
    try:
        await group.start("a", "b")
        await group.wait_split(TopicNames(prefix).orders)
        sales = make_sales(PARTITIONS, allotment=attempts // 10)  # 2,000 of 20,000: sells out late, after the faults
        hold = asyncio.Event()
        async with (Traffic(broker.bootstrap, prefix, sales, attempts, rate=RATE, bad=LIGHT_BAD, hold=hold,
                            hold_fraction=0.15, seed=seed) as traffic,
                    InvariantSampler(rc, sales) as sampler):
            await traffic.open_sales()
            sending = asyncio.create_task(traffic.run())
            faults = await run_faults(proxy, group, traffic, rc, sales, plan, resume_timeout)
            hold.set()
            await sending
            out = await verify(broker.bootstrap, aof_redis.url, prefix, traffic, sales, rc, group,
                               tag="fresh-broker-net", answer_timeout=answer_timeout)
        sampled = sampler.check()
    finally:
        group.stop_all()
    for f in faults:
        key = {"cut": "cut_closed", "blackhole": "blackholed", "latency": "faultable"}[f["fault"]]
        if f["fault"] != "latency":
            assert f["proxy"].get(key), f"the {f['fault']} hit no worker connection: {f}"
    return {"fault_s": FAULT_S, "latency_ms_each_way": LATENCY_MS, "faults": summarize(faults, out),
            "faulted_connections": proxy.stats["faultable"], **sampled, **out.summary}


async def test_broker_cut_and_latency(proxied_broker: tuple[Broker, TcpProxy],  # noqa: F811
                                      aof_redis: AofRedis, rc: aioredis.Redis, topic_prefix: str,
                                      tmp_path: Path, artifacts_dir: Path) -> None:
    broker, proxy = proxied_broker
    # 14,000 at 1,000/s: the cut starts 1.4 s in, the latency as soon as the cut has healed and decisions
    # resumed (~6 s), and both are over before the hold (85 %, ~12 s) stops the burst
    entry = await broker_case(broker, proxy, aof_redis, rc, topic_prefix, tmp_path / "logs",
                              ((0.1, "cut"), (0.35, "latency")), seed=14, attempts=14_000)
    record(artifacts_dir, {"test": "broker_cut_and_latency", **entry})


async def test_broker_blackhole(proxied_broker: tuple[Broker, TcpProxy],  # noqa: F811
                                aof_redis: AofRedis, rc: aioredis.Redis, topic_prefix: str,
                                tmp_path: Path, artifacts_dir: Path) -> None:
    broker, proxy = proxied_broker
    # Bounded waits: produce calls carry the worker's own limit (FLASHSALE_SEND_TIMEOUT_S), so the
    # rebalance no longer hangs in Faust's producer.flush() for its 20-minute default; a fetch or
    # heartbeat on a blackholed connection still waits for broker_request_timeout (40 s). Measured:
    # decisions resumed 1.56 s after the heal in one run and took over 20 s in another, so the bound
    # asserted is that timeout plus slack, not seconds (issue 13: a consumer-side limit is still open).
    # The recovery, not the burst, is this case's time: 12,000 attempts (the blackhole 2.4 s in) keep it mid-sale.
    entry = await broker_case(broker, proxy, aof_redis, rc, topic_prefix, tmp_path / "logs",
                              ((0.2, "blackhole"),), seed=15, resume_timeout=60.0, answer_timeout=90.0,
                              attempts=12_000)
    record(artifacts_dir, {"test": "broker_blackhole", **entry})

