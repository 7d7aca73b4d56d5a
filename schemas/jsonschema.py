"""JSON Schema (draft 2020-12) generated from the event specs, for producers in other languages.

``python -m schemas.jsonschema`` writes schemas/json/; ``--check`` exits 1 when the committed
files differ from what the specs generate. The validator in schemas.events stays the authority:
two rules have no JSON Schema form (``sale.opened`` needs ``ends_at > starts_at``; JSON Schema's
``integer`` also admits ``1.0``, which the validator rejects) and are stated in descriptions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final, get_type_hints

from schemas.codec import MAX_BATCH_ITEMS
from schemas.events import (
    ENVELOPE_REQUIRED,
    ENVELOPE_SPEC,
    MAX_TEXT_LEN,
    PAYLOAD_SPECS,
    PAYLOADS,
    SUPPORTED_VERSIONS,
    Event,
    FieldSpec,
)

DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
BASE_ID: Final = "https://flashsale.example/schemas/v1/"
DEFAULT_DIR: Final = Path(__file__).resolve().parent / "json"
_JSON_TYPES: Final[dict[type, str]] = {int: "integer", float: "number", str: "string"}
_EXTRA_RULES: Final[dict[str, str]] = {"sale.opened": "ends_at must be greater than starts_at."}


def field_schema(kind: type, optional: bool, meta: dict[str, Any], default: Any = None,
                 has_default: bool = False) -> dict[str, Any]:
    """One field's schema from its kind (int/float/str), nullability and validator metadata."""
    out: dict[str, Any] = {"type": [_JSON_TYPES[kind], "null"] if optional else _JSON_TYPES[kind]}
    if kind is str and "enum" not in meta:
        if not meta.get("allow_empty"):
            out["minLength"] = 1
        out["maxLength"] = meta.get("max_len", MAX_TEXT_LEN)
    if "enum" in meta:
        out["enum"] = list(meta["enum"]) + ([None] if optional else [])
    if "min" in meta:
        out["minimum"] = meta["min"]
    if "max" in meta:
        out["maximum"] = meta["max"]
    if has_default and default is not None:
        out["default"] = default
    return out


def payload_schema(type_: str) -> dict[str, Any]:
    specs: tuple[FieldSpec, ...] = PAYLOAD_SPECS[type_]
    out: dict[str, Any] = {
        "type": "object",
        "properties": {s.name: field_schema(s.kind, s.optional, s.meta, s.default, not s.required) for s in specs},
        "required": [s.name for s in specs if s.required],
        "additionalProperties": False,
    }
    if type_ in _EXTRA_RULES:
        out["description"] = _EXTRA_RULES[type_]
    return out


def _envelope_properties(type_schema: dict[str, Any], versions: list[int]) -> dict[str, Any]:
    hints = get_type_hints(Event)
    props: dict[str, Any] = {}
    for name, meta in ENVELOPE_SPEC.items():
        if name == "type":
            props[name] = type_schema
            continue
        hint = hints[name]
        args = getattr(hint, "__args__", ())
        kind = next(a for a in args if a is not type(None)) if args else hint
        props[name] = field_schema(kind, type(None) in args, meta)
    props["v"] = {"type": "integer", "enum": versions}
    props["data"] = {"type": "object"}
    return props


def event_schema(type_: str) -> dict[str, Any]:
    """The full envelope for one event type, with its payload under ``data``."""
    versions = sorted(SUPPORTED_VERSIONS[type_])
    props = _envelope_properties({"const": type_}, versions)
    props["data"] = payload_schema(type_)
    return {
        "$schema": DRAFT,
        "$id": f"{BASE_ID}{type_}.json",
        "title": f"{type_} event",
        "description": f"The {type_} event ({PAYLOADS[type_].__name__}) in its versioned envelope. "
                       f"{_EXTRA_RULES.get(type_, '')}".strip(),
        "type": "object",
        "properties": props,
        "required": list(ENVELOPE_REQUIRED),
        "additionalProperties": False,
    }


def envelope_schema() -> dict[str, Any]:
    """Any event: the envelope, then exactly one per-type schema (chosen by ``type``)."""
    types = sorted(PAYLOADS)
    defs = {t: _strip(event_schema(t)) for t in types}
    return {
        "$schema": DRAFT,
        "$id": f"{BASE_ID}event.json",
        "title": "flashsale event",
        "description": "One event of any type; the `type` field selects the payload schema.",
        "type": "object",
        "required": list(ENVELOPE_REQUIRED),
        "properties": {"type": {"enum": types}},
        "oneOf": [{"$ref": f"#/$defs/{t}"} for t in types],
        "$defs": defs,
    }


def record_schema() -> dict[str, Any]:
    """One Kafka record value: a single event, or a non-empty batch (JSON array) of events."""
    return {
        "$schema": DRAFT,
        "$id": f"{BASE_ID}record.json",
        "title": "flashsale Kafka record",
        "description": "A record holds one event or a batch of events that share one partition key.",
        "oneOf": [
            {"$ref": "event.json"},
            {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_ITEMS, "items": {"$ref": "event.json"}},
        ],
    }


def _strip(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id")}


def build() -> dict[str, dict[str, Any]]:
    """Every generated file: name → schema."""
    files = {f"{t}.json": event_schema(t) for t in sorted(PAYLOADS)}
    files["event.json"] = envelope_schema()
    files["record.json"] = record_schema()
    return files


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def differences(directory: Path = DEFAULT_DIR) -> list[str]:
    """Names of files that are missing, stale or unexpected in ``directory``."""
    expected = {name: render(schema) for name, schema in build().items()}
    out = []
    for name, text in expected.items():
        path = directory / name
        if not path.exists():
            out.append(f"missing {name}")
        elif path.read_text(encoding="utf-8") != text:
            out.append(f"stale {name}")
    if directory.exists():
        out += [f"unexpected {p.name}" for p in sorted(directory.glob("*.json")) if p.name not in expected]
    return out


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    expected = build()
    for stale in directory.glob("*.json"):
        if stale.name not in expected:
            stale.unlink()
    paths = []
    for name, schema in expected.items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.jsonschema",
                                     description="Generate JSON Schema files for every event type.")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="output directory (default: schemas/json)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ from the specs")
    args = parser.parse_args(argv)
    if args.check:
        diffs = differences(args.dir)
        for line in diffs:
            sys.stderr.write(f"{line}\n")
        if diffs:
            sys.stderr.write("run: python -m schemas.jsonschema\n")
        return 1 if diffs else 0
    paths = write(args.dir)
    sys.stdout.write(f"wrote {len(paths)} schema files to {args.dir}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
