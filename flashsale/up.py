"""``flashsale up``: the embedded stack on one machine, with a simulated live sale."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import redis

from consumers.access import Signer
from consumers.dashboard.links import link
from consumers.dashboard.settings import get_settings as dashboard_settings
from flashsale.embedded import (
    ManagedProcess,
    StackError,
    free_port,
    python_module,
    start_redis,
    start_tansu,
    stop_in_stages,
)
from flashsale.narrate import Narrator, read_sales
from kernel.kafka_admin import ensure_topics
from kernel.settings import ConfigError
from producers.gateway.settings import get_settings as gateway_settings
from producers.simulation.settings import get_settings as simulator_settings
from streams.settings import get_settings as worker_settings

DASHBOARD_LINK_S = 12 * 3600


def _port(preferred: int) -> int:
    """The preferred port if nothing listens there, else a free one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


class Output:
    """Lines for the terminal that can never stop the shutdown: a write to a closed pipe (``| tee``
    killed by the same Ctrl-C), a hung-up terminal or a closed stdout is dropped, and every later line
    goes to the run's log file only. Every line also goes to that log file."""

    def __init__(self) -> None:
        self.dead = sys.stdout is None
        self.log: IO[str] | None = None

    def open_log(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def say(self, msg: str) -> None:
        line = f"[flashsale up] {msg}"
        if self.log is not None:
            try:
                self.log.write(line + "\n")
                self.log.flush()
            except (OSError, ValueError):
                pass
        if self.dead:
            return
        try:
            print(line, flush=True)
        except (OSError, ValueError):  # EPIPE, EIO, closed file
            self.dead = True
            try:  # the interpreter's final flush must not fail either
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError, AttributeError):
                pass

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


class Stopping(Exception):  # noqa: N818 - not an error: a signal asked us to stop
    """SIGINT, SIGTERM or SIGHUP arrived: stop starting things, stop what runs."""


def write_endpoints(path: Path, values: Mapping[str, str], comments: Mapping[str, str]) -> None:
    """The env file the other commands read (kernel.settings: FLASHSALE_ENV_FILE), written atomically."""
    lines = ["# Written by flashsale up; removed when it stops. Read by flashsale audit, simulate, topics,",
             "# the SDK and every FLASHSALE_* settings reader (variables set in the environment win).",
             f"# up pid {os.getpid()}"]
    lines += [f"# {name}: {value}" for name, value in comments.items()]
    lines += [f"{name}={value}" for name, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)


def remove_endpoints(path: Path) -> None:
    """Remove the env file if it is still this run's (another ``up`` may have replaced it)."""
    try:
        if f"# up pid {os.getpid()}\n" in path.read_text(encoding="utf-8"):
            path.unlink()
    except OSError:
        pass


