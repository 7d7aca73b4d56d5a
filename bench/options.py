"""Benchmark options as frozen dataclasses, read from the command line's dict of settings."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def options_from(cls: type[T], src: Mapping[str, Any], prefix: str) -> T:
    """``cls`` with each field from ``src["<prefix>_<name>"]``, else ``src["<name>"]``, else its default,
    converted to the default's type (a string for a tuple field is split like a shell line)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        for key in (f"{prefix}_{f.name}", f.name):
            value = src.get(key)
            if value is None:
                continue
            default: Any = f.default
            if isinstance(default, tuple):
                values[f.name] = tuple(shlex.split(value) if isinstance(value, str) else value)
            else:
                values[f.name] = type(default)(value)
            break
    return cls(**values)
