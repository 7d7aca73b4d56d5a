"""The bench's one stack: Tansu, redis-server and the processes under test on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flashsale.embedded import ManagedProcess, StackError, free_port, python_module, start_redis, start_tansu
from kernel.kafka_admin import ensure_topics


def wait_ready(url: str, proc: ManagedProcess, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log's tail, if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StackError(f"{proc.name} exited: {proc.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise StackError(f"{proc.name} not ready at {url} in {timeout:.0f}s; log {proc.log_path}")


@dataclass
class BenchStack:
    root: Path
    kafka_port: int = 0
    redis_port: int = 0
    prefix: str = "bench."
    partitions: int = 4
    procs: dict[str, ManagedProcess] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "FLASHSALE_BROKER_URL": f"kafka://{self.bootstrap}",
            "FLASHSALE_REDIS_URL": self.redis_url,
            "FLASHSALE_TOPIC_PREFIX": self.prefix,
            "FLASHSALE_PARTITIONS": str(self.partitions),
            "FLASHSALE_APP_ID": f"bench-{self.prefix.rstrip('.')}",
            "FLASHSALE_LOG_LEVEL": "warning",
            **extra,
        }

    def start_infra(self) -> None:
        self.kafka_port, self.redis_port = free_port(), free_port()
        self.procs["broker"] = start_tansu(self.kafka_port, self.root)
        self.procs["redis"] = start_redis(self.redis_port, self.root / "redis", self.root)

    def new_prefix(self, name: str, partitions: int = 4) -> str:
        """A fresh set of topics (``partitions`` each) for the next measurement; later processes use them."""
        self.prefix = f"{name}{int(time.time() * 1000) % 10_000_000}."
        self.partitions = partitions
        asyncio.run(ensure_topics(self.bootstrap, self.prefix, self.partitions))
        return self.prefix

    def start(
        self,
        name: str,
        module: str,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        port_var: str = "",
        ready_path: str = "/readyz",
        timeout: float = 60,
    ) -> int:
        """``python -m module`` on the stack; with ``port_var`` it gets a free port in that variable and,
        unless ``ready_path`` is empty, is waited for until that page answers 200. Returns the port (or 0)."""
        port = free_port() if port_var else 0
        proc = python_module(
            module,
            list(args),
            self.root,
            name,
            env=self.env(**({port_var: str(port)} if port_var else {}), **(env or {})),
        )
        self.procs[name] = proc
        if port and ready_path:
            wait_ready(f"http://127.0.0.1:{port}{ready_path}", proc, timeout)
        return port

    def start_worker(
        self,
        name: str = "worker",
        module: str = "streams",
        env: dict[str, str] | None = None,
        ready_path: str = "/readyz",
        timeout: float = 60,
    ) -> int:
        """A stream worker (or a reference consumer) with its operations port; returns that port."""
        return self.start(
            name, module, env=env, port_var="FLASHSALE_WORKER_PORT", ready_path=ready_path, timeout=timeout
        )

    def pids(self, *names: str) -> dict[str, int]:
        """PIDs by name, for :class:`bench.stats.ProcSampler` (every process when no name is given)."""
        return {n: self.procs[n].pid for n in names or self.procs}

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop(timeout=15)

    def close(self) -> None:
        for name in reversed([n for n in self.procs if n not in ("broker", "redis")]):
            self.stop(name)
        self.stop("redis")
        self.stop("broker")


def make_stack(root: str | None = None) -> BenchStack:
    path = Path(root) if root else Path(tempfile.mkdtemp(prefix="flashsale-bench-"))
    stack = BenchStack(path)
    stack.start_infra()
    return stack
