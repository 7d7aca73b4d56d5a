"""``python -m bench``: benchmarks on a throwaway embedded stack; prints a table, writes JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench import metrics
from bench.report import run_all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run benchmarks on a throwaway embedded stack (Tansu + redis-server on free loopback ports). "
        "Prints a table and writes JSON; 'all' also writes docs/BENCHMARKS.md.",
    )
    p.add_argument(
        "which",
        nargs="?",
        default="all",
        choices=["all", "decode", "stock", "single", "reference", "limit", "http", "metrics", "dashboard"],
        help="which benchmark (default: all): decode; stock (latency steps, batched drain); single (the "
        "one-event-per-record drain); reference (plain aiokafka loop, naive agent); limit (the box's "
        "physical limit from measured CPU per decision); http (orders through the gateway with wrk, "
        "next to a minimal aiohttp handler); metrics (counters); dashboard",
    )
    p.add_argument(
        "--rates",
        default="1000,5000,10000,15000",
        help="stock attempt rates per second, comma-separated (default 1000,5000,10000,15000)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per fixed-rate step (default 10)")
    p.add_argument(
        "--backlog", type=int, default=200_000, help="attempts in the sustained-throughput backlog (default 200000)"
    )
    p.add_argument(
        "--naive-backlog", type=int, default=30_000, help="backlog for the naive per-event agent (default 30000)"
    )
    p.add_argument(
        "--single-backlog",
        type=int,
        default=200_000,
        help="attempts in the one-event-per-record backlog (default 200000)",
    )
    p.add_argument(
        "--limit-backlog",
        type=int,
        default=100_000,
        help="attempts in the physical-limit backlog, batched (default 100000; one event per record: a tenth of it)",
    )
    p.add_argument(
        "--http-connections", default="64,1000", help="wrk connection counts, comma-separated (default 64,1000)"
    )
    p.add_argument(
        "--http-duration", type=float, default=10.0, help="seconds of wrk per server and connection count (default 10)"
    )
    p.add_argument(
        "--gateway-processes",
        default="1,2",
        help="gateway process counts to measure, one gateway run each (FLASHSALE_GATEWAY_PROCESSES), "
        "comma-separated (default 1,2)",
    )
    p.add_argument(
        "--gateway-args",
        default="",
        help="extra options for the gateway under test, one shell-quoted string (default none), e.g. '--processes 2'",
    )
    p.add_argument(
        "--counter-rate",
        type=float,
        default=None,
        help=f"engagement events/s of the counters' fixed-rate steps (default {metrics.Options.rate:.0f})",
    )
    p.add_argument("--out", default="bench-results.json", help="JSON output file (default bench-results.json)")
    p.add_argument(
        "--report",
        default="docs/BENCHMARKS.md",
        help="Markdown report, written with 'all' (default docs/BENCHMARKS.md)",
    )
    args = p.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        print(f"bench: --rates {args.rates!r}: expected numbers separated by commas", file=sys.stderr)
        return 2
    try:
        connections = [str(int(c)) for c in args.http_connections.split(",") if c.strip()]
        processes = [str(int(n)) for n in args.gateway_processes.split(",") if n.strip()]
    except ValueError:
        print(
            "bench: --http-connections / --gateway-processes: expected integers separated by commas",
            file=sys.stderr,
        )
        return 2
    opts: dict[str, Any] = {
        "rates": rates,
        "duration": args.duration,
        "backlog": args.backlog,
        "naive_backlog": args.naive_backlog,
        "single_backlog": args.single_backlog,
        "limit_batched_attempts": args.limit_backlog,
        "limit_single_attempts": args.limit_backlog // 10,
        "http_connections": connections,
        "http_duration_s": args.http_duration,
        "http_gateway_args": args.gateway_args,
        "http_gateway_processes": processes,
    }
    if args.counter_rate is not None:
        opts["metrics_rate"] = args.counter_rate
    return run_all(args.which, opts, args.out, args.report if args.which == "all" else None)


if __name__ == "__main__":
    sys.exit(main())
