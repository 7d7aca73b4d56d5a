"""JSON Schema (draft 2020-12) generated from the msgspec models, for producers in other languages.

``python -m schemas.jsonschema`` writes schemas/json/; ``--check`` exits 1 when the committed
files differ from what the models generate. Every file is self-contained (what it references is
bundled under ``$defs``), so validators need neither network access nor a base URI. ``event.json``
selects the branch by ``type`` (``if``/``then``), so an invalid event gets the errors of its own
type. The msgspec models stay the authority: two rules have no JSON Schema form (``sale.opened``
needs ``ends_at > starts_at``; JSON Schema's ``integer`` also admits ``1.0``, which the decoder
refuses), and repeated object keys are refused by the gateway and the SDK; each is stated in a
description.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Final

import msgspec

from schemas.codec import MAX_BATCH_ITEMS
from schemas.events import ENVELOPES, ID_PATTERN, KEY_ID_FIELDS, PAYLOADS, SaleOpened

DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
BASE_ID: Final = "https://flashsale.example/schemas/v1/"
DEFAULT_DIR: Final = Path(__file__).resolve().parent / "json"
_REF: Final = "#/$defs/{name}"
_RULES: Final[dict[str, str]] = {SaleOpened.TYPE: SaleOpened.RULE}
_NOTE: Final = ("Integers must be written without a fraction (1, not 1.0) and object keys must not repeat; "
                "the flashsale decoder refuses both.")


def components() -> dict[str, dict[str, Any]]:
    """Every envelope and payload schema, by model name, as msgspec generates them."""
    _, defs = msgspec.json.schema_components(list(ENVELOPES.values()), ref_template=_REF)
    for type_, cls in ENVELOPES.items():
        env = defs[cls.__name__]
        env["title"] = f"{type_} event"
        env["description"] = " ".join(filter(None, (
            f"The {type_} event ({PAYLOADS[type_].__name__}) in its versioned envelope.", _RULES.get(type_), _NOTE)))
        env["properties"]["type"] = {"const": type_}
        _key_id_patterns(env, defs[PAYLOADS[type_].__name__])
        if type_ in _RULES:
            defs[PAYLOADS[type_].__name__]["description"] = _RULES[type_]
    return defs


def _key_id_patterns(envelope: dict[str, Any], payload: dict[str, Any]) -> None:
    """The id charset the decoder checks (once per distinct value, not as a msgspec pattern)."""
    for name in KEY_ID_FIELDS:
        props = envelope["properties"] if name == "room_id" else payload["properties"]
        prop = props.get(name.removeprefix("data."))
        if prop is not None and "type" in prop:
            prop["pattern"] = ID_PATTERN


def _names(type_: str) -> tuple[str, str]:
    return ENVELOPES[type_].__name__, PAYLOADS[type_].__name__


def event_schema(type_: str, defs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The full envelope for one event type, its payload bundled under ``$defs``."""
    defs = components() if defs is None else defs
    env_name, payload_name = _names(type_)
    return {"$schema": DRAFT, "$id": f"{BASE_ID}{type_}.json", **copy.deepcopy(defs[env_name]),
            "$defs": {payload_name: defs[payload_name]}}


def _union_body(defs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    types = sorted(PAYLOADS)
    return {
        "title": "flashsale event",
        "description": "One event of any type; the `type` field selects the schema that applies. " + _NOTE,
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": types}},
        "allOf": [{"if": {"properties": {"type": {"const": t}}, "required": ["type"]},
                   "then": {"$ref": _REF.format(name=_names(t)[0])}} for t in types],
    }


def envelope_schema(defs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Any event: ``type`` picks exactly one per-type schema, so errors name that type's fields."""
    defs = components() if defs is None else defs
    return {"$schema": DRAFT, "$id": f"{BASE_ID}event.json", **_union_body(defs), "$defs": defs}


def record_schema(defs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One Kafka record value: a single event, or a non-empty batch (JSON array) of events."""
    defs = components() if defs is None else defs
    return {
        "$schema": DRAFT,
        "$id": f"{BASE_ID}record.json",
        "title": "flashsale Kafka record",
        "description": "A record holds one event (an object) or a batch of events (an array) that share one "
                       "partition key.",
        "if": {"type": "object"},
        "then": {"$ref": "#/$defs/Event"},
        "else": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_ITEMS, "items": {"$ref": "#/$defs/Event"}},
        "$defs": {"Event": _union_body(defs), **defs},
    }


def build() -> dict[str, dict[str, Any]]:
    """Every generated file: name → schema."""
    defs = components()
    files = {f"{t}.json": event_schema(t, defs) for t in sorted(PAYLOADS)}
    files["event.json"] = envelope_schema(defs)
    files["record.json"] = record_schema(defs)
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
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ from the models")
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
