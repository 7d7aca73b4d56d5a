"""``flashsale dashboard``: serve the live host dashboard and the read API."""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from consumers.dashboard.settings import DashboardSettings, get_settings
from kernel.log import configure_logging
from kernel.settings import ConfigError

SHUTDOWN_TIMEOUT_S = 5.0
FLAGS = {"host": "--host", "port": "--port", "redis_url": "--redis-url",  # settings field → the flag that sets it
         "push_interval_s": "--push-interval"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashsale dashboard",
        description="Serve the live host dashboard (/), its SSE feed (/live/rooms/{room_id}), the read API "
                    "(/api/*), /metrics, /healthz and /readyz. Settings come from FLASHSALE_* variables "
                    "(FLASHSALE_REDIS_URL, FLASHSALE_DASHBOARD_HOST, FLASHSALE_DASHBOARD_PORT, "
                    "FLASHSALE_DASHBOARD_PUSH_INTERVAL_S, ...); options below override them.")
    parser.add_argument("--host", help=f"bind address (default {DashboardSettings.model_fields['host'].default})")
    parser.add_argument("--port", type=int, help=f"port (default {DashboardSettings.model_fields['port'].default})")
    parser.add_argument("--redis-url", help="Redis URL (default FLASHSALE_REDIS_URL)")
    parser.add_argument("--push-interval", type=float,
                        help="seconds between live pushes, 0.05-1.0 (default "
                             f"{DashboardSettings.model_fields['push_interval_s'].default}, "
                             "FLASHSALE_DASHBOARD_PUSH_INTERVAL_S)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings().updated({"host": args.host, "port": args.port, "redis_url": args.redis_url,
                                           "push_interval_s": args.push_interval}, FLAGS)
    except ConfigError as exc:
        print(f"flashsale dashboard: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging(settings.log_level)
    from consumers.dashboard.server import create_app

    app = create_app(settings)
    print(f"flashsale dashboard on http://{settings.host}:{settings.port}/", flush=True)  # noqa: T201
    web.run_app(app, host=settings.host, port=settings.port, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
