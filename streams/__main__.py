"""``flashsale worker`` / ``python -m streams``: run a stream worker."""

from __future__ import annotations

import argparse
import asyncio
import sys

from kernel.log import configure_logging
from kernel.settings import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flashsale worker",
        description="Run a flashsale stream worker: the agents named by FLASHSALE_AGENTS (stock: reservations "
                    "and decisions; counters: room, sale and funnel counters; default both). Configured by "
                    "FLASHSALE_* environment variables and the env file FLASHSALE_ENV_FILE; see the README.")
    parser.add_argument("--log-level", default=None, help="debug, info, warning (default FLASHSALE_LOG_LEVEL or info)")
    args = parser.parse_args(argv)

    from streams.settings import get_settings

    try:
        settings = get_settings().updated({"log_level": args.log_level}, {"log_level": "--log-level"})
    except ConfigError as exc:
        print(f"flashsale worker: {exc}", file=sys.stderr)
        return 2
    level = settings.log_level.lower()
    configure_logging(level)

    if settings.auto_create_topics:
        from kernel.kafka_admin import ensure_topics

        try:
            asyncio.run(ensure_topics(settings.bootstrap, settings.topic_prefix, settings.partitions,
                                      settings.replication, kafka_auth=settings.kafka_auth))
        except Exception as exc:  # noqa: BLE001 - report any broker failure plainly
            print(f"flashsale worker: cannot reach the broker at {settings.bootstrap}: {exc}", file=sys.stderr)
            return 1
        asyncio.set_event_loop(asyncio.new_event_loop())

    import gc

    import faust

    from streams.app import create_app

    # Fewer, cheaper GC passes: a worker allocates many short-lived event objects per batch, and
    # collections of the long-lived start-up heap were measured at 3-4 us per event.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    pipeline = create_app(settings)
    worker = faust.Worker(pipeline.app, loglevel=level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
