"""The bench's one Markdown renderer: tables, the summary rows and docs/BENCHMARKS.md."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeGuard


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


def _ok(part: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(part, dict) and bool(part) and "error" not in part


# A process whose busiest thread is this close to a full core is at its limit (an event loop, Redis's main thread).
AT_LIMIT = 85.0
SINGLE_CORE = ("worker", "redis", "gateway", "minimal", "limit-worker", "loadgen", "load generator", "producer")
NAMES = {
    "minimal": "minimal handler",
    "limit-worker": "worker",
    "redis": "Redis",
    "wrk": "wrk",
    "loadgen": "load generator (this benchmark process: generator and decision reader)",
}


def limit_of(procs: dict[str, dict[str, Any]], cores: int, box: dict[str, Any] | None = None) -> str:
    """Which process is at its limit in a run, from its CPU figures, or that none is (the figure waits instead)."""
    if not procs:
        return "no process figures"
    rows = {k: float(v.get("cpu_percent", 0.0)) for k, v in procs.items()}
    busiest = max(rows, key=lambda k: rows[k] / float(procs[k].get("procs", 1) or 1))
    total = float(box["busy_percent"]) if box else sum(rows.values())
    share = ", ".join(f"{k} {v:.0f}%" for k, v in sorted(rows.items(), key=lambda kv: -kv[1]))
    n = int(procs[busiest].get("procs", 1) or 1)
    if busiest in SINGLE_CORE and rows[busiest] / n >= AT_LIMIT:
        why = (
            f" over {n} processes, each at a core's limit"
            if n > 1
            else ": Redis runs commands on one thread"
            if busiest == "redis"
            else ": one Python event loop cannot use a second core"
        )
        return (
            f"the {NAMES.get(busiest, busiest)} is at its limit, {rows[busiest]:.0f}% of one core{why} "
            f"({share}; box {total:.0f}% of {cores * 100}%)"
        )
    if total >= AT_LIMIT * cores:
        return f"the {cores} cores are full: {total:.0f}% of {cores * 100}% ({share})"
    return (
        f"no process is at a core's limit ({share}; box {total:.0f}% of {cores * 100}%): the figure is bound by "
        "waiting, not CPU"
    )


def _gap(figure: float, goal: float, higher: bool) -> tuple[str, str]:
    """Met or missed, and by how much."""
    met = figure >= goal if higher else figure <= goal
    if goal == 0:
        return ("met" if met else "missed"), ("" if met else f"{figure:,.0f} over")
    pct = abs(figure - goal) / goal * 100
    if met:
        return "met", f"{pct:.0f}% to spare"
    return "missed", (
        f"{goal - figure:,.1f} short ({pct:.0f}% below)" if higher else f"{figure - goal:,.1f} over ({pct:.0f}% above)"
    )


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's targets on this box, each with this run's figure and the reference measured beside it."""
    out: list[dict[str, Any]] = []

    def add(
        target: str,
        figure: Any,
        goal: float,
        unit: str,
        higher: bool,
        reference: str,
        measured: bool = True,
        run: dict[str, Any] | None = None,
    ) -> None:
        out.append(
            {
                "target": target,
                "figure": figure if measured else None,
                "goal": goal,
                "unit": unit,
                "higher_is_better": higher,
                "reference": reference,
                "processes": (run or {}).get("processes"),
                "box_cpu": (run or {}).get("box_cpu"),
            }
        )

    single, stock, ref = r.get("single"), r.get("stock"), r.get("reference")
    batched = stock["sustained"]["attempts_per_s"] if _ok(stock) else None
    plain = ref["aiokafka_batch_lua"]["attempts_per_s"] if _ok(ref) else None
    if "single" in r:
        got: dict[str, Any] = single if _ok(single) else {}
        ok = bool(got)
        add(
            "one event per record: >= 40,000 decisions/s drained",
            got.get("decisions_per_s"),
            40_000,
            "decisions/s",
            True,
            f"batched drain {_f(batched)}/s",
            ok,
            got,
        )
        add(
            "one event per record: <= 20 µs worker CPU per decision",
            got.get("worker_cpu_us_per_decision"),
            20,
            "µs",
            False,
            "batched: " + _f(_limit_shape(r, "batched", "worker_us_per_decision"), 1) + " µs (limit run)",
            ok,
            got,
        )
    if "stock" in r:
        add(
            "batched envelopes: >= 60,000 decisions/s",
            batched,
            60_000,
            "decisions/s",
            True,
            f"plain aiokafka loop {_f(plain)}/s",
            batched is not None,
            stock["sustained"] if _ok(stock) else None,
        )
        step = next((s for s in stock["rates"] if float(s["target_rate"]) == 5000), None) if _ok(stock) else None
        add(
            "decision latency at 5,000 attempts/s: p99 <= 30 ms",
            step["p99_ms"] if step else None,
            30,
            "ms",
            False,
            f"p50 {_f(step['p50_ms'])} ms" if step else "",
            step is not None,
            step,
        )
    http: dict[str, Any] = r["http"] if _ok(r.get("http")) else {}
    if "http" in r:
        minimal = {x["connections"]: x for x in http.get("runs", []) if x["kind"] == "minimal"}
        for t in http.get("targets", []):
            c = int(t["connections"])
            ref_rate = minimal.get(c, {}).get("req_per_s")
            kind = "sold_out" if t["target"].startswith("sold-out") else "decisions"
            best = [x for x in http.get("runs", []) if x["kind"] == kind and x["connections"] == c]
            source = max(best, key=lambda x: x["req_per_s"]) if best else None
            add(
                t["target"],
                t["figure"],
                t["goal"],
                t["unit"],
                t["higher_is_better"],
                f"minimal aiohttp handler {_f(ref_rate)} req/s at {c:,} connections",
                run=source,
            )
        if not http:
            add("HTTP orders with decisions at 1,000 connections: >= 6,000 req/s", None, 6000, "req/s", True, "", False)
    metrics = r.get("metrics")
    if "metrics" in r:
        run = None
        if _ok(metrics):
            run = next(
                (f for f in metrics["fixed_rate"] if f["profile"] == "defaults" and float(f["target_rate"]) >= 50_000),
                None,
            )
        drain = (metrics.get("backlog") or {}) if _ok(metrics) else {}
        reference = f"backlog drain {_f(drain.get('events_per_s'))}/s"
        if run and not run["kept_up"]:
            reference += f"; this step fell behind: drained {run['drain_after_send_s']} s after the send"
        add(
            "counters: >= 50,000 engagement events/s applied and kept up",
            run["applied_rate"] if run else None,
            50_000,
            "events/s",
            True,
            reference,
            run is not None,
            run,
        )
        add(
            "counters at 50,000 events/s: p99 event→Redis <= 100 ms",
            run["latency_ms"]["p99"] if run else None,
            100,
            "ms",
            False,
            f"outside probe p99 {_f(run['probe_latency_ms']['p99'], 1)} ms" if run else "",
            run is not None and run["latency_ms"]["p99"] is not None,
            run,
        )
    for t in out:
        if t["figure"] is None:
            t["verdict"], t["by"] = "not measured", ""
        else:
            t["verdict"], t["by"] = _gap(float(t["figure"]), float(t["goal"]), bool(t["higher_is_better"]))
            if "kept up" in t["target"] and "fell behind" in t["reference"]:
                t["verdict"] = "missed"
    return out


