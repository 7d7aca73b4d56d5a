"""A throwaway embedded stack for benchmarks: Tansu, redis-server and workers on free ports."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from flashsale.embedded import ManagedProcess, StackError, free_port, python_module, start_redis, start_tansu
from kernel.kafka_admin import ensure_topics


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

    def new_prefix(self, name: str) -> str:
        self.prefix = f"{name}{int(time.time() * 1000) % 10_000_000}."
        asyncio.run(ensure_topics(self.bootstrap, self.prefix, self.partitions))
        return self.prefix

    def start_worker(self, name: str = "worker", module: str = "streams", env: dict[str, str] | None = None,
                     ready_path: str = "/readyz", timeout: float = 60) -> ManagedProcess:
        port = free_port()
        proc = python_module(module, [], self.root, name,
                             env=self.env(FLASHSALE_WORKER_PORT=str(port), **(env or {})))
        self.procs[name] = proc
        if ready_path:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not proc.alive():
                    raise StackError(f"{name} exited: {proc.log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=1) as r:
                        if r.status == 200:
                            return proc
                except OSError:
                    time.sleep(0.2)
            raise StackError(f"{name} not ready in {timeout}s; log {proc.log_path}")
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop()

    def close(self) -> None:
        for name in [n for n in self.procs if n not in ("broker", "redis")]:
            self.stop(name)
        self.stop("redis")
        self.stop("broker")


def make_stack(root: str | None = None) -> BenchStack:
    path = Path(root) if root else Path(tempfile.mkdtemp(prefix="flashsale-bench-"))
    stack = BenchStack(path)
    stack.start_infra()
    return stack
