"""``python -m bench``: benchmarks on a throwaway embedded stack; prints a table, writes JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.report import run_all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run benchmarks on a throwaway embedded stack (Tansu + redis-server on free loopback ports). "
                    "Prints a table and writes JSON; 'all' also writes docs/BENCHMARKS.md.")
    p.add_argument("which", nargs="?", default="all",
                   choices=["all", "decode", "stock", "reference", "metrics", "dashboard"],
                   help="which benchmark (default: all)")
    p.add_argument("--rates", default="1000,5000,10000,15000", 
                   help="stock attempt rates per second, comma-separated (default 1000,5000,10000,15000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per fixed-rate step (default 10)")
    p.add_argument("--backlog", type=int, default=200_000, 
                   help="attempts in the sustained-throughput backlog (default 200000)")
    p.add_argument("--naive-backlog", type=int, default=30_000, 
                   help="backlog for the naive per-event agent (default 30000)")
    p.add_argument("--out", default="bench-results.json", help="JSON output file (default bench-results.json)")
    p.add_argument("--report", default="docs/BENCHMARKS.md", 
                   help="Markdown report, written with 'all' (default docs/BENCHMARKS.md)")
    args = p.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        print(f"bench: --rates {args.rates!r}: expected numbers separated by commas", file=sys.stderr)
        return 2
    opts: dict[str, Any] = {"rates": rates, "duration": args.duration, "backlog": args.backlog,
                            "naive_backlog": args.naive_backlog}
    return run_all(args.which, opts, args.out, args.report if args.which == "all" else None)


if __name__ == "__main__":
    sys.exit(main())