def close_hint(limit: str) -> str:
    """What would close a gap, from what limits the figure."""
    if " is at its limit" in limit:
        who = limit.split(" is at its limit")[0].removeprefix("the ")
        if who.startswith("Redis"):
            return "less Redis work per decision (fewer, larger script calls; less per order in the script)"
        return f"less CPU per event in the {who}, or more {who} processes on more cores"
    if limit.startswith("the ") and "cores are full" in limit:
        return "less CPU per decision in the parts (see the physical limit), or more cores"
    if limit.startswith("no process"):
        return "shorter waits in the cycle (overlapping fetch, Lua, produce, ack), or more work in flight"
    return ""


def _limit_shape(r: dict[str, Any], shape: str, key: str) -> Any:
    lim = r.get("limit")
    if not _ok(lim):
        return None
    return next((s[key] for s in lim["shapes"] if s["shape"] == shape), None)


def bottleneck_lines(r: dict[str, Any]) -> list[str]:
    """Where each figure's time goes, from this run's process figures (CPU % of one core; the machine has
    ``cores`` x 100 %)."""
    cores = int(r["machine"]["cores"])
    out = [
        "",
        "## Bottleneck of each figure",
        "",
        f"CPU is % of one core; the box has {cores * 100}%. A Python event loop and Redis's main thread can use "
        f"one core at most, so at ~{AT_LIMIT:.0f}% of a core they are at their limit.",
        "",
    ]
    stock = r.get("stock")
    if _ok(stock):
        for step in stock["rates"]:
            out.append(
                f"- Stock @ {_f(step['target_rate'])} attempts/s (p99 {_f(step['p99_ms'])} ms): "
                + limit_of(step["processes"], cores)
                + (
                    "; the latency is the worker's batch cycle (fetch wait, one Lua call per sale, produce "
                    "and the broker's ack, commit) run in series, plus the reader's fetch wait"
                    if limit_of(step["processes"], cores).startswith("no process")
                    else ""
                )
                + "."
            )
        sus = stock["sustained"]
        out.append(f"- Batched drain ({_f(sus['attempts_per_s'])}/s): {limit_of(sus['processes'], cores)}.")
    single = r.get("single")
    if _ok(single):
        out.append(
            f"- One event per record ({_f(single['decisions_per_s'])}/s, "
            f"{single['worker_cpu_us_per_decision']} µs worker CPU per decision): "
            f"{limit_of(single.get('processes', {}), cores)}."
        )
    lim = r.get("limit")
    if _ok(lim):
        for s in lim["shapes"]:
            e = s["estimate"]
            out.append(
                f"- Physical limit, {s['shape']}: at most {_f(e['limit_per_s'])} decisions/s, set by "
                f"{e['limited_by']}: {e['because']}. Measured {_f(s['decisions_per_s'])}/s "
                f"= {e['measured_share']}% of it; in that run {limit_of(s.get('processes', {}), cores)}."
            )
    http = r.get("http")
    if _ok(http):
        minimal_us = {x["connections"]: x.get("server_us_per_request") for x in http["runs"] if x["kind"] == "minimal"}
        for x in http["runs"]:
            lim_text = limit_of({k: v for k, v in x["processes"].items()}, cores, x.get("box_cpu"))
            extra = ""
            ref = minimal_us.get(x["connections"])
            if x["kind"] != "minimal" and x.get("server_us_per_request") and ref:
                extra = (
                    f"; the gateway spends {x['server_us_per_request']:.0f} µs of CPU per request, the minimal "
                    f"handler {ref:.0f} µs: {x['server_us_per_request'] - ref:.0f} µs per request is the "
                    "gateway's own work ("
                    + (
                        "validation, the sold-out flag, the 409 body"
                        if x["kind"] == "sold_out"
                        else "validation, publish, the decision wait"
                    )
                    + ")"
                )
            if x["kind"] == "decisions" and lim_text.startswith("no process") and x["req_per_s"]:
                extra += (
                    f"; by Little's law {x['connections']} connections / {_f(x['req_per_s'])} req/s = "
                    f"{x['connections'] / x['req_per_s'] * 1000:.0f} ms per order, the decision's round trip "
                    "(gateway → Kafka → worker → Kafka → gateway)"
                )
            out.append(
                f"- HTTP, {_label(x)} @ {x['connections']:,} connections "
                f"({_f(x['req_per_s'])} req/s, p99 {_f(x['p99_ms'], 1)} ms): {lim_text}{extra}."
            )
    metrics = r.get("metrics")
    for step in (metrics or {}).get("fixed_rate", []) if _ok(metrics) else []:
        out.append(
            f"- Counters ({step['profile']}) @ {_f(step['target_rate'])} events/s "
            f"({'kept up' if step['kept_up'] else 'fell behind'}, p99 event→Redis "
            f"{step['latency_ms']['p99']} ms): {limit_of(step['processes'], cores)}."
        )
    return out if len(out) > 5 else []


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    stock = r.get("stock")
    if _ok(stock):
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
                "stock, batched envelopes: backlog drain",
                f"{_f(s['attempts_per_s'])} /s",
                f"worker {s['processes']['worker']['cpu_percent']}% CPU, {s['processes']['worker']['rss_mb']} MB",
            )
        )
    single = r.get("single")
    if _ok(single):
        batched = f"batched drain {_f(stock['sustained']['attempts_per_s'])}/s" if _ok(stock) else ""
        rows.append(
            (
                "stock, one event per record: backlog drain",
                f"{_f(single['decisions_per_s'])} /s",
                f"worker {single['worker_cpu_us_per_decision']} µs CPU/decision; decided once: "
                f"{single['decided_once']}, oversold: {single['oversold']}; {batched}",
            )
        )
    ref = r.get("reference")
    if _ok(ref):
        plain, naive = ref["aiokafka_batch_lua"]["attempts_per_s"], ref["naive_faust"]["attempts_per_s"]
        rows.append(
            (
                "reference: plain aiokafka loop + one Lua call/batch",
                f"{_f(plain)} /s",
                "same design without Faust: a reference, not a limit",
            )
        )
        rows.append(("reference: naive Faust agent, 1 Redis await/event", f"{_f(naive)} /s", ""))
        if _ok(stock):
            mine = stock["sustained"]["attempts_per_s"]
            rows.append(("pipeline / naive agent", f"{mine / naive:.1f}x", "target >= 4x"))
            rows.append(("pipeline / plain aiokafka loop", f"{mine / plain * 100:.0f}%", ""))
    lim = r.get("limit")
    if _ok(lim):
        for s in lim["shapes"]:
            e = s["estimate"]
            rows.append(
                (
                    f"physical limit, {s['shape']}",
                    f"{_f(e['limit_per_s'])} /s",
                    f"set by {e['limited_by']}, {e['total_us_per_decision']} µs CPU/decision (producer included; "
                    f"a backlog's drain: {_f(e.get('drain_limit_per_s'))}/s); published and decided "
                    f"{_f(s['decisions_per_s'])}/s",
                )
            )
    http = r.get("http")
    if _ok(http):
        minimal = {x["connections"]: x["req_per_s"] for x in http["runs"] if x["kind"] == "minimal"}
        for x in http["runs"]:
            ratio = (
                f"{x['req_per_s'] / minimal[x['connections']] * 100:.0f}% of minimal"
                if x["kind"] != "minimal" and minimal.get(x["connections"])
                else "reference"
            )
            c = x["checks"]
            rows.append(
                (
                    f"HTTP, {_label(x)} @ {x['connections']:,} connections",
                    f"{_f(x['req_per_s'])} req/s",
                    f"p50 {_f(x['p50_ms'], 1)} / p99 {_f(x['p99_ms'], 1)} ms; {ratio}; 202s "
                    f"{c['pending_202']}; checks {'ok' if c['ok'] else 'FAILED'}",
                )
            )
    for name in ("decode", "metrics", "dashboard"):
        part = r.get(name)
        if part and "summary" in part:
            rows.extend((str(a), str(b), str(c)) for a, b, c in part["summary"])
    for name, part in r.items():
        if isinstance(part, dict) and "error" in part:
            rows.append((name, "not measured" if "not measured" in part["error"] else "FAILED", part["error"]))
    return rows


