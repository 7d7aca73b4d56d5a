"""Run the selected benchmarks, print a summary table, write JSON and the Markdown report."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import orjson

from bench import dashboard, decode, metrics
from bench.markdown import render, summary_rows
from bench.stack import make_stack
from bench.stock import bench_reference, bench_stock


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
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem, 1), "python": platform.python_version(),
            "kernel": platform.release(), "redis": redis_v.replace("v=", ""),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def run_all(which: str, opts: dict[str, Any], out: str, report: str | None) -> int:
    results: dict[str, Any] = {"machine": machine(), "settings": opts}
    log(f"bench {which}: {results['machine']['cores']} cores, {results['machine']['memory_gib']} GiB")
    if which == "decode":  # no processes: the decode cost is measured in this one
        results["decode"] = decode.bench(None, opts, log)
        return _write(results, out, report)
    stack = make_stack()
    try:
        if which == "all":
            results["decode"] = decode.bench(None, opts, log)
        if which in ("all", "stock"):
            results["stock"] = bench_stock(stack, opts["rates"], opts["duration"], opts["backlog"], log)
        if which in ("all", "reference"):
            results["reference"] = bench_reference(stack, opts["backlog"], opts["naive_backlog"], log)
        if which in ("all", "metrics"):
            results["metrics"] = metrics.bench(stack, opts, log)
        if which in ("all", "dashboard"):
            results["dashboard"] = dashboard.bench(stack, opts, log)
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
    return 0 if not any(isinstance(v, dict) and v.get("error") for v in results.values()) else 1

