"""The OpenAPI descriptions stay true: the committed files are what the code builds, they are valid
OpenAPI 3.1 (openapi-spec-validator and schemathesis both load them), and every route each aiohttp
app registers is described and every described operation is registered."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from openapi_spec_validator import validate

from consumers import openapi as read_openapi
from consumers.api import add_api_routes
from producers.gateway import openapi as gateway_openapi
from producers.gateway.app import create_app
from producers.gateway.settings import GatewaySettings
from schemas import openapi as oa
from schemas.events import INPUT_TYPES, OUTPUT_TYPES

Build = Callable[[], dict[str, Any]]
SPECS: list[tuple[str, Path, Build]] = [("gateway", gateway_openapi.PATH, gateway_openapi.build),
                                        ("read-api", read_openapi.PATH, read_openapi.build)]
METHODS = {"get", "put", "post", "delete", "patch", "options"}


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def registered(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route; aiohttp adds a HEAD beside each GET."""
    return {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.resource is not None and route.method != "HEAD"}


@pytest.mark.parametrize(("name", "path", "build"), SPECS, ids=[s[0] for s in SPECS])
def test_committed_description_is_what_the_code_builds(name: str, path: Path, build: Build) -> None:
    assert path.read_text(encoding="utf-8") == oa.render(build()), f"stale {path}: run python -m ...openapi"


@pytest.mark.parametrize(("name", "path", "build"), SPECS, ids=[s[0] for s in SPECS])
def test_description_is_valid_openapi_31(name: str, path: Path, build: Build) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises with the offending pointer
    schema = schemathesis.openapi.from_dict(doc)
    loaded = {(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())}
    assert loaded == operations(doc)


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "gateway.json"
    stale.write_text("{}\n", encoding="utf-8")
    assert gateway_openapi.main(["--check", "--out", str(stale)]) == 1
    assert gateway_openapi.main(["--out", str(stale)]) == 0
    assert gateway_openapi.main(["--check", "--out", str(stale)]) == 0


def test_every_gateway_route_is_described_and_every_operation_is_a_route() -> None:
    app = create_app(GatewaySettings(tokens=("t" * 16,)))
    assert registered(app) == operations(gateway_openapi.build())


def test_every_read_api_route_is_described_and_every_operation_is_a_route() -> None:
    app = web.Application()
    add_api_routes(app)
    assert registered(app) == operations(read_openapi.build())


def test_gateway_events_body_is_the_generated_event_schemas_inputs_only() -> None:
    doc = gateway_openapi.build()
    schemas = doc["components"]["schemas"]
    inputs = {item["$ref"].rsplit("/", 1)[-1] for item in schemas["InputEvent"]["oneOf"]}
    assert inputs == {oa.envelope_name(t) for t in INPUT_TYPES}
    assert not {oa.envelope_name(t) for t in OUTPUT_TYPES} & set(schemas)
    # the contract's bounds, not restated: the order body's qty is OrderPlaced.qty
    assert schemas["OrderRequest"]["properties"]["qty"] == schemas["OrderPlaced"]["properties"]["qty"]
    assert "#/$defs/" not in json.dumps(doc)