def _label(x: dict[str, Any]) -> str:
    n = int(x.get("gateway_processes") or 1)
    gw = f"gateway ({n} processes)" if n > 1 else "gateway"
    names = {
        "minimal": "minimal aiohttp handler",
        "decisions": f"{gw}, orders with decisions",
        "sold_out": f"{gw}, sold out (409)",
    }
    return names[x["kind"]]


def _http_lines(http: dict[str, Any]) -> list[str]:
    p = http["params"]
    minimal = {x["connections"]: x["req_per_s"] for x in http["runs"] if x["kind"] == "minimal"}
    header = (
        "server / path",
        "connections",
        "req/s",
        "vs minimal",
        "p50 ms",
        "p99 ms",
        "max ms",
        "answers",
        "202 pending",
        "wrk errors",
        "decided once",
        "oversold",
        "checks",
        "server µs CPU/request",
        "gateway or server CPU %",
        "worker CPU %",
        "broker CPU %",
        "redis CPU %",
        "wrk CPU %",
        "box CPU %",
    )
    rows = []
    for x in http["runs"]:
        pr, c = x["processes"], x["checks"]
        server = pr.get("gateway", pr.get("minimal", {}))
        errors = sum(int(v) for k, v in x["wrk_errors"].items() if k != "status")
        rows.append(
            (
                _label(x),
                f"{x['connections']:,}",
                _f(x["req_per_s"]),
                f"{x['req_per_s'] / minimal[x['connections']] * 100:.0f}%" if minimal.get(x["connections"]) else "",
                _f(x["p50_ms"], 1),
                _f(x["p99_ms"], 1),
                _f(x["max_ms"], 1),
                " ".join(f"{k}: {v:,}" for k, v in sorted(x["statuses"].items())),
                c["pending_202"],
                errors,
                c.get("decided_once", ""),
                c.get("oversold", ""),
                "ok" if c["ok"] else "FAILED",
                _f(x.get("server_us_per_request"), 1),
                server.get("cpu_percent", ""),
                pr.get("worker", {}).get("cpu_percent", ""),
                pr.get("broker", {}).get("cpu_percent", ""),
                pr.get("redis", {}).get("cpu_percent", ""),
                pr["wrk"]["cpu_percent"],
                x["box_cpu"]["busy_percent"],
            )
        )
    return [
        "",
        "## HTTP orders (wrk)",
        "",
        f"`wrk -t{p['threads']} -c<connections> -d{p['duration_s']:.0f}s --latency -s bench/wrk_orders.lua`: one "
        "order per POST, each with its own order_id and user; every answer's status counted by the script. "
        "The gateway (`python -m producers.gateway"
        + "".join(" " + a for a in p["gateway_args"])
        + "`, rate limit off) runs with a stock worker, Tansu and Redis; the "
        "decisions sale has stock for every order (each request is published and waits for its decision), the "
        "sold-out sale was opened with none (409 from the sold-out flag, nothing published). The minimal "
        "handler (`bench/minimal_http.py`: parse the JSON body, answer JSON) runs alone on the same box under "
        "the same wrk settings. Checks: the decisions topic read from the run's start (each order decided "
        "once, no conflicting decision; at most one order per connection in flight at wrk's stop), Redis stock "
        "balanced (allotted = available + reserved + sold, sold <= allotted), the sold-out sale published "
        "nothing; every 202 is spurious (all orders were decided). Latency is wrk's (closed loop: each "
        "connection sends its next order when the last is answered).",
        "",
        *table(header, rows, "lr" + "r" * (len(header) - 2)),
    ]


