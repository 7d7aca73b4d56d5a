"""Run the selected benchmarks, print a summary table, write JSON and the Markdown report."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

import orjson

from flashsale.bench.stack import BenchStack, make_stack
from flashsale.bench.stock import bench_reference, bench_stock


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


def _optional(stack: BenchStack, module: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Benchmarks owned by other modules expose ``bench(stack, opts, log) -> dict``."""
    try:
        mod = import_module(module)
    except ImportError as exc:
        return {"error": f"{module} not available: {exc}"}
    result: dict[str, Any] = mod.bench(stack, opts, log)
    return result


def run_all(which: str, opts: dict[str, Any], out: str, report: str | None) -> int:
    results: dict[str, Any] = {"machine": machine(), "settings": opts}
    log(f"flashsale bench {which}: {results['machine']['cores']} cores, {results['machine']['memory_gib']} GiB")
    stack = make_stack()
    try:
        if which in ("all", "decode"):
            results["decode"] = _optional(stack, "flashsale.bench.decode", opts)
        if which in ("all", "stock"):
            results["stock"] = bench_stock(stack, opts["rates"], opts["duration"], opts["backlog"], log)
        if which in ("all", "reference"):
            results["reference"] = bench_reference(stack, opts["backlog"], opts["naive_backlog"], log)
        if which in ("all", "metrics"):
            results["metrics"] = _optional(stack, "flashsale.bench.metrics", opts)
        if which in ("all", "dashboard"):
            results["dashboard"] = _optional(stack, "flashsale.bench.dashboard", opts)
    finally:
        stack.close()
    Path(out).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    from flashsale.bench.markdown import render, summary_rows

    print()
    for row in summary_rows(results):
        print(f"  {row[0]:<55} {row[1]:>16}   {row[2]}")
    print(f"\nJSON written to {out}")
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(render(results))
        print(f"report written to {report}")
    return 0 if not any(isinstance(v, dict) and v.get("error") for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(run_all("all", {}, "bench-results.json", None))
