"""Run the selected benchmarks, print a summary table, write JSON and the Markdown report."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench import dashboard, decode, http_orders, limit, metrics, stock
from bench.markdown import render, summary_rows
from bench.stack import make_stack


def log(msg: str) -> None:
    print(msg, flush=True)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    except (OSError, IndexError):
        redis_v = "?"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "", False
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "redis": redis_v.replace("v=", ""),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


def _section(results: dict[str, Any], name: str, run: Callable[[], dict[str, Any]]) -> None:
    """Run one benchmark; a failure is recorded under its name (the report says so) and the others still run."""
    try:
        results[name] = run()
    except Exception as exc:  # noqa: BLE001 - one broken benchmark must not lose the others' figures
        log(f"  {name} FAILED: {exc!r}\n{traceback.format_exc()}")
        results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _single(stack: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """The one-event-per-record drain, when bench.stock has it."""
    if not hasattr(stock, "bench_single_record"):
        return {"error": "not measured: bench.stock has no bench_single_record"}
    result: dict[str, Any] = stock.bench_single_record(stack, int(opts["single_backlog"]), log=log)
    return result


def run_all(which: str, opts: dict[str, Any], out: str, report: str | None) -> int:
    results: dict[str, Any] = {"machine": machine(), "settings": opts}
    log(f"bench {which}: {results['machine']['cores']} cores, {results['machine']['memory_gib']} GiB")
    if which == "decode":  # no processes: the decode cost is measured in this one
        _section(results, "decode", lambda: decode.bench(None, opts, log))
        return _write(results, out, report)
    stack = make_stack()
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("decode", lambda: decode.bench(None, opts, log)),
        ("stock", lambda: stock.bench_stock(stack, opts["rates"], opts["duration"], opts["backlog"], log)),
        ("single", lambda: _single(stack, opts)),
        ("reference", lambda: stock.bench_reference(stack, opts["backlog"], opts["naive_backlog"], log)),
        ("limit", lambda: limit.bench(stack, opts, log)),
        ("http", lambda: http_orders.bench(stack, opts, log)),
        ("metrics", lambda: metrics.bench(stack, opts, log)),
        ("dashboard", lambda: dashboard.bench(stack, opts, log)),
    ]
    try:
        for name, run in sections:
            if which in ("all", name):
                log(f"{name}:")
                _section(results, name, run)
    finally:
        stack.close()
    return _write(results, out, report)


def _write(results: dict[str, Any], out: str, report: str | None) -> int:
    """Print the summary table, write the JSON and (with ``report``) the Markdown; 1 if a section failed."""
    Path(out).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print()
    for row in summary_rows(results):
        print(f"  {row[0]:<55} {row[1]:>16}   {row[2]}")
    print(f"\nJSON written to {out}")
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(render(results))
        print(f"report written to {report}")
    failed = [k for k, v in results.items() if isinstance(v, dict) and (v.get("error") or v.get("ok") is False)]
    if failed:
        print(f"FAILED or incorrect: {', '.join(failed)}")
    return 0 if not failed else 1
