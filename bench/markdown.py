"""The bench's one Markdown renderer: tables, the summary rows and docs/BENCHMARKS.md."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str) -> list[str]:
    """A Markdown table's lines; ``align`` has one letter per column: ``l`` (text) or ``r`` (numbers)."""
    assert len(align) == len(header), (header, align)
    sep = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", sep, *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def _f(x: Any, nd: int = 0) -> str:
    try:
        return f"{float(x):,.{nd}f}"
    except (TypeError, ValueError):
        return "n/a"


def _cpu_sum(procs: dict[str, dict[str, Any]]) -> float:
    return sum(float(p.get("cpu_percent", 0.0)) for p in procs.values())


def bottleneck_lines(r: dict[str, Any]) -> list[str]:
    """Where the time goes, from this run's process figures (CPU % of one core; the machine has
    ``cores`` x 100 %)."""
    budget = 100 * int(r["machine"]["cores"])
    out = ["", "## Bottleneck", ""]
    stock = r.get("stock")
    if stock:
        worst = max(stock["rates"], key=lambda s: _cpu_sum(s["processes"]))
        procs = worst["processes"]
        busiest = max(procs, key=lambda k: procs[k]["cpu_percent"])
        sus = stock["sustained"]
        out.append(
            f"- Stock core: at {_f(worst['target_rate'])} attempts/s the processes ({', '.join(procs)}) used "
            f"{_cpu_sum(procs):.0f}% of the machine's {budget}%; the busiest was the {busiest} at "
            f"{procs[busiest]['cpu_percent']}%. Draining a backlog the "
            f"worker used {sus['processes']['worker']['cpu_percent']}% CPU: no process saturates a core; the limit "
            "is the shared cores plus the worker's serial batch cycle (fetch, one Lua call per sale, produce the "
            "decisions and wait for the broker's ack, commit).")
    m = r.get("metrics")
    for step in (m or {}).get("fixed_rate", []):
        procs = step["processes"]
        busiest = max(procs, key=lambda k: procs[k]["cpu_percent"])
        out.append(
            f"- Counters ({step['profile']}): at {_f(step['target_rate'])} events/s all processes used "
            f"{_cpu_sum(procs):.0f}% of {budget}%; busiest: {busiest} {procs[busiest]['cpu_percent']}%, "
            f"Redis {procs['redis']['cpu_percent']}% (the Lua scripts). "
            + ("It kept up" if step["kept_up"] else "It fell behind")
            + f", p99 event→Redis {step['latency_ms']['p99']} ms.")
    return out if len(out) > 3 else []


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    stock = r.get("stock")
    if stock:
        for step in stock["rates"]:
            rows.append(
                (
                    f"stock @ {_f(step['target_rate'])} attempts/s: p50 / p99 decision latency",
                    f"{_f(step['p50_ms'])} / {_f(step['p99_ms'])} ms",
                    "kept up" if step["kept_up"] else "FELL BEHIND",
                )
            )
        s = stock["sustained"]
        rows.append(
            (
                "stock sustained throughput (backlog drain)",
                f"{_f(s['attempts_per_s'])} /s",
                f"worker {s['processes']['worker']['cpu_percent']}% CPU, {s['processes']['worker']['rss_mb']} MB",
            )
        )
    ref = r.get("reference")
    if ref:
        ceil, naive = ref["aiokafka_batch_lua"]["attempts_per_s"], ref["naive_faust"]["attempts_per_s"]
        rows.append(("reference: plain aiokafka loop + one Lua call/batch", f"{_f(ceil)} /s", "machine ceiling"))
        rows.append(("reference: naive Faust agent, 1 Redis await/event", f"{_f(naive)} /s", ""))
        if stock:
            mine = stock["sustained"]["attempts_per_s"]
            rows.append(("pipeline / naive agent", f"{mine / naive:.1f}x", "target >= 4x"))
            rows.append(("pipeline / ceiling", f"{mine / ceil * 100:.0f}%", "target >= 60%"))
    for name in ("decode", "metrics", "dashboard"):
        part = r.get(name)
        if part and "summary" in part:
            rows.extend((str(a), str(b), str(c)) for a, b, c in part["summary"])
        elif part and "error" in part:
            rows.append((name, "not run", part["error"]))
    return rows


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench all`); every figure below comes from that run. Numbers are",
        "from one machine with broker, Redis, workers and the load generator all on the same cores, so they",
        "show the shape and the bottleneck, not a cluster's capacity.",
        "",
        f"- Date: {m['date']}",
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}",
        f"- Python {m['python']}, redis-server {m['redis']}, broker: Tansu (embedded, memory only)",
        f"- Settings: {r['settings']}",
        "",
        *table(("measure", "value", "note"), summary_rows(r), "lrl"),
    ]
    stock = r.get("stock")
    if stock:
        header = ("target/s", "achieved/s", "p50 ms", "p99 ms", "max ms", "drained after send", "worker CPU %",
                  "worker RSS MB", "broker CPU %", "redis CPU %", "load generator CPU %", "load generator RSS MB",
                  "all CPU %")
        rows = [(_f(s["target_rate"]), _f(s["achieved_rate"]), _f(s["p50_ms"]), _f(s["p99_ms"]), _f(s["max_ms"]),
                 f"{s['drain_after_send_s']} s", p["worker"]["cpu_percent"], p["worker"]["rss_mb"],
                 p["broker"]["cpu_percent"], p["redis"]["cpu_percent"], p.get("loadgen", {}).get("cpu_percent", ""),
                 p.get("loadgen", {}).get("rss_mb", ""), f"{_cpu_sum(p):.0f}")
                for s in stock["rates"] for p in (s["processes"],)]
        lines += ["", "## Stock core: fixed-rate steps", "", *table(header, rows, "r" * len(header))]
        lines += [
            "",
            "Latency is event time (set by the load generator when it builds the batch) to the moment a",
            "reader of the `order-decisions` topic receives the decision. The load generator column is the",
            "benchmark process itself (generator and reader), on the same cores.",
        ]
    for name in ("decode", "metrics", "dashboard"):
        part = r.get(name)
        if part and part.get("markdown"):
            lines += ["", str(part["markdown"])]
    lines += bottleneck_lines(r)
    lines.append("")
    return "\n".join(lines)
