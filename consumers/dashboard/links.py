"""``flashsale dashboard-link``: print a signed, expiring dashboard link for one room or every room, or a
distributor's token for its own commission ledger."""

from __future__ import annotations

import argparse
import sys
from typing import Final
from urllib.parse import quote

from consumers.access import Signer
from consumers.dashboard.settings import get_settings
from kernel.settings import ConfigError

MAX_HOURS: Final = 24 * 30


def link(base_url: str, signer: Signer, room_id: str | None, ttl_s: float) -> str:
    """The page URL for ``room_id`` (None: the room list and every room) valid for ``ttl_s``."""
    token = signer.mint(room_id, ttl_s)
    base = base_url.rstrip("/")
    return f"{base}/?t={token}" if room_id is None else f"{base}/rooms/{quote(room_id, safe='')}?t={token}"


def ledger_link(base_url: str, signer: Signer, room_id: str, distributor_id: str, ttl_s: float) -> str:
    """The read API URL of one distributor's ledger in a room, with a token that opens only that."""
    token = signer.mint(room_id, ttl_s, distributor_id=distributor_id)
    return (f"{base_url.rstrip('/')}/api/rooms/{quote(room_id, safe='')}/distributors/"
            f"{quote(distributor_id, safe='')}/ledger?t={token}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flashsale dashboard-link",
        description="Print a dashboard link signed with FLASHSALE_DASHBOARD_KEY (the key the dashboard runs "
                    "with). A room link opens that room's page, API and live feed only; --all-rooms opens "
                    "the room list and every room. Anyone holding the link sees the data until it expires.")
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument("--room", help="the room the link opens")
    scope.add_argument("--all-rooms", action="store_true", help="a host link: the room list and every room")
    p.add_argument("--distributor", help="with --room: a token that opens only this distributor's commission "
                                         "ledger in the room (GET /api/rooms/{room}/distributors/{id}/ledger); "
                                         "prints the ledger URL with the token (default: none, a room link)")
    p.add_argument("--hours", type=float, default=12.0, help=f"validity in hours (default 12, at most {MAX_HOURS})")
    p.add_argument("--base-url", help="the dashboard's public URL (default http://FLASHSALE_DASHBOARD_HOST:_PORT)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"flashsale dashboard-link: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    if settings.key is None:
        print("flashsale dashboard-link: FLASHSALE_DASHBOARD_KEY is not set; set it to the key the dashboard "  # noqa: T201
              "runs with", file=sys.stderr)
        return 2
    if not 0 < args.hours <= MAX_HOURS:
        print(f"flashsale dashboard-link: --hours must be more than 0 and at most {MAX_HOURS}",  # noqa: T201
              file=sys.stderr)
        return 2
    if args.room is not None and not 0 < len(args.room) <= 128:
        print("flashsale dashboard-link: --room must be 1-128 characters", file=sys.stderr)  # noqa: T201
        return 2
    if args.distributor is not None and (args.room is None or not 0 < len(args.distributor) <= 128):
        print("flashsale dashboard-link: --distributor needs --room and 1-128 characters",  # noqa: T201
              file=sys.stderr)
        return 2
    base = args.base_url or f"http://{settings.host}:{settings.port}"
    signer = Signer(settings.key.get_secret_value().encode())
    if args.distributor is not None:
        print(ledger_link(base, signer, args.room, args.distributor, args.hours * 3600))  # noqa: T201
        return 0
    print(link(base, signer, None if args.all_rooms else args.room, args.hours * 3600))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
