"""Offsets are committed only for work that is done (issue 13, item 6): workers are SIGTERMed and
the group rebalances in the middle of a burst, while Redis is stalled (redis-server SIGSTOPped by
PID, so every call in flight hangs), just after the workers' Redis connections were blackholed
(through the TCP fault proxy) and healed, and with Redis healthy. Every attempt must still be answered
exactly once with identical re-emissions, 0 oversold, the stock equation at every sampled moment.

The bug this guards against: Faust's ``take_events`` acks every event of the current batch in its
``finally``, finished or not. A stock agent stopped mid-batch (its Redis call hung) acked the
batch; the counters agent on the same orders topic finished its copy of the records after Redis
came back and gave the last ack; the shutdown commit then moved past orders the stock agent never
decided, and nobody decided them again. The window is widest just after a Redis fault, when one
agent has recovered and the other still waits on a dead connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas.topics import TopicNames
from tests.faults.checks import InvariantSampler, decided, first_decision_after, record, resumed_after
from tests.faults.scenario import verify
from tests.faults.traffic import BadMix, Traffic, make_sales
from tests.harness.aof_redis import AofRedis
from tests.harness.broker import Broker
from tests.harness.tcp_proxy import TcpProxy, proxy_factory  # noqa: F401 - fixture
from tests.harness.worker_group import PARTITIONS, WorkerGroup

pytestmark = pytest.mark.faults

ATTEMPTS = 15_000
RATE = 1000  # attempts/s: the burst lasts ~15 s plus the faults
STALL_S = 3.0  # how long redis-server stays stopped
BLACKHOLE_S = 2.5  # how long the workers' Redis connections go silent
TERM_AFTER_HEAL_S = 0.8  # SIGTERM this long after the heal: some agents have recovered, some not yet
LIGHT_BAD = BadMix(malformed=0.002, unknown_type=0.001, bad_version=0.001)


@contextlib.asynccontextmanager
async def stalled(server: AofRedis) -> AsyncIterator[dict[str, float]]:
    """redis-server SIGSTOPped (connections stay open, nothing is answered) until the block ends;
    yields a dict that gets the wall-clock times of the stop and of the SIGCONT."""
    assert server.process is not None
    pid = server.process.pid
    times = {"stopped": time.time()}
    os.kill(pid, signal.SIGSTOP)
    try:
        yield times
    finally:
        os.kill(pid, signal.SIGCONT)
        times["resumed"] = time.time()


async def readyz_codes(group: WorkerGroup) -> dict[str, int]:
    return {n: (await group.readyz(n))[0] for n in list(group.workers)}


async def test_sigterm_and_rebalance_mid_burst_while_redis_stalls(broker: Broker, aof_redis: AofRedis,
                                                                  rc: aioredis.Redis, topic_prefix: str,
                                                                  group_factory: Any, proxy_factory: Any,  # noqa: F811
                                                                  artifacts_dir: Path) -> None:
    orders = TopicNames(topic_prefix).orders
    proxy: TcpProxy = proxy_factory(aof_redis.port, name="redis")
    group = group_factory(FLASHSALE_REDIS_URL=proxy.url)  # the workers reach Redis only through the proxy
    await group.start("a", "b")
    await group.wait_split(orders)
    sales = make_sales(PARTITIONS, allotment=2000)
    hold = asyncio.Event()
    steps: list[dict[str, Any]] = []

    async def progress_after(name: str, since: float, **detail: Any) -> None:
        before = await decided(rc, sales)
        traffic.release(300)  # something to decide after the fault, whatever the timing
        resumed_s = await resumed_after(rc, sales, before, since)
        steps.append({"step": name, "resumed_ms": int(since * 1000), "resume_to_progress_s": round(resumed_s, 2),
                      **detail})

    async with (Traffic(broker.bootstrap, topic_prefix, sales, ATTEMPTS, rate=RATE, bad=LIGHT_BAD, hold=hold,
                        hold_fraction=0.1, seed=21) as traffic,
                InvariantSampler(rc, sales) as sampler):
        await traffic.open_sales()
        sending = asyncio.create_task(traffic.run())

        # 1. SIGTERM a worker whose batches hang on a stalled Redis; Redis comes back while it stops.
        await traffic.reached(0.1)
        async with stalled(aof_redis) as t1:
            await asyncio.sleep(STALL_S / 2)  # every worker is now mid-batch, its Redis call hung
            unready = await readyz_codes(group)
            stopping = asyncio.create_task(group.terminate("a"))
            await asyncio.sleep(STALL_S / 2)
        exit_s = await stopping
        await progress_after("SIGTERM a while Redis stalls", t1["resumed"], sigterm_exit_s=round(exit_s, 2),
                             readyz_during_stall=unready)
        assert all(code == 503 for code in unready.values()), f"/readyz while Redis is stalled: {unready}"
        await group.start("a")  # joins mid-burst: a rebalance

        # 2.-4. The window after a Redis fault: the workers' connections were blackholed, the fault
        # is healed, and each agent notices its dead connection in its own time. A worker SIGTERMed
        # now has agents that finished the same records and agents that did not.
        for i, (fraction, victim) in enumerate(((0.3, "b"), (0.5, "a"), (0.7, "b"))):
            await traffic.reached(fraction)
            proxy.blackhole()
            await asyncio.sleep(BLACKHOLE_S)
            healed = proxy.heal()
            await asyncio.sleep(TERM_AFTER_HEAL_S)
            exit_s = await group.terminate(victim)
            await progress_after(f"{i + 2}. blackhole healed, SIGTERM {victim}", healed,
                                 sigterm_exit_s=round(exit_s, 2))
            await group.start(victim)  # joins mid-burst: a rebalance

        # 5. A worker joins and another leaves mid-burst with Redis healthy.
        await traffic.reached(0.8)
        await group.start("c")
        exit_s = await group.terminate("a")
        steps.append({"step": "c joins, then SIGTERM a", "sigterm_exit_s": round(exit_s, 2)})
        await group.wait_split(orders, settle=0.5)

        hold.set()
        await sending
        out = await verify(broker.bootstrap, aof_redis.url, topic_prefix, traffic, sales, rc, group,
                           tag="fresh-commit-on-stop")
    sampled = sampler.check()

    for s in steps:
        if "resumed_ms" in s:
            first = first_decision_after(out.decisions, set(range(PARTITIONS)), s["resumed_ms"])
            assert first is not None, f"no decision after step {s['step']!r}"
            s["resume_to_first_decision_s"] = round((first - s.pop("resumed_ms")) / 1000, 2)
    record(artifacts_dir, {"test": "sigterm_rebalance_redis_stall", "steps": steps, **sampled, **out.summary})
