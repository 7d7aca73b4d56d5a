"""``--processes N``: N gateway processes on one port (SO_REUSEPORT), started and stopped by one parent."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from kernel.process import die_with_parent
from producers.gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

EARLY_EXIT_S: Final = 5.0  # a child that dies this soon after starting is misconfigured: restarting cannot help
RESTART_DELAY_S: Final = 1.0
POLL_S: Final = 0.2


@dataclass
class Child:
    index: int
    popen: subprocess.Popen[bytes]
    started: float
    restarted: bool = False  # a restart that dies early is restarted again, not taken for bad settings

    @property
    def pid(self) -> int:
        return self.popen.pid


def child_env(settings: GatewaySettings, environ: Mapping[str, str]) -> dict[str, str]:
    """The children's environment: the parent's, with the resolved bind address, one process each, and
    SO_REUSEPORT so they share the port (the kernel spreads new connections over them)."""
    return {
        **environ,
        "FLASHSALE_GATEWAY_HOST": settings.host,
        "FLASHSALE_GATEWAY_PORT": str(settings.port),
        "FLASHSALE_LOG_LEVEL": settings.log_level,
        "FLASHSALE_GATEWAY_PROCESSES": "1",
        "FLASHSALE_GATEWAY_REUSE_PORT": "true",
    }


class Supervisor:
    """Starts ``settings.processes`` children, restarts one that dies (unless it dies at once: then all
    stop and the exit code is 1), and on SIGTERM/SIGINT sends SIGTERM to each child by its PID, waits for
    them (in-flight requests finish), then SIGKILLs what is left after the shutdown grace."""

    def __init__(
        self, settings: GatewaySettings, environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None
    ) -> None:
        if settings.port == 0:
            raise ValueError("--processes needs a fixed port: each process binds it (FLASHSALE_GATEWAY_PORT)")
        self.settings = settings
        self._env = child_env(settings, os.environ if environ is None else environ)
        self._argv = list(argv) if argv is not None else [sys.executable, "-m", "producers.gateway"]
        self._stop = threading.Event()
        self.children: list[Child] = []

    def _spawn(self, index: int, restarted: bool = False) -> Child:
        # PR_SET_PDEATHSIG: a SIGKILLed supervisor takes its children along (else they keep serving the
        # port beside the next supervisor's, with SO_REUSEPORT, on old code and settings).
        popen = subprocess.Popen(self._argv, env=self._env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
        logger.info("gateway process %d started, pid %d", index, popen.pid)
        return Child(index, popen, time.monotonic(), restarted)

    def request_stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        self._stop.set()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        code = 0
        try:
            for i in range(self.settings.processes):  # one by one: a failed start still stops the others
                self.children.append(self._spawn(i))
            while not self._stop.wait(POLL_S):
                failed = self._check_children()
                if failed:
                    code = 1
                    break
        finally:
            self._stop_children()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _check_children(self) -> bool:
        """Restart children that exited; True when one exited right after starting (stop everything)."""
        for i, child in enumerate(self.children):
            rc = child.popen.poll()
            if rc is None:
                continue
            if not child.restarted and time.monotonic() - child.started < EARLY_EXIT_S:
                logger.error(
                    "gateway process %d (pid %d) exited with %d right after starting; stopping all",
                    child.index,
                    child.pid,
                    rc,
                )
                return True
            logger.warning("gateway process %d (pid %d) exited with %d; restarting it", child.index, child.pid, rc)
            if self._stop.wait(RESTART_DELAY_S):
                return False
            self.children[i] = self._spawn(child.index, restarted=True)
        return False

    def _stop_children(self) -> None:
        for child in self.children:
            if child.popen.poll() is None:
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.settings.shutdown_timeout_s + 5.0
        for child in self.children:
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("gateway process %d (pid %d) did not stop in time; killing it", child.index, child.pid)
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.popen.wait()
        logger.info(
            "gateway processes stopped: %s", ", ".join(f"pid {c.pid} exit {c.popen.returncode}" for c in self.children)
        )