def _drain_lines(r: dict[str, Any]) -> list[str]:
    rows = []
    stock, single, ref, lim = r.get("stock"), r.get("single"), r.get("reference"), r.get("limit")
    if _ok(single):
        pr = single.get("processes", {})
        rows.append(
            (
                "one event per Kafka record (Faust worker)",
                f"{single['attempts']:,}",
                _f(single["decisions_per_s"]),
                single["worker_cpu_us_per_decision"],
                pr.get("worker", {}).get("cpu_percent", ""),
                pr.get("broker", {}).get("cpu_percent", ""),
                pr.get("redis", {}).get("cpu_percent", ""),
                f"decided once: {single['decided_once']}, oversold {single['oversold']}",
            )
        )
    elif "single" in r:
        rows.append(
            (
                "one event per Kafka record (Faust worker)",
                "",
                "not measured",
                "",
                "",
                "",
                "",
                str((single or {}).get("error", "")),
            )
        )
    if _ok(stock):
        s = stock["sustained"]
        pr = s["processes"]
        rows.append(
            (
                "batched envelopes (Faust worker)",
                f"{s['attempts']:,}",
                _f(s["attempts_per_s"]),
                _f(_limit_shape(r, "batched", "worker_us_per_decision"), 1),
                pr["worker"]["cpu_percent"],
                pr["broker"]["cpu_percent"],
                pr["redis"]["cpu_percent"],
                f"decided {s['decided']:,}/{s['attempts']:,}",
            )
        )
    if _ok(ref):
        for key, what in (
            ("aiokafka_batch_lua", "batched, plain aiokafka loop (reference)"),
            ("naive_faust", "batched, naive agent: 1 Redis await/event (reference)"),
        ):
            x = ref[key]
            pr = x["processes"]
            w = next(iter(pr.values()))
            rows.append(
                (
                    what,
                    f"{x['attempts']:,}",
                    _f(x["attempts_per_s"]),
                    "",
                    w["cpu_percent"],
                    pr.get("broker", {}).get("cpu_percent", ""),
                    pr.get("redis", {}).get("cpu_percent", ""),
                    f"decided {x['decided']:,}/{x['attempts']:,}",
                )
            )
    if not rows:
        return []
    note = (
        "The batched row's µs/decision is from the physical-limit run (same shape, measured over its drain window)."
        if _ok(lim)
        else ""
    )
    return [
        "",
        "## Stock drains: one event per record next to batched",
        "",
        "A backlog of `order.placed` is published first; then the consumer starts and first → last decision "
        "is timed. " + note,
        "",
        *table(
            (
                "records",
                "attempts",
                "decisions/s",
                "worker µs CPU/decision",
                "worker CPU %",
                "broker CPU %",
                "redis CPU %",
                "checks",
            ),
            rows,
            "lrrrrrrl",
        ),
    ]


