"""Logging set-up, the same for every entry point (worker, gateway, dashboard, simulator)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "info") -> None:
    """Configure the root logger once per process; call from ``main()``, never at import."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
