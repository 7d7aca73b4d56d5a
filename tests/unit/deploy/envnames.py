"""The FLASHSALE_* variables the code reads, found in the settings models (so deploy files cannot drift from it)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from kernel.settings import FlashsaleSettings

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("flashsale", "kernel", "streams", "producers", "consumers")

# A literal "FLASHSALE_X" (e.g. flashsale up setting a child's port); the models' fields are the rest.
_LITERAL = re.compile(r"\"(FLASHSALE_[A-Z][A-Z0-9_]*)\"")
_USED = re.compile(r"\b(FLASHSALE_[A-Z][A-Z0-9_]*)\b")


def settings_models() -> list[type[FlashsaleSettings]]:
    """Every settings model of the project: the FlashsaleSettings subclasses defined in a package's settings.py."""
    models: list[type[FlashsaleSettings]] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("settings.py")):
            module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
            models += [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, FlashsaleSettings)
                       and v.__module__ == module.__name__]
    return models


def read_by_code() -> set[str]:
    names = {name for model in settings_models() for name in model.env_names().values()}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            names |= set(_LITERAL.findall(path.read_text()))
    return names


def used_in(text: str) -> set[str]:
    return set(_USED.findall(text))