def _limit_lines(lim: dict[str, Any], cores: int) -> list[str]:
    parts = ("producer", "broker", "worker", "redis")
    rows = []
    for s in lim["shapes"]:
        e = s["estimate"]
        rows.append(
            (
                s["shape"],
                s["per_record"],
                *(e["us_per_decision"][k] for k in parts),
                e["total_us_per_decision"],
                s["script_us_per_call"],
                s["decisions_per_script_call"],
                s["script_us_per_decision"],
                _f(e["limit_per_s"]),
                e["limited_by"],
                _f(e.get("drain_limit_per_s")),
                _f(s["decisions_per_s"]),
                f"{e['measured_share']}%",
            )
        )
    lines = [
        "",
        "## Physical limit from measured parts",
        "",
        "A ready stock worker gets order attempts published as fast as one producer goes and decides them as "
        "they come. Per decision, CPU µs measured in this run from the first attempt published to the last "
        "decision (the worker's start-up excluded): the producer (this process), the broker (attempts in and "
        "out, decisions in), the worker and Redis (psutil), and the stock script's own time from Redis's "
        "`INFO commandstats` (`usec` of evalsha/fcall). The box has "
        f"{cores} × 1,000,000 µs of CPU per second; the worker (one event loop) and Redis (one thread) can "
        "use one core each. The limit is the smallest of those bounds.",
        "",
        *table(
            (
                "records",
                "events/record",
                *(f"{k} µs" for k in parts),
                "all µs",
                "script µs/call",
                "decisions/call",
                "script µs/decision",
                "limit /s",
                "set by",
                "limit without the producer (a backlog's drain) /s",
                "published and decided /s",
                "measured/limit",
            ),
            rows,
            "l" + "r" * 10 + "lrrr",
        ),
    ]
    for s in lim["shapes"]:
        e = s["estimate"]
        lines += [
            "",
            f"- {s['shape'].capitalize()}: the box could at most do {_f(e['limit_per_s'])} decisions/s "
            f"because {e['because']}.",
        ]
    return lines


