"""``flashsale simulate``: publish a simulated live stream with flash sales, in real time or faster."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import KafkaError

from kernel.log import configure_logging
from kernel.settings import ConfigError
from producers.simulation.expected import expected
from producers.simulation.model import SimulationParams
from producers.simulation.plan import MAX_RUN_ID_LEN, build_plan
from producers.simulation.plan_types import Plan
from producers.simulation.runner import Progress, Runner, RunStats
from producers.simulation.settings import SimulatorSettings, get_settings

logger = logging.getLogger("producers.simulator")


def parse(argv: list[str] | None, settings: SimulatorSettings) -> argparse.Namespace:
    d = SimulationParams()
    p = argparse.ArgumentParser(
        prog="flashsale simulate",
        description="Publish a simulated live stream: viewers arriving and leaving, likes, comments, shares, "
                    "product clicks and cart adds, and flash sales with an order burst far above the allotment "
                    "(retries, per-user-limit abuse, duplicate sends), then payments, cancellations and "
                    "abandoned reservations. Broker, topic prefix and Redis default to FLASHSALE_* variables.")
    g = p.add_argument_group("the stream")
    g.add_argument("--rooms", type=int, default=d.rooms, help=f"live rooms (default {d.rooms})")
    g.add_argument("--viewers", type=int, default=d.viewers, help=f"viewers per room (default {d.viewers})")
    g.add_argument("--duration", type=float, default=d.duration_s,
                   help=f"stream length in simulated seconds (default {d.duration_s:g})")
    g.add_argument("--sales", type=int, default=d.sales, help=f"flash sales per room (default {d.sales})")
    g.add_argument("--first-sale-at", type=float, default=d.first_sale_at_s,
                   help=f"simulated second the first sale starts (default {d.first_sale_at_s:g})")
    g.add_argument("--sale-window", type=float, default=d.sale_window_s,
                   help=f"seconds each sale stays open (default {d.sale_window_s:g})")
    g.add_argument("--allotment", type=int, default=d.allotment, help=f"units per sale (default {d.allotment})")
    g.add_argument("--attempts-factor", type=float, default=d.attempts_factor,
                   help=f"order attempts per sale = allotment x factor (default {d.attempts_factor:g})")
    g.add_argument("--per-user-limit", type=int, default=d.per_user_limit,
                   help=f"units one user may hold per sale (default {d.per_user_limit})")
    g.add_argument("--ttl", type=int, default=d.ttl_s, help=f"reservation TTL in seconds (default {d.ttl_s})")
    g.add_argument("--price", type=int, default=d.price, help=f"unit price in minor units (default {d.price})")
    g.add_argument("--pay-fraction", type=float, default=d.pay_fraction,
                   help=f"accepted orders that get paid (default {d.pay_fraction:g})")
    g.add_argument("--cancel-fraction", type=float, default=d.cancel_fraction,
                   help=f"accepted orders that get cancelled (default {d.cancel_fraction:g}); the rest expire")
    g.add_argument("--duplicate-fraction", type=float, default=d.duplicate_fraction,
                   help=f"order requests re-sent verbatim (default {d.duplicate_fraction:g})")
    g.add_argument("--seed", type=int, default=d.seed, help=f"random seed of the plan (default {d.seed})")
    g.add_argument("--run-id", default=None,
                   help="prefix of every id (default: derived from the start time, so reruns never collide); "
                        "the same --seed and --run-id give the same events")
    r = p.add_argument_group("publishing")
    r.add_argument("--speed", type=float, default=settings.speed,
                   help=f"simulated seconds per wall second (default {settings.speed:g}, FLASHSALE_SIM_SPEED)")
    r.add_argument("--as-fast-as-possible", "--afap", action="store_true", dest="afap",
                   help="ignore the clock and publish as fast as the broker acknowledges")
    r.add_argument("--broker", default=settings.broker_url,
                   help="Kafka bootstrap, e.g. kafka://127.0.0.1:9092 (default FLASHSALE_BROKER_URL)")
    r.add_argument("--prefix", default=settings.topic_prefix,
                   help=f"topic prefix (default {settings.topic_prefix!r}, FLASHSALE_TOPIC_PREFIX)")
    r.add_argument("--redis", default=settings.redis_url,
                   help="Redis URL to look up decisions that were missed on the topic (default FLASHSALE_REDIS_URL)")
    r.add_argument("--redis-cluster", action="store_true", default=settings.redis_cluster,
                   help="talk Redis Cluster protocol to --redis (default FLASHSALE_REDIS_CLUSTER)")
    r.add_argument("--no-feedback", action="store_true", default=not settings.feedback,
                   help="do not read decisions: pay for the orders a reference stock model accepts")
    r.add_argument("--feedback-grace", type=float, default=settings.feedback_grace_s,
                   help="seconds without any decision before falling back to optimistic payments "
                        f"(default {settings.feedback_grace_s:g})")
    r.add_argument("--no-create-topics", action="store_true", default=not settings.auto_create_topics,
                   help="do not create missing topics")
    r.add_argument("--chunk", type=int, default=5000, help="max events per publish call (default 5000)")
    r.add_argument("--loop", action="store_true", help="repeat the stream with new ids until interrupted (default off)")
    r.add_argument("--loops", type=int, default=0, help="repeat this many times (implies --loop; default 0 = forever)")
    r.add_argument("--pause", type=float, default=5.0, help="seconds between loops (default 5)")
    o = p.add_argument_group("output")
    o.add_argument("--dry-run", action="store_true",
                   help="build the plan and print a JSON summary of what it would send (events by type, "
                        "expected sales outcome); publish nothing (default off)")
    o.add_argument("--json", action="store_true", help="print a JSON summary of each run on stdout (default off)")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress lines (default off)")
    o.add_argument("--log-level", default="warning", help="logging level (default warning)")
    return p.parse_args(argv)


# settings field → the flag that sets it (the flags default to the settings, so every field is passed)
FLAGS = {"speed": "--speed", "broker_url": "--broker", "topic_prefix": "--prefix", "redis_url": "--redis",
         "redis_cluster": "--redis-cluster", "feedback": "--no-feedback", "feedback_grace_s": "--feedback-grace",
         "auto_create_topics": "--no-create-topics"}


def settings_from(args: argparse.Namespace, settings: SimulatorSettings) -> SimulatorSettings:
    """The settings with the command line applied, validated like the environment; raises ConfigError."""
    return settings.updated({"speed": args.speed, "broker_url": args.broker, "topic_prefix": args.prefix,
                             "redis_url": args.redis, "redis_cluster": args.redis_cluster,
                             "feedback": not args.no_feedback, "feedback_grace_s": args.feedback_grace,
                             "auto_create_topics": not args.no_create_topics}, FLAGS)


def params_from(args: argparse.Namespace, iteration: int = 0) -> SimulationParams:
    return SimulationParams(
        seed=args.seed + iteration, rooms=args.rooms, viewers=args.viewers, duration_s=args.duration,
        sales=args.sales, allotment=args.allotment, attempts_factor=args.attempts_factor,
        per_user_limit=args.per_user_limit, ttl_s=args.ttl, price=args.price, first_sale_at_s=args.first_sale_at,
        sale_window_s=args.sale_window, pay_fraction=args.pay_fraction, cancel_fraction=args.cancel_fraction,
        duplicate_fraction=args.duplicate_fraction)


def default_run_id() -> str:
    return "sim" + _base36(int(time.time() * 10) % 36**7)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def run_id_for(base: str, iteration: int, looping: bool) -> str:
    return f"{base}-{iteration}" if looping else base


def print_progress(p: Progress) -> None:
    st = p.stats
    line = (f"[simulate] {p.elapsed_s:6.1f}s  sim {p.sim_s:6.1f}s  {p.phase:<22}  sent {p.sent:>8,}  "
            f"{p.rate:>7,.0f}/s  orders {st.orders_sent:>6,}")
    if st.mode == "feedback" or st.decided:
        line += f"  decided {st.decided:,} (accepted {st.accepted:,})"
    line += f"  pay/cancel {st.by_type.get('order.paid', 0) + st.by_type.get('order.cancelled', 0):,}  [{st.mode}]"
    print(line, file=sys.stderr, flush=True)


def summary(plan: Plan, stats: RunStats, wall_s: float) -> dict[str, Any]:
    return {"run_id": plan.run_id, "seed": plan.params.seed, "mode": stats.mode, "fell_back": stats.fell_back,
            "wall_s": round(wall_s, 3), "sent": stats.sent, "publish_calls": stats.publish_calls,
            "by_topic": dict(stats.by_topic), "by_type": dict(stats.by_type), "orders": stats.orders_sent,
            "decided": stats.decided, "accepted": stats.accepted, "rejected": stats.rejected,
            "undecided": stats.undecided, "sales": [s.sale_id for s in plan.sales]}


async def simulate(args: argparse.Namespace, settings: SimulatorSettings) -> int:
    from kernel.kafka_admin import ensure_topics
    from producers.decisions import DecisionWaiter
    from producers.sdk import Publisher
    from schemas.topics import TopicNames

    bootstrap = settings.bootstrap
    if settings.auto_create_topics:
        await asyncio.wait_for(ensure_topics(bootstrap, settings.topic_prefix, settings.partitions,
                                                 kafka_auth=settings.kafka_auth), 30)
    base = args.run_id or default_run_id()
    looping = args.loop or args.loops > 0
    iteration = 0
    async with Publisher.from_settings(settings.publisher) as publisher:
        while True:
            params = params_from(args, iteration)
            run_id = run_id_for(base, iteration, looping)
            waiter: DecisionWaiter | None = None
            redis: Any = None
            if settings.feedback:
                orders = params.attempts_per_sale * params.sales * params.rooms
                waiter = DecisionWaiter(bootstrap, TopicNames(settings.topic_prefix).decisions,
                                        remember=max(20_000, 2 * orders), output_keys=settings.output_keys,
                                        kafka_auth=settings.kafka_auth)
                try:
                    await waiter.start()  # before the first order: decisions are followed from the end
                except ConnectionError as exc:
                    logger.warning("cannot follow decisions (%s); paying optimistically", exc)
                    waiter = None
                if waiter is not None and settings.redis_url:
                    from kernel.redis import connect

                    redis = connect(settings.redis_url, settings.redis_cluster)
            plan = build_plan(params, run_id=run_id, t0_ms=int(time.time() * 1000),
                              include_payments=waiter is None)
            started = time.monotonic()
            try:
                runner = Runner(plan, publisher, speed=None if args.afap else settings.speed, decisions=waiter,
                                redis=redis, chunk_events=args.chunk, feedback_grace_s=settings.feedback_grace_s,
                                progress=None if args.quiet else print_progress)
                stats = await runner.run()
            finally:
                if waiter is not None:
                    await waiter.close()
                if redis is not None:
                    await redis.aclose()
            result = summary(plan, stats, time.monotonic() - started)
            if args.json:
                print(json.dumps(result), flush=True)
            if not args.quiet:
                print(f"[simulate] run {run_id} done in {result['wall_s']:.1f}s: sent {stats.sent:,} events, "
                      f"{stats.orders_sent:,} orders, {stats.accepted:,} accepted seen, mode {stats.mode}",
                      file=sys.stderr, flush=True)
            iteration += 1
            if not looping or (args.loops and iteration >= args.loops):
                return 0
            await asyncio.sleep(args.pause)


def main(argv: list[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    try:
        settings = get_settings(environ)
    except ConfigError as exc:
        print(f"flashsale simulate: {exc}", file=sys.stderr)
        return 2
    args = parse(argv, settings)
    configure_logging(args.log_level)
    try:
        settings = settings_from(args, settings)
        params_from(args)
    except ValueError as exc:  # ConfigError included
        print(f"flashsale simulate: {exc}", file=sys.stderr)
        return 2
    if args.chunk < 1 or args.loops < 0 or args.pause < 0:
        print("flashsale simulate: --chunk must be >= 1, --loops and --pause >= 0", file=sys.stderr)
        return 2
    if args.run_id is not None and (not args.run_id or len(args.run_id) > MAX_RUN_ID_LEN - 8
                                    or any(c in args.run_id for c in " :{}")):
        print(f"flashsale simulate: --run-id must be 1..{MAX_RUN_ID_LEN - 8} characters without spaces, ':' "
              "or braces", file=sys.stderr)
        return 2
    if args.dry_run:
        plan = build_plan(params_from(args), run_id=args.run_id or "dry-run")
        print(json.dumps(expected(plan).to_dict(), indent=2))
        return 0
    try:
        return asyncio.run(simulate(args, settings))
    except KeyboardInterrupt:
        return 130
    except (ConnectionError, TimeoutError, OSError, KafkaError) as exc:
        print(f"flashsale simulate: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
