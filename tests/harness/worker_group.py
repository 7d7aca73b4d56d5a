"""A worker group (one FLASHSALE_APP_ID) whose members are started, SIGKILLed, SIGTERMed and restarted by PID."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flashsale.embedded import ManagedProcess, free_port
from tests.harness.aof_redis import AofRedis
from tests.harness.broker import Broker
from tests.harness.workers import SESSION_TIMEOUT_S, group_timing_env

__all__ = ["PARTITIONS", "SESSION_TIMEOUT_S", "SWEEP_INTERVAL_S", "Worker", "WorkerGroup", "counters_available",
           "fault_env", "group_factory"]

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
# SESSION_TIMEOUT_S (re-exported from tests.harness.workers, as the integration fixtures use it): Tansu
# evicts a SIGKILLed member after it
SWEEP_INTERVAL_S = 0.5


def counters_available() -> bool:
    """The suite runs and checks the counters agent when it exists (FAULTS_AGENTS=stock opts out)."""
    if os.environ.get("FAULTS_AGENTS", "stock,counters") == "stock":
        return False
    return importlib.util.find_spec("streams.counters.agent") is not None


@dataclass
class Worker:
    name: str
    port: int
    process: ManagedProcess
    started_at: float  # time.time() at spawn

    @property
    def pid(self) -> int:
        return self.process.pid


def _get_text(url: str, timeout: float = 2.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def _get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


@dataclass
class WorkerGroup:
    """Workers of one consumer group (same FLASHSALE_APP_ID), each on its own web port."""

    env: dict[str, str]
    log_dir: Path
    workers: dict[str, Worker] = field(default_factory=dict)
    spawned: list[ManagedProcess] = field(default_factory=list)
    _runs: int = 0

    def spawn(self, name: str) -> Worker:
        assert name not in self.workers, f"{name} is already running"
        self._runs += 1
        port = free_port()
        env = {**os.environ, **self.env, "FLASHSALE_WORKER_PORT": str(port),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}-{self._runs}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed by ManagedProcess.stop()
        # Faust keeps a data dir in its working directory: run each worker in the test's tmp dir.
        popen = subprocess.Popen([sys.executable, "-m", "streams"], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, cwd=self.log_dir, start_new_session=True)
        proc = ManagedProcess(f"{name}-{self._runs}", popen, log_path, log)
        self.spawned.append(proc)
        w = Worker(name, port, proc, time.time())
        self.workers[name] = w
        return w

    async def start(self, *names: str, timeout: float = 60.0) -> list[Worker]:
        """Spawn workers (concurrently) and wait until each answers /readyz 200."""
        ws = [self.spawn(n) for n in names]
        await asyncio.gather(*(self.wait_ready(w, timeout) for w in ws))
        return ws

    async def wait_ready(self, w: Worker, timeout: float = 60.0) -> float:
        """Seconds from now until /readyz answers 200 (group joined, Redis answering)."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not w.process.alive():
                raise RuntimeError(f"{w.name} exited with {w.process.popen.returncode}: "
                                   f"{w.process.log_path.read_text()[-3000:]}")
            status, _ = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{w.port}/readyz", 1.0)
            if status == 200:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{w.name} not ready in {timeout}s: {w.process.log_path.read_text()[-3000:]}")

    def kill(self, name: str) -> float:
        """SIGKILL one worker by PID; returns the wall-clock time (epoch s) of the kill."""
        w = self.workers.pop(name)
        at = time.time()
        os.kill(w.pid, signal.SIGKILL)
        w.process.popen.wait(10)
        w.process.stop()  # closes the log handle
        return at

    async def terminate(self, name: str, timeout: float = 30.0) -> float:
        """SIGTERM one worker (graceful: it leaves the group) and wait; returns the seconds it took."""
        w = self.workers.pop(name)
        started = time.monotonic()
        await asyncio.to_thread(w.process.stop, timeout, signal.SIGTERM)
        return time.monotonic() - started

    async def readyz(self, name: str) -> tuple[int, Any]:
        return await asyncio.to_thread(_get_json, f"http://127.0.0.1:{self.workers[name].port}/readyz")

    async def orders_partitions(self, name: str, orders_topic: str) -> set[int]:
        """Partitions of the orders topic the worker holds now: the consumer-lag gauge has one series
        per assigned partition (refreshed every 2 s) and drops revoked ones."""
        text = await asyncio.to_thread(_get_text, f"http://127.0.0.1:{self.workers[name].port}/metrics")
        logical = orders_topic.rsplit(".", 1)[-1]
        return {int(s.labels["partition"]) for fam in text_string_to_metric_families(text) for s in fam.samples
                if s.name == "flashsale_consumer_lag" and s.labels.get("topic") in (orders_topic, logical)}

    async def wait_split(self, orders_topic: str, timeout: float = 60.0, settle: float = 2.5) -> dict[str, set[int]]:
        """Wait until the running workers hold disjoint, non-empty shares covering every orders
        partition, unchanged for ``settle`` seconds (the group is stable)."""
        deadline = time.monotonic() + timeout
        last: dict[str, set[int]] = {}
        since: float | None = None
        while time.monotonic() < deadline:
            now = {n: await self.orders_partitions(n, orders_topic) for n in self.workers}
            shares = list(now.values())
            ok = (all(shares) and sum(len(s) for s in shares) == PARTITIONS
                  and set().union(*shares) == set(range(PARTITIONS)))
            if ok and now == last:
                since = since or time.monotonic()
                if time.monotonic() - since >= settle:
                    return now
            else:
                since = time.monotonic() if ok else None
            last = now
            await asyncio.sleep(0.25)
        raise AssertionError(f"no stable split of the orders partitions within {timeout}s: {last}")

    def logs(self) -> list[Path]:
        return [p.log_path for p in self.spawned]

    def stop_all(self) -> None:
        for w in list(self.workers.values()):
            w.process.stop(timeout=15)
        self.workers.clear()
        for p in self.spawned:
            p.stop(timeout=5)


def fault_env(broker: Broker, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    agents = "stock,counters" if counters_available() else "stock"
    return {
        "FLASHSALE_BROKER_URL": broker.url,
        "FLASHSALE_REDIS_URL": redis_url,
        "FLASHSALE_TOPIC_PREFIX": prefix,
        "FLASHSALE_APP_ID": f"app-{prefix.rstrip('.')}",
        "FLASHSALE_PARTITIONS": str(PARTITIONS),
        **group_timing_env(),
        "FLASHSALE_SWEEP_INTERVAL_S": str(SWEEP_INTERVAL_S),
        "FLASHSALE_AGENTS": agents,
        "FLASHSALE_LOG_LEVEL": "info",
        **extra,
    }


@pytest.fixture
def group_factory(broker: Broker, aof_redis: AofRedis, topic_prefix: str, topics: dict[str, str],
                  tmp_path: Path) -> Iterator[Any]:
    """``make(**extra_env) -> WorkerGroup`` on the test's topics and AOF Redis; every worker it
    started is stopped by PID at teardown."""
    groups: list[WorkerGroup] = []

    def make(**extra: str) -> WorkerGroup:
        g = WorkerGroup(fault_env(broker, aof_redis.url, topic_prefix, **extra), tmp_path / "logs")
        groups.append(g)
        return g

    yield make
    for g in groups:
        g.stop_all()