def _targets_lines(r: dict[str, Any]) -> list[str]:
    cores = int(r["machine"]["cores"])
    found = targets(r)
    limits = [limit_of(t["processes"], cores, t.get("box_cpu")) if t.get("processes") else "" for t in found]
    rows = [
        (
            t["target"],
            "n/a" if t["figure"] is None else f"{_f(t['figure'], 1)} {t['unit']}",
            f"{'>=' if t['higher_is_better'] else '<='} {_f(t['goal'])} {t['unit']}",
            t["verdict"],
            t["by"],
            t["reference"],
            lim.split(" (")[0],
            close_hint(lim) if t["verdict"] == "missed" else "",
        )
        for t, lim in zip(found, limits, strict=True)
    ]
    if not rows:
        return []
    return [
        "",
        "## Issue 14 targets on this box",
        "",
        "Each target's figure, its reference measured in the same run, what limits the figure (from the CPU of "
        "the processes in that measurement; details under Bottleneck) and, where missed, what would close it.",
        "",
        *table(
            (
                "target",
                "this run",
                "goal",
                "verdict",
                "by",
                "reference in the same run",
                "limited by",
                "what would close it",
            ),
            rows,
            "lrrlllll",
        ),
    ]


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
        f"- Code: commit {m.get('commit') or 'unknown'}",
        f"- Settings: {r['settings']}",
        "",
        *table(("measure", "value", "note"), summary_rows(r), "lrl"),
    ]
    lines += _targets_lines(r)
    if _ok(r.get("http")):
        lines += _http_lines(r["http"])
    lines += _drain_lines(r)
    if _ok(r.get("limit")):
        lines += _limit_lines(r["limit"], int(m["cores"]))
    stock = r.get("stock")
    if _ok(stock):
        header = (
            "target/s",
            "achieved/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "drained after send",
            "worker CPU %",
            "worker RSS MB",
            "broker CPU %",
            "redis CPU %",
            "load generator CPU %",
            "load generator RSS MB",
            "all CPU %",
        )
        rows = [
            (
                _f(s["target_rate"]),
                _f(s["achieved_rate"]),
                _f(s["p50_ms"]),
                _f(s["p99_ms"]),
                _f(s["max_ms"]),
                f"{s['drain_after_send_s']} s",
                p["worker"]["cpu_percent"],
                p["worker"]["rss_mb"],
                p["broker"]["cpu_percent"],
                p["redis"]["cpu_percent"],
                p.get("loadgen", {}).get("cpu_percent", ""),
                p.get("loadgen", {}).get("rss_mb", ""),
                f"{_cpu_sum(p):.0f}",
            )
            for s in stock["rates"]
            for p in (s["processes"],)
        ]
        lines += ["", "## Stock core: fixed-rate steps", "", *table(header, rows, "r" * len(header))]
        lines += [
            "",
            "Latency is event time (set by the load generator when it builds the batch) to the moment a",
            "reader of the `order-decisions` topic receives the decision. The load generator column is the",
            "benchmark process itself (generator and reader), on the same cores.",
        ]
    for name in ("decode", "metrics", "dashboard"):
        part = r.get(name)
        if _ok(part) and part.get("markdown"):
            lines += ["", str(part["markdown"])]
    lines += bottleneck_lines(r)
    lines.append("")
    return "\n".join(lines)