def _wait_http(url: str, proc: ManagedProcess, timeout: float, stop: dict[str, int] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop:
            raise Stopping()
        if not proc.alive():
            tail = proc.log_path.read_text(errors="replace")[-2000:]
            raise StackError(f"{proc.name} exited with code {proc.popen.returncode}; last log lines:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise StackError(f"{proc.name} did not become ready at {url} within {timeout:.0f}s; see {proc.log_path}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="flashsale up",
        description="Start the embedded stack (Tansu broker, redis-server, workers, gateway, dashboard) on "
                    "loopback and run a simulated live sale. Prints every endpoint and writes them to "
                    "DATA_DIR/endpoints.env, which flashsale audit, simulate, topics and the SDK read by "
                    "default. Ctrl-C (or SIGTERM, SIGHUP) stops every process it started. A port that is "
                    "taken is replaced by a free one (the summary says which).")
    p.add_argument("--workers", type=int, default=1, help="stream workers in the consumer group (default 1)")
    p.add_argument("--data-dir", default=".flashsale",
                   help="logs, Redis files and endpoints.env (default .flashsale)")
    p.add_argument("--broker-port", type=int, default=9092, help="Kafka (Tansu) port (default 9092)")
    p.add_argument("--redis-port", type=int, default=6379, help="redis-server port (default 6379)")
    p.add_argument("--gateway-port", type=int, default=8080, help="HTTP ingest gateway port (default 8080)")
    p.add_argument("--dashboard-port", type=int, default=8090, help="dashboard and read API port (default 8090)")
    p.add_argument("--worker-port", type=int, default=6066,
                   help="first worker's /metrics and /readyz port; worker N uses this + N - 1 (default 6066)")
    p.add_argument("--no-simulate", action="store_true", help="start the stack only, publish nothing")
    p.add_argument("--simulate-args", default="--loop",
                   help="arguments for 'flashsale simulate' (default: --loop, a sale every few minutes)")
    p.add_argument("--progress-every", type=float, default=10.0,
                   help="seconds between progress lines of the live sales (default 10; 0 = no narration of "
                        "the sales in the terminal)")
    p.add_argument("--exit-after", type=float, default=0,
                   help="stop everything after this many seconds (default 0 = run until Ctrl-C); for smoke tests")
    return p.parse_args(argv)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
NARRATE_EVERY_S = 0.5  # how often the sales are read for the narration


def _narrate(out: Output, narrator: Narrator, reader: redis.Redis) -> None:
    """Print what changed in the sales since the last look; a Redis hiccup only skips a look."""
    try:
        sales = read_sales(reader)
    except (redis.RedisError, OSError):
        return
    for line in narrator.observe(int(time.time() * 1000), sales):
        out.say(line)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.workers < 1:
        print("flashsale up: --workers must be >= 1", file=sys.stderr)
        return 2
    try:  # every process's settings, checked before anything starts (broker and Redis URLs are set below)
        settings = worker_settings(os.environ)
        gateway_settings(os.environ), simulator_settings(os.environ)
        dashboard = dashboard_settings(os.environ)
    except ConfigError as exc:
        print(f"flashsale up: {exc}", file=sys.stderr)
        return 2
    data = Path(args.data_dir).resolve()
    logs = data / "logs"
    endpoints_file = data / "endpoints.env"
    out = Output()
    procs: list[ManagedProcess] = []
    stop: dict[str, int] = {}
    failure = ""

    def on_signal(signum: int, _frame: object) -> None:
        # Only a flag: the start-up steps and the main loop check it, so a child is never started and
        # left unrecorded, and nothing is printed from here (a print can fail or block).
        stop.setdefault("signal", signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        out.open_log(logs / "up.log")
        kport, rport = _port(args.broker_port), _port(args.redis_port)
        out.say(f"starting Tansu broker on 127.0.0.1:{kport} (memory only)")
        procs.append(start_tansu(kport, logs, die_with_parent=True))
        if stop:
            raise Stopping()
        out.say(f"starting redis-server on 127.0.0.1:{rport}")
        procs.append(start_redis(rport, data / "redis", logs, die_with_parent=True))
        if stop:
            raise Stopping()
        # The processes use the embedded broker and Redis, whatever FLASHSALE_BROKER_URL / _REDIS_URL say.
        broker_url, redis_url = f"kafka://127.0.0.1:{kport}", f"redis://127.0.0.1:{rport}/0"
        env = {**os.environ, "FLASHSALE_BROKER_URL": broker_url, "FLASHSALE_REDIS_URL": redis_url,
               "FLASHSALE_ENV_FILE": os.devnull}  # the children take everything from their environment
        asyncio.run(ensure_topics(f"127.0.0.1:{kport}", settings.topic_prefix, settings.partitions))
        started = time.monotonic()
        workers: list[tuple[ManagedProcess, int]] = []
        for i in range(args.workers):
            if stop:
                raise Stopping()
            wport = _port(args.worker_port + i)
            out.say(f"starting worker {i + 1}/{args.workers} (metrics on 127.0.0.1:{wport})")
            proc = python_module("streams", [], logs, f"worker-{i + 1}", die_with_parent=True,
                                 env={**env, "FLASHSALE_WORKER_PORT": str(wport)})
            procs.append(proc)
            workers.append((proc, wport))
        if stop:
            raise Stopping()
        gport, dport = _port(args.gateway_port), _port(args.dashboard_port)
        out.say(f"starting gateway on 127.0.0.1:{gport}")
        gateway = python_module("producers.gateway", [], logs, "gateway", die_with_parent=True,
                                env={**env, "FLASHSALE_GATEWAY_PORT": str(gport)})
        procs.append(gateway)
        if stop:
            raise Stopping()
        out.say(f"starting dashboard on 127.0.0.1:{dport}")
        # The dashboard is never open: it runs with the configured key, else one made here for this run,
        # and the link printed below is signed with it.
        key = dashboard.key.get_secret_value() if dashboard.key is not None else secrets.token_urlsafe(32)
        dashboard_proc = python_module("consumers.dashboard", [], logs, "dashboard", die_with_parent=True,
                                       env={**env, "FLASHSALE_DASHBOARD_PORT": str(dport),
                                            "FLASHSALE_DASHBOARD_KEY": key})
        procs.append(dashboard_proc)
        for proc, wport in workers:
            _wait_http(f"http://127.0.0.1:{wport}/readyz", proc, 60, stop)
        out.say(f"workers ready in {time.monotonic() - started:.1f}s")
        _wait_http(f"http://127.0.0.1:{gport}/healthz", gateway, 30, stop)
        _wait_http(f"http://127.0.0.1:{dport}/healthz", dashboard_proc, 30, stop)
        metrics = {"worker " + str(i + 1): f"http://127.0.0.1:{wport}/metrics" for i, (_, wport) in enumerate(workers)}
        metrics |= {"gateway": f"http://127.0.0.1:{gport}/metrics", "dashboard": f"http://127.0.0.1:{dport}/metrics"}
        write_endpoints(endpoints_file, {"FLASHSALE_BROKER_URL": broker_url, "FLASHSALE_REDIS_URL": redis_url,
                                         "FLASHSALE_TOPIC_PREFIX": settings.topic_prefix},
                        {"gateway": f"http://127.0.0.1:{gport}", "dashboard": f"http://127.0.0.1:{dport}",
                         **{f"metrics {k}": v for k, v in metrics.items()}})
        sim = None
        if not args.no_simulate and not stop:
            out.say("starting the simulated live sale (flashsale simulate " + args.simulate_args + ")")
            sim = python_module("producers.simulator", args.simulate_args.split(), logs, "simulator", env=env,
                                die_with_parent=True)
            procs.append(sim)
        out.say("")
        base = f"http://127.0.0.1:{dport}"
        signer = Signer(key.encode())
        moved = [f"{what} {want}->{got}" for what, want, got in (
            ("broker", args.broker_port, kport), ("redis", args.redis_port, rport),
            ("gateway", args.gateway_port, gport), ("dashboard", args.dashboard_port, dport)) if want != got]
        out.say(f"broker:     {broker_url}")
        out.say(f"redis:      {redis_url}")
        if moved:
            out.say(f"            (ports taken, moved: {', '.join(moved)})")
        out.say(f"dashboard:  {link(base, signer, None, DASHBOARD_LINK_S)}")
        if sim is not None:  # the simulator's rooms are room-1, room-2, ...
            out.say(f"room-1:     {link(base, signer, 'room-1', DASHBOARD_LINK_S)}")
        out.say(f"            (links valid {DASHBOARD_LINK_S // 3600} h; more: flashsale dashboard-link --room ROOM "
                f"with FLASHSALE_DASHBOARD_KEY set)")
        out.say(f"gateway:    http://127.0.0.1:{gport}/v1/events")
        for name, url in metrics.items():
            out.say(f"metrics:    {url} ({name})")
        out.say(f"endpoints:  {endpoints_file} (flashsale audit, simulate, topics and the SDK read it)")
        out.say(f"logs:       {logs}")
        out.say("Ctrl-C stops everything")
        deadline = time.monotonic() + args.exit_after if args.exit_after else None
        sim_reported = False
        narrator = Narrator(dashboard.currency, args.progress_every) if args.progress_every > 0 else None
        with redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1) as reader:
            next_look = 0.0
            while not stop and (deadline is None or time.monotonic() < deadline):
                if narrator is not None and time.monotonic() >= next_look:
                    next_look = time.monotonic() + NARRATE_EVERY_S
                    _narrate(out, narrator, reader)
                for proc in procs:
                    if proc is sim:
                        if not proc.alive() and not sim_reported:
                            out.say(f"simulation finished (exit {proc.popen.returncode}); the stack keeps running")
                            sim_reported = True
                    elif not proc.alive():
                        raise StackError(f"{proc.name} exited with code {proc.popen.returncode}; see {proc.log_path}")
                time.sleep(0.2)
        return 0
    except Stopping:
        return 0
    except StackError as exc:
        failure = f"flashsale up: {exc}"
        return 1
    finally:
        # Children first, output after: nothing that writes to the terminal runs before every child
        # is stopped (a write to a dead pipe raised here and left them all running), and a second
        # Ctrl-C during the shutdown only sets the flag again.
        for sig in STOP_SIGNALS:
            signal.signal(sig, on_signal)
        remove_endpoints(endpoints_file)
        problems = stop_in_stages(_stages(procs), timeout=15)
        if procs:
            why = f" ({signal.Signals(stop['signal']).name})" if "signal" in stop else ""
            out.say(f"stopped {len(procs)} processes{why}")
            for problem in problems:
                out.say(problem)
        if failure:
            out.say(failure)
            _err(failure)
        out.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stages(procs: list[ManagedProcess]) -> list[list[ManagedProcess]]:
    """Clients before what they use: simulator, dashboard and gateway; then workers; then Redis and broker."""
    infra = [p for p in procs if p.name in ("tansu", "redis")]
    workers = [p for p in procs if p.name.startswith("worker-")]
    front = [p for p in procs if p not in infra and p not in workers]
    return [front, workers, [p for p in infra if p.name == "redis"], [p for p in infra if p.name == "tansu"]]


def _err(msg: str) -> None:
    try:
        print(msg, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass
