"""The ``flashsale`` command: one entry point, subcommands dispatched to their packages."""

from __future__ import annotations

import sys
from importlib import import_module

from kernel.settings import ConfigError

COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "flashsale.up",
        "start the embedded stack (broker, Redis, workers, gateway, dashboard) and a simulated sale",
    ),
    "worker": ("streams.__main__", "run a stream worker (Faust agents)"),
    "gateway": ("producers.gateway.__main__", "run the HTTP ingest gateway"),
    "dashboard": ("consumers.dashboard.__main__", "run the dashboard and read API server"),
    "dashboard-link": ("consumers.dashboard.links", "print a signed dashboard link for a room (or every room)"),
    "simulate": ("producers.simulator", "publish a simulated live sale"),
    "audit": ("flashsale.audit", "recompute every sale from the Kafka log and compare with Redis"),
    "topics": ("flashsale.topics_cmd", "create the pipeline's topics"),
    "report": ("flashsale.report", "write an HTML recap of a room's stream (GMV, viewers, sales, funnel)"),
}


def usage() -> str:
    lines = ["usage: flashsale COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "Run 'flashsale COMMAND --help' for a command's options.",
        "Settings come from FLASHSALE_* environment variables over the env file FLASHSALE_ENV_FILE",
        "(default .flashsale/endpoints.env, written by 'flashsale up'); see README.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        from flashsale import __version__

        print(f"flashsale {__version__}")
        return 0
    cmd = args[0]
    if cmd not in COMMANDS:
        print(f"flashsale: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = import_module(COMMANDS[cmd][0])
    try:
        return int(module.main(args[1:]) or 0)
    except ConfigError as exc:  # the shared bootstrap: a bad setting is one line and exit 2, for every command
        print(f"flashsale {cmd}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
