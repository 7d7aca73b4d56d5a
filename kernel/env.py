"""Typed readers for ``FLASHSALE_*`` environment variables, with clear errors."""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping


class ConfigError(ValueError):
    """A FLASHSALE_* variable holds a value that cannot be used."""


class Env:
    """Reads ``FLASHSALE_<NAME>`` from a mapping (``os.environ`` by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None, prefix: str = "FLASHSALE_") -> None:
        self._env = os.environ if environ is None else environ
        self._prefix = prefix

    def raw(self, name: builtins.str) -> builtins.str | None:
        value = self._env.get(self._prefix + name)
        return value if value not in (None, "") else None

    def str(self, name: builtins.str, default: builtins.str) -> builtins.str:
        value = self.raw(name)
        return default if value is None else value

    def opt_str(self, name: builtins.str) -> builtins.str | None:
        return self.raw(name)

    def int(self, name: builtins.str, default: builtins.int, *,
            min: builtins.int | None = None, max: builtins.int | None = None) -> builtins.int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            out = int(value)
        except ValueError:
            raise ConfigError(f"{self._prefix}{name}={value!r}: expected an integer") from None
        return self._bounded(name, out, min, max)

    def float(self, name: builtins.str, default: builtins.float, *,
              min: builtins.float | None = None, max: builtins.float | None = None) -> builtins.float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            out = float(value)
        except ValueError:
            raise ConfigError(f"{self._prefix}{name}={value!r}: expected a number") from None
        return self._bounded(name, out, min, max)

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self.raw(name)
        if value is None:
            return default
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{self._prefix}{name}={value!r}: expected true or false")

    def _bounded(self, name: builtins.str, value: _N, lo: _N | None, hi: _N | None) -> _N:
        if lo is not None and value < lo:
            raise ConfigError(f"{self._prefix}{name}={value}: must be >= {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{self._prefix}{name}={value}: must be <= {hi}")
        return value


from typing import TypeVar  # noqa: E402

_N = TypeVar("_N", int, float)


def bootstrap_servers(broker_url: str) -> builtins.str:
    """``kafka://h1:9092;h2:9092`` or ``h1:9092,h2:9092`` → ``h1:9092,h2:9092``."""
    out = []
    for part in broker_url.replace(";", ",").split(","):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        if part:
            out.append(part if ":" in part else f"{part}:9092")
    if not out:
        raise ConfigError(f"broker URL {broker_url!r} names no host")
    return ",".join(out)
