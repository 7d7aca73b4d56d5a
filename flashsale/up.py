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
from pathlib import Path

from consumers.access import Signer
from consumers.dashboard.links import link
from consumers.dashboard.settings import get_settings as dashboard_settings
from flashsale.embedded import ManagedProcess, StackError, free_port, python_module, start_redis, start_tansu
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


def _say(msg: str) -> None:
    print(f"[flashsale up] {msg}", flush=True)


def _wait_http(url: str, proc: ManagedProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
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
                    "loopback and run a simulated live sale. Ctrl-C stops everything.")
    p.add_argument("--workers", type=int, default=1, help="stream workers in the consumer group (default 1)")
    p.add_argument("--data-dir", default=".flashsale", help="logs and Redis files (default .flashsale)")
    p.add_argument("--broker-port", type=int, default=9092)
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--gateway-port", type=int, default=8080)
    p.add_argument("--dashboard-port", type=int, default=8090)
    p.add_argument("--no-simulate", action="store_true", help="start the stack only, publish nothing")
    p.add_argument("--simulate-args", default="--loop",
                   help="arguments for 'flashsale simulate' (default: --loop, a sale every few minutes)")
    p.add_argument("--exit-after", type=float, default=0,
                   help="stop everything after this many seconds (0 = run until Ctrl-C); for smoke tests")
    return p.parse_args(argv)


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
    procs: list[ManagedProcess] = []
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        kport, rport = _port(args.broker_port), _port(args.redis_port)
        _say(f"starting Tansu broker on 127.0.0.1:{kport} (memory only)")
        procs.append(start_tansu(kport, logs))
        _say(f"starting redis-server on 127.0.0.1:{rport}")
        procs.append(start_redis(rport, data / "redis", logs))
        # The processes use the embedded broker and Redis, whatever FLASHSALE_BROKER_URL / _REDIS_URL say.
        env = {**os.environ, "FLASHSALE_BROKER_URL": f"kafka://127.0.0.1:{kport}",
               "FLASHSALE_REDIS_URL": f"redis://127.0.0.1:{rport}/0"}
        asyncio.run(ensure_topics(f"127.0.0.1:{kport}", settings.topic_prefix, settings.partitions))
        started = time.monotonic()
        worker_ports = []
        for i in range(args.workers):
            wport = _port(6066 + i)
            worker_ports.append(wport)
            _say(f"starting worker {i + 1}/{args.workers} (metrics on 127.0.0.1:{wport})")
            procs.append(python_module("streams", [], logs, f"worker-{i + 1}",
                                       env={**env, "FLASHSALE_WORKER_PORT": str(wport)}))
        gport, dport = _port(args.gateway_port), _port(args.dashboard_port)
        _say(f"starting gateway on 127.0.0.1:{gport}")
        gateway = python_module("producers.gateway", [], logs, "gateway",
                                env={**env, "FLASHSALE_GATEWAY_PORT": str(gport)})
        procs.append(gateway)
        _say(f"starting dashboard on 127.0.0.1:{dport}")
        # The dashboard is never open: it runs with the configured key, else one made here for this run,
        # and the link printed below is signed with it.
        key = dashboard.key.get_secret_value() if dashboard.key is not None else secrets.token_urlsafe(32)
        dashboard_proc = python_module("consumers.dashboard", [], logs, "dashboard",
                                       env={**env, "FLASHSALE_DASHBOARD_PORT": str(dport),
                                            "FLASHSALE_DASHBOARD_KEY": key})
        procs.append(dashboard_proc)
        for i, wport in enumerate(worker_ports):
            _wait_http(f"http://127.0.0.1:{wport}/readyz", procs[2 + i], 60)
        _say(f"workers ready in {time.monotonic() - started:.1f}s")
        _wait_http(f"http://127.0.0.1:{gport}/healthz", gateway, 30)
        _wait_http(f"http://127.0.0.1:{dport}/healthz", dashboard_proc, 30)
        sim = None
        if not args.no_simulate:
            _say("starting the simulated live sale (flashsale simulate " + args.simulate_args + ")")
            sim = python_module("producers.simulator", args.simulate_args.split(), logs, "simulator", env=env)
            procs.append(sim)
        print(flush=True)
        base = f"http://127.0.0.1:{dport}"
        signer = Signer(key.encode())
        _say(f"dashboard:  {link(base, signer, None, DASHBOARD_LINK_S)}")
        if sim is not None:  # the simulator's rooms are room-1, room-2, ...
            _say(f"room-1:     {link(base, signer, 'room-1', DASHBOARD_LINK_S)}")
        _say(f"            (links valid {DASHBOARD_LINK_S // 3600} h; more: flashsale dashboard-link --room ROOM "
             f"with FLASHSALE_DASHBOARD_KEY set)")
        _say(f"gateway:    http://127.0.0.1:{gport}/v1/events")
        _say("metrics:    " + ", ".join(f"http://127.0.0.1:{p}/metrics" for p in worker_ports))
        _say(f"logs:       {logs}")
        _say("Ctrl-C stops everything")
        deadline = time.monotonic() + args.exit_after if args.exit_after else None
        sim_reported = False
        while not stop["now"] and (deadline is None or time.monotonic() < deadline):
            for proc in procs:
                if proc is sim:
                    if not proc.alive() and not sim_reported:
                        _say(f"simulation finished (exit {proc.popen.returncode}); the stack keeps running")
                        sim_reported = True
                elif not proc.alive():
                    raise StackError(f"{proc.name} exited with code {proc.popen.returncode}; see {proc.log_path}")
            time.sleep(0.5)
        return 0
    except StackError as exc:
        print(f"flashsale up: {exc}", file=sys.stderr)
        return 1
    finally:
        if procs:
            _say("stopping")
        for proc in reversed(procs):
            proc.stop(timeout=15)
        if procs:
            _say("stopped")
