"""``flashsale up`` never leaves a process behind (issue 15): whatever its stdout is (a pipe whose reader died,
a file, closed) and whichever signal stops it (SIGINT to the whole process group as Ctrl-C sends it,
SIGTERM, SIGHUP), every process it started is gone afterwards. Checked by PID, from the process tree
recorded before the signal. Also: it writes its endpoints to DATA_DIR/endpoints.env and removes the file
when it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from flashsale.embedded import free_port
from kernel.settings import parse_env_file
from tests.harness.workers import group_timing_env

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
READY = "Ctrl-C stops everything"
START_S = 120.0  # bounds, not assertions: a loaded box starts the stack slowly
STOP_S = 90.0


def up_command(data: Path) -> str:
    ports = " ".join(f"--{name}-port {free_port()}" for name in ("broker", "redis", "gateway", "dashboard", "worker"))
    return f"exec {sys.executable} -m flashsale up --no-simulate --data-dir {data} {ports}"


def wait_ready(log: Path, shell: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_S
    while READY not in (log.read_text(errors="replace") if log.exists() else ""):
        assert shell.poll() is None, f"flashsale up exited early: {log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, f"not ready in {START_S:.0f}s: {log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.3)


def up_process(shell: subprocess.Popen[bytes]) -> psutil.Process:
    """The ``flashsale up`` python process in the shell's tree."""
    for proc in [psutil.Process(shell.pid), *psutil.Process(shell.pid).children(recursive=True)]:
        try:
            if "flashsale" in proc.cmdline() and "up" in proc.cmdline():
                return proc
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("no flashsale up process found")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def started() -> Iterator[list[int]]:
    """PIDs to clean up if the test fails (killed by PID, never by name)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# (how stdout is wired, the signal, whether it goes to the whole process group as a terminal's Ctrl-C does)
CASES = [
    pytest.param("pipe", signal.SIGINT, id="piped-through-tee-killed-by-ctrl-c"),
    pytest.param("file", signal.SIGTERM, id="redirected-to-a-file-sigterm"),
    pytest.param("closed", signal.SIGHUP, id="stdout-closed-sighup"),
]


@pytest.mark.parametrize(("stdout", "sig"), CASES)
def test_up_stops_every_child_whatever_its_stdout(tmp_path: Path, started: list[int], stdout: str,
                                                  sig: signal.Signals) -> None:
    data = tmp_path / "stack"
    log = tmp_path / "run.log"
    cmd = up_command(data)
    if stdout == "pipe":  # `make run 2>&1 | tee run.log`
        script = f"{cmd.removeprefix('exec ')} 2>&1 | tee {log}"
        ready_log = log
    elif stdout == "file":
        script = f"{cmd} > {log} 2>&1"
        ready_log = log
    else:  # stdout and stderr closed: only the up's own log file says anything
        script = f"{cmd} >&- 2>&-"
        ready_log = data / "logs" / "up.log"
    # the suite's group timing: the worker joins in about 1 s instead of the default's 4 s
    shell = subprocess.Popen(["/bin/sh", "-c", script], cwd=ROOT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **group_timing_env()},
                             start_new_session=True)  # its own process group, like a terminal's job
    started.append(shell.pid)
    try:
        wait_ready(ready_log, shell)
        up = up_process(shell)
        children = up.children(recursive=True)
        started.extend(p.pid for p in children)
        names = sorted({p.name() for p in children})
        assert len(children) >= 5, names  # broker, redis, worker, gateway, dashboard
        endpoints = parse_env_file((data / "endpoints.env").read_text())
        assert endpoints["FLASHSALE_BROKER_URL"].startswith("kafka://127.0.0.1:")
        assert endpoints["FLASHSALE_REDIS_URL"].startswith("redis://127.0.0.1:")

        if stdout == "pipe":
            # The same Ctrl-C kills tee: its end of the pipe is gone before up writes "stopping"
            tee = [p for p in psutil.Process(shell.pid).children() if p.name() == "tee"]
            assert tee, "no tee in the pipeline"
            tee[0].kill()
            tee[0].wait(10)
            os.killpg(shell.pid, sig)
        else:
            os.kill(up.pid, sig)
        up.wait(STOP_S)
    finally:
        try:
            shell.wait(STOP_S)
        except subprocess.TimeoutExpired:
            pass
    left = [(p.pid, p.name()) for p in children if alive(p.pid)]
    assert not left, f"processes left behind after {sig.name}: {left}"
    assert not (data / "endpoints.env").exists(), "endpoints.env of a stopped stack was left behind"
    assert "stopped" in (data / "logs" / "up.log").read_text()
