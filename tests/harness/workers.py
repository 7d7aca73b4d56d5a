"""Worker processes (``python -m streams``) started by PID on the test's broker and Redis, and their /metrics."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flashsale.embedded import ManagedProcess, free_port, python_module
from tests.harness.broker import Broker
from tests.harness.redis_server import RedisServer

# Group timing of every worker the suite starts. Tansu answers a JoinGroup after about half the
# session timeout (measured on this box: 6 s -> 3.0 s, 3 s -> 2.0 s, 2 s -> 1.0 s) and evicts a
# SIGKILLed member after the full timeout, so both a worker's start-up and every takeover scale
# with it. 2 s with a heartbeat every 0.5 s leaves four heartbeats per session on a loaded box.
SESSION_TIMEOUT_S = 2.0
HEARTBEAT_S = 0.5


def group_timing_env() -> dict[str, str]:
    """The FLASHSALE_* variables of that timing, for processes that start workers themselves (``flashsale up``)."""
    return {"FLASHSALE_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S), "FLASHSALE_HEARTBEAT_S": str(HEARTBEAT_S)}


@pytest.fixture
def worker_env(broker: Broker, redis_server: RedisServer, topic_prefix: str) -> dict[str, str]:
    """FLASHSALE_* variables pointing a worker/gateway/dashboard at the test broker and Redis."""
    return {
        "FLASHSALE_BROKER_URL": broker.url,
        "FLASHSALE_REDIS_URL": redis_server.url,
        "FLASHSALE_TOPIC_PREFIX": topic_prefix,
        "FLASHSALE_APP_ID": f"app-{topic_prefix.rstrip('.')}",
        "FLASHSALE_PARTITIONS": "4",
        "FLASHSALE_WORKER_PORT": str(free_port()),
        **group_timing_env(),
    }


@dataclass
class WorkerHandle:
    process: ManagedProcess
    port: int
    env: dict[str, str]


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker", timeout: float = 40.0) -> WorkerHandle:
    """Start ``python -m streams`` with ``env`` and wait until /readyz answers 200 (group joined)."""
    port = int(env["FLASHSALE_WORKER_PORT"])
    proc = python_module("streams", [], log_dir, name, env={**os.environ, **env})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            proc.stop()
            raise RuntimeError(f"worker exited with {proc.popen.returncode}: {proc.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return WorkerHandle(proc, port, env)
        except OSError:
            pass
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"worker not ready in {timeout}s: {proc.log_path.read_text()[-3000:]}")


@pytest.fixture
def worker(worker_env: dict[str, str], topics: dict[str, str], tmp_path: Path) -> Iterator[WorkerHandle]:
    """One running worker process on the test's topics; stopped by PID afterwards."""
    handle = start_worker(worker_env, tmp_path)
    yield handle
    handle.process.stop()


# --- a worker's /metrics ---------------------------------------------------------------------------

Samples = list[tuple[str, dict[str, str], float]]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return str(resp.read().decode())


async def scrape(port: int) -> Samples:
    text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    return [(s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


async def assigned_partitions(port: int, topic: str) -> set[int]:
    """Partitions of ``topic`` the worker holds now: the consumer-lag gauge has one series per
    assigned partition and drops the series of revoked ones. Its topic label may be the full
    topic name or the logical one ("orders"); both are accepted."""
    logical = topic.rsplit(".", 1)[-1]
    return {int(lab["partition"]) for n, lab, _ in await scrape(port)
            if n == "flashsale_consumer_lag" and lab.get("topic") in (topic, logical)}


async def wait_stable_assignment(workers: Sequence[WorkerHandle], topic: str, partitions: int,
                                 limit_s: float = 90.0, settle: float = 2.5) -> list[set[int]]:
    """Wait until the workers' partitions are disjoint, cover the topic, none is empty, and stay so
    for ``settle`` seconds (longer than the 2 s lag timer that refreshes the gauge, so at least one
    refresh falls inside the window; as WorkerGroup.wait_split)."""
    deadline = time.monotonic() + limit_s
    stable_since: float | None = None
    last: list[set[int]] = []
    while time.monotonic() < deadline:
        now = [await assigned_partitions(w.port, topic) for w in workers]
        ok = (all(now) and sum(len(p) for p in now) == partitions
              and set().union(*now) == set(range(partitions)))
        if ok and now == last:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= settle:
                return now
        else:
            stable_since = time.monotonic() if ok else None
        last = now
        await asyncio.sleep(0.5)
    raise AssertionError(f"no stable partition split within {limit_s}s; last seen {last}")
