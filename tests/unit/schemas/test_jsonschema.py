"""The generated JSON Schema files: committed = generated, faithful to the specs, and they validate."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from schemas import jsonschema as gen
from schemas.events import ENVELOPE_REQUIRED, PAYLOAD_SPECS, PAYLOADS
from tests.unit.schemas.schema_samples import ERROR_CASES, Mutator, sample_dict

# Rules JSON Schema cannot state (see schemas/jsonschema.py); the Python validator still enforces them.
NOT_EXPRESSIBLE = {"float for int", "sale window reversed"}


def test_committed_files_equal_generated() -> None:
    assert gen.differences() == [], "schemas/json is stale: run python -m schemas.jsonschema"


def test_check_flag_detects_stale_missing_and_unexpected(tmp_path: Path) -> None:
    assert gen.main(["--check", "--dir", str(tmp_path)]) == 1
    assert gen.main(["--dir", str(tmp_path)]) == 0
    assert gen.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "order.placed.json").write_text("{}", encoding="utf-8")
    (tmp_path / "old.json").write_text("{}", encoding="utf-8")
    (tmp_path / "cart.added.json").unlink()
    assert sorted(gen.differences(tmp_path)) == ["missing cart.added.json", "stale order.placed.json",
                                                 "unexpected old.json"]
    gen.write(tmp_path)
    assert gen.differences(tmp_path) == []


def test_one_file_per_type_plus_union_and_record() -> None:
    assert set(gen.build()) == {f"{t}.json" for t in PAYLOADS} | {"event.json", "record.json"}


@pytest.mark.parametrize("type_", sorted(PAYLOADS))
def test_schema_mirrors_the_specs(type_: str) -> None:
    schema = gen.build()[f"{type_}.json"]
    assert schema["required"] == list(ENVELOPE_REQUIRED)
    assert schema["properties"]["type"] == {"const": type_}
    data = schema["properties"]["data"]
    specs = PAYLOAD_SPECS[type_]
    assert list(data["properties"]) == [s.name for s in specs]
    assert data["required"] == [s.name for s in specs if s.required]
    assert data["additionalProperties"] is False and schema["additionalProperties"] is False
    for s in specs:
        prop = data["properties"][s.name]
        json_type = {int: "integer", float: "number", str: "string"}[s.kind]
        assert prop["type"] == ([json_type, "null"] if s.optional else json_type)
        assert prop.get("minimum") == s.meta.get("min") and prop.get("maximum") == s.meta.get("max")
        if "enum" in s.meta:
            assert [v for v in prop["enum"] if v is not None] == list(s.meta["enum"])
        elif s.kind is str:
            assert prop["maxLength"] == s.meta.get("max_len", 2000)
            assert prop.get("minLength") == (None if s.meta.get("allow_empty") else 1)


# --- real validation, with the jsonschema package when present (kubernetes-validate brings it) --------------


@pytest.fixture(scope="module")
def validators() -> dict[str, Any]:
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    files = gen.build()
    registry = referencing.Registry().with_resources(
        (schema["$id"], referencing.Resource.from_contents(schema)) for schema in files.values())
    out = {}
    for name, schema in files.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        out[name] = jsonschema.Draft202012Validator(schema, registry=registry,
                                                    format_checker=jsonschema.FormatChecker())
    return out


@pytest.mark.parametrize("type_", sorted(PAYLOADS))
def test_valid_samples_pass(type_: str, validators: dict[str, Any]) -> None:
    sample = sample_dict(type_)
    for name in (f"{type_}.json", "event.json", "record.json"):
        errors = list(validators[name].iter_errors(sample))
        assert errors == [], (name, [e.message for e in errors])
    assert list(validators["record.json"].iter_errors([sample, sample])) == []


def test_record_schema_rejects_empty_batch(validators: dict[str, Any]) -> None:
    assert not validators["record.json"].is_valid([])
    assert not validators["record.json"].is_valid([sample_dict(), {"type": "order.placed"}])


def test_type_schema_rejects_other_types(validators: dict[str, Any]) -> None:
    assert not validators["order.placed.json"].is_valid(sample_dict("cart.added"))


@pytest.mark.parametrize(("type_", "mutate"), [(c[1], c[2]) for c in ERROR_CASES if c[0] not in NOT_EXPRESSIBLE],
                         ids=[c[0] for c in ERROR_CASES if c[0] not in NOT_EXPRESSIBLE])
def test_invalid_events_fail(type_: str, mutate: Mutator, validators: dict[str, Any]) -> None:
    obj = copy.deepcopy(sample_dict(type_))
    mutate(obj)
    assert not validators["event.json"].is_valid(obj)
    assert not validators["record.json"].is_valid(obj)
    if obj.get("type") == type_:
        assert not validators[f"{type_}.json"].is_valid(obj)


def test_committed_files_are_valid_json() -> None:
    for path in sorted(gen.DEFAULT_DIR.glob("*.json")):
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path
