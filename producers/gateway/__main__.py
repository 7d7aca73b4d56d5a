"""``flashsale gateway``: the HTTP ingest gateway (events, orders with decisions, metrics, health)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from kernel.log import configure_logging
from kernel.settings import ConfigError
from producers.gateway.settings import GatewaySettings, get_settings

# settings field → the flag that sets it
FLAGS = {"host": "--host", "port": "--port", "log_level": "--log-level", "processes": "--processes"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashsale gateway",
        description="Serve POST /v1/events, POST /v1/sales/{sale_id}/orders, GET /v1/sales/{sale_id}/orders/"
                    "{order_id}, POST .../orders/{order_id}/pay and /cancel, POST /v1/sales/{sale_id}/open, /close "
                    "and /stock, /metrics, /healthz and /readyz. Settings come from FLASHSALE_* variables "
                    "(FLASHSALE_BROKER_URL, FLASHSALE_REDIS_URL, FLASHSALE_TOPIC_PREFIX, FLASHSALE_GATEWAY_HOST, "
                    "FLASHSALE_GATEWAY_PORT, FLASHSALE_GATEWAY_TOKEN, FLASHSALE_GATEWAY_RATE_LIMIT, ...; see "
                    "docs/INGEST.md); options below override them.")
    parser.add_argument("--host", help=f"bind address (default {GatewaySettings.model_fields['host'].default})")
    parser.add_argument("--port", type=int, help=f"port (default {GatewaySettings.model_fields['port'].default})")
    parser.add_argument("--log-level", help="debug, info, warning or error (default FLASHSALE_LOG_LEVEL or info)")
    parser.add_argument("--processes", type=int,
                        help="gateway processes sharing the port with SO_REUSEPORT, supervised by this one (default "
                             "FLASHSALE_GATEWAY_PROCESSES or 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings().updated({"host": args.host, "port": args.port, "log_level": args.log_level,
                                           "processes": args.processes}, FLAGS)
    except ConfigError as exc:
        print(f"flashsale gateway: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging(settings.log_level)
    if settings.processes > 1:
        from producers.gateway.supervisor import Supervisor

        try:
            supervisor = Supervisor(settings)
        except ValueError as exc:
            print(f"flashsale gateway: {exc}", file=sys.stderr)  # noqa: T201
            return 2
        print(f"flashsale gateway on http://{settings.host}:{settings.port}/ ({settings.processes} processes)",  # noqa: T201
              flush=True)
        return supervisor.run()
    from producers.gateway.app import serve

    print(f"flashsale gateway on http://{settings.host}:{settings.port}/", flush=True)  # noqa: T201
    try:
        asyncio.run(serve(settings))
    except OSError as exc:  # e.g. the port is taken
        print(f"flashsale gateway: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
