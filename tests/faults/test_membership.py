"""Planned membership changes mid-sale: a rolling SIGTERM restart, scaling 1 → 2 → 1 workers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas.topics import TopicNames
from tests.faults.checks import longest_pause, record
from tests.faults.scenario import verify
from tests.faults.traffic import BadMix, Traffic, make_sales
from tests.harness.aof_redis import AofRedis
from tests.harness.broker import Broker
from tests.harness.worker_group import PARTITIONS

pytestmark = pytest.mark.faults

ATTEMPTS = 14_000  # at 400/s: 35 s of sale, the hold keeps the last 10 % back until the five steps are done
ALLOTMENT = 1050  # sells out as the 1,500 of a 20,000-attempt sale did
LIGHT_BAD = BadMix(malformed=0.002, unknown_type=0.001, bad_version=0.001)


async def test_rolling_restart_and_scaling(broker: Broker, aof_redis: AofRedis, rc: aioredis.Redis,
                                           topic_prefix: str, group_factory: Any, artifacts_dir: Path) -> None:
    orders = TopicNames(topic_prefix).orders
    group = group_factory()
    await group.start("a", "b")
    await group.wait_split(orders)
    sales = make_sales(PARTITIONS, allotment=ALLOTMENT)
    hold = asyncio.Event()
    steps: list[dict[str, Any]] = []

    async def step(name: str, action: Any) -> None:
        t0_ms, t0 = int(time.time() * 1000), time.monotonic()
        detail = await action()
        split = await group.wait_split(orders, settle=1.0)
        steps.append({"step": name, "start_ms": t0_ms, "end_ms": int(time.time() * 1000),
                      "stable_after_s": round(time.monotonic() - t0, 2),
                      "split": {n: sorted(p) for n, p in split.items()}, **(detail or {})})

    async def term(name: str) -> dict[str, Any]:
        return {"sigterm_exit_s": round(await group.terminate(name), 2)}

    async def restart(name: str) -> dict[str, Any]:
        stopped = await group.terminate(name)
        t0 = time.monotonic()
        await group.start(name)
        return {"sigterm_exit_s": round(stopped, 2), "ready_s": round(time.monotonic() - t0, 2)}

    async def add(name: str) -> dict[str, Any]:
        t0 = time.monotonic()
        await group.start(name)
        return {"ready_s": round(time.monotonic() - t0, 2)}

    async with Traffic(broker.bootstrap, topic_prefix, sales, ATTEMPTS, rate=400, bad=LIGHT_BAD, hold=hold,
                       hold_fraction=0.1, seed=3) as traffic:
        await traffic.open_sales()
        sending = asyncio.create_task(traffic.run())
        await traffic.reached(0.1)
        await step("rolling restart a", lambda: restart("a"))
        await step("rolling restart b", lambda: restart("b"))
        await step("scale 2 → 1 (SIGTERM b)", lambda: term("b"))
        await step("scale 1 → 2 (start c)", lambda: add("c"))
        await step("scale 2 → 1 (SIGTERM c)", lambda: term("c"))
        hold.set()
        await sending
        assert set(group.workers) == {"a"}
        out = await verify(broker.bootstrap, aof_redis.url, topic_prefix, traffic, sales, rc, group)

    for s in steps:
        pause_ms = longest_pause(out.decisions, s.pop("start_ms"), s.pop("end_ms"))
        s["longest_decision_pause_s"] = round(pause_ms / 1000, 2)
    record(artifacts_dir, {"test": "rolling_restart_and_scaling", "steps": steps, **out.summary})
