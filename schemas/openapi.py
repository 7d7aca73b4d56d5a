"""OpenAPI 3.1 building blocks the gateway's and the read API's descriptions share (pure data, no I/O).

The event schemas are ``schemas.jsonschema.components()``, the ones generated from the msgspec
models, with their ``$ref`` targets moved from ``#/$defs/`` to ``#/components/schemas/``: the
HTTP description restates no field of the contract. Each server builds its own document
(``producers.gateway.openapi``, ``consumers.openapi``) and serves it at ``GET /openapi.json``;
the committed copies live in docs/openapi/ and a test keeps them equal to what the code builds.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from schemas.events import ENVELOPES, ID_PATTERN, MAX_ID_LEN, PAYLOADS
from schemas.jsonschema import components

OPENAPI_VERSION: Final = "3.1.0"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
_DEFS: Final = "#/$defs/"
_COMPONENTS: Final = "#/components/schemas/"
DOCS_DIR: Final = Path(__file__).resolve().parent.parent / "docs" / "openapi"

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"{_COMPONENTS}{name}"}


def _moved(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (_COMPONENTS + v.removeprefix(_DEFS) if k == "$ref" and isinstance(v, str)
                    and v.startswith(_DEFS) else _moved(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_moved(v) for v in node]
    return node


def event_components(types: Iterable[str] | None = None) -> dict[str, Schema]:
    """The generated envelope and payload schemas (all, or those of ``types`` with their payloads),
    referencing each other under ``#/components/schemas/``."""
    defs = components()
    if types is not None:
        wanted = {n for t in types for n in (ENVELOPES[t].__name__, PAYLOADS[t].__name__)}
        defs = {k: v for k, v in defs.items() if k in wanted}
    return {name: _moved(copy.deepcopy(schema)) for name, schema in defs.items()}


def envelope_name(type_: str) -> str:
    return ENVELOPES[type_].__name__


def key_id(description: str) -> Schema:
    """A path or body id that goes into Redis keys: the contract's id charset and length."""
    return {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN, "pattern": ID_PATTERN,
            "description": description}


ITEM_ERROR: Final[Schema] = {
    "type": "object",
    "required": ["index", "field", "message"],
    "properties": {
        "index": {"type": "integer", "description": "the item's position in the request (-1: the whole body)"},
        "field": {"type": "string", "description": "the offending field, dotted (data.qty); empty: the item"},
        "message": {"type": "string", "minLength": 1},
    },
}

ERROR: Final[Schema] = {
    "type": "object",
    "description": "Every 4xx and 5xx answer: a stable machine code in `error`, a sentence in `message`; "
                   "requests that were validated list each bad item or field in `errors`.",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "minLength": 1, "description": "stable machine code (invalid_order, ...)"},
        "message": {"type": "string", "minLength": 1},
        "errors": {"type": "array", "items": ref("ItemError"), "maxItems": 100},
        "invalid": {"type": "integer", "minimum": 1, "description": "how many items or fields were invalid"},
    },
}


def json_body(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def answer(description: str, schema: Schema | None = None, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if headers:
        out["headers"] = headers
    if schema is not None:
        out["content"] = json_body(schema)
    return out


def header(description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


def document(title: str, version: str, description: str, paths: dict[str, Any], schemas: dict[str, Schema],
             security_schemes: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": JSON_SCHEMA_DIALECT,
        "info": {"title": title, "version": version, "description": description,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.items())), "securitySchemes": security_schemes},
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None, prog: str, path: Path, build: Callable[[], dict[str, Any]]) -> int:
    """``prog`` writes ``path`` from ``build()``; ``--check`` exits 1 when the committed file differs."""
    parser = argparse.ArgumentParser(prog=prog, description=f"Write the OpenAPI description {path.name}.")
    parser.add_argument("--out", type=Path, default=path, help=f"output file (default: {path})")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the code")
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
        if current != text:
            sys.stderr.write(f"{args.out} is {'stale' if current is not None else 'missing'}; run: python -m {prog}\n")
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {args.out}\n")
    return 0
