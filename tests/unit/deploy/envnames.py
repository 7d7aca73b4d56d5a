"""The FLASHSALE_* variables the code reads, found in the source (so deploy files cannot drift from it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("flashsale", "kernel", "streams", "producers", "consumers")

# env.str("BROKER_URL", ...), env.int("PARTITIONS", ...) ... on a kernel.env.Env, or a literal FLASHSALE_X.
_ENV_CALL = re.compile(r"\benv\.(?:str|int|float|bool|opt_str|raw)\(\s*\"([A-Z][A-Z0-9_]*)\"")
_LITERAL = re.compile(r"\"(FLASHSALE_[A-Z][A-Z0-9_]*)\"")
_USED = re.compile(r"\b(FLASHSALE_[A-Z][A-Z0-9_]*)\b")


def read_by_code() -> set[str]:
    names: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            names |= {f"FLASHSALE_{n}" for n in _ENV_CALL.findall(text)}
            names |= set(_LITERAL.findall(text))
    return names


def used_in(text: str) -> set[str]:
    return set(_USED.findall(text))
