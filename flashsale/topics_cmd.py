"""``flashsale topics``: create the pipeline's topics (idempotent) from FLASHSALE_* settings."""

from __future__ import annotations

import argparse
import asyncio
import sys

from kernel.kafka_admin import ensure_topics
from kernel.settings import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flashsale topics",
                                description="Create every pipeline topic that does not exist yet. Uses "
                                            "FLASHSALE_BROKER_URL, FLASHSALE_TOPIC_PREFIX, FLASHSALE_PARTITIONS "
                                            "and FLASHSALE_REPLICATION unless given here.")
    p.add_argument("--partitions", type=int, help="partitions of the keyed topics (default FLASHSALE_PARTITIONS, 8)")
    p.add_argument("--replication", type=int, help="replication factor (default FLASHSALE_REPLICATION, 1)")
    args = p.parse_args(argv)
    from streams.settings import get_settings

    try:
        s = get_settings().updated({"partitions": args.partitions, "replication": args.replication},
                                   {"partitions": "--partitions", "replication": "--replication"})
    except ConfigError as exc:
        print(f"flashsale topics: {exc}", file=sys.stderr)
        return 2
    try:
        names = asyncio.run(ensure_topics(s.bootstrap, s.topic_prefix, s.partitions, s.replication,
                                          kafka_auth=s.kafka_auth))
    except Exception as exc:  # noqa: BLE001 - report any broker failure plainly
        print(f"flashsale topics: cannot create topics on {s.bootstrap}: {exc}", file=sys.stderr)
        return 1
    for logical, name in names.items():
        print(f"{logical:<16} {name}")
    return 0
