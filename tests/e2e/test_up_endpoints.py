"""Commands with no endpoint flags talk to the stack ``flashsale up`` started (issues 13 and 15): up writes
.flashsale/endpoints.env, and ``flashsale simulate`` and ``flashsale audit`` run in the same directory read it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from flashsale.embedded import free_port
from kernel.settings import parse_env_file
from schemas import keys as rk
from tests.harness.workers import group_timing_env

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}


async def sales_in(redis_url: str) -> set[bytes]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return set(await client.smembers(rk.sales_index()))
    finally:
        await client.aclose()


def test_simulate_and_audit_without_flags_use_the_up_stack(tmp_path: Path) -> None:
    ports = [f"--{n}-port={free_port()}" for n in ("broker", "redis", "gateway", "dashboard", "worker")]
    log = tmp_path / "up.out"
    with open(log, "wb") as out:
        # no endpoint variables (they must come from the env file), only the suite's group timing
        up = subprocess.Popen([sys.executable, "-m", "flashsale", "up", "--no-simulate", *ports], cwd=tmp_path,
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env={**clean_env(), **group_timing_env()}, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything" not in log.read_text():
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        endpoints = parse_env_file((tmp_path / ".flashsale" / "endpoints.env").read_text())
        redis_url = endpoints["FLASHSALE_REDIS_URL"]
        assert redis_url != "redis://127.0.0.1:6379/0"
        assert asyncio.run(sales_in(redis_url)) == set()
        sim = subprocess.run([sys.executable, "-m", "flashsale", "simulate", "--duration", "5", "--viewers", "20",
                              "--sales", "1", "--first-sale-at", "1", "--sale-window", "3", "--allotment", "5",
                              "--afap", "--quiet", "--no-feedback"], cwd=tmp_path, env=clean_env(),
                             capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert sim.returncode == 0, sim.stdout + sim.stderr
        deadline = time.monotonic() + 60
        while not asyncio.run(sales_in(redis_url)):  # the up stack's worker applied the simulated sale
            assert time.monotonic() < deadline, "the simulated sale never reached the up stack's Redis"
            time.sleep(0.5)
        audit = subprocess.run([sys.executable, "-m", "flashsale", "audit"], cwd=tmp_path, env=clean_env(),
                               capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert redis_url.removesuffix("/0") in audit.stdout and "verdict: OK" in audit.stdout, audit.stdout
    finally:
        if up.poll() is None:
            os.kill(up.pid, signal.SIGTERM)
        up.wait(90)
