"""The gateway's OpenAPI 3.1 description, built from the contract's generated schemas; ``GET /openapi.json``.

``python -m producers.gateway.openapi`` writes docs/openapi/gateway.json (``--check``: exit 1 when
it is stale). Request bodies reuse the event schemas field by field (an order body's ``qty`` is
``OrderPlaced.qty``), so a bound changed in schemas/events.py changes the description too.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Final

from producers.gateway.settings import GatewaySettings
from schemas import openapi as oa
from schemas.events import CHANNELS, INPUT_TYPES, REJECT_REASONS, SaleOpened

TITLE: Final = "flashsale ingest gateway"
VERSION: Final = "1"
PATH: Final = oa.DOCS_DIR / "gateway.json"
BEARER: Final[list[dict[str, list[str]]]] = [{"bearer": []}]
OPEN: Final[list[dict[str, list[str]]]] = []
ORDER_STATES: Final = ("reserved", "rejected", "sold", "expired", "cancelled", "refunded")
REQUEST_ID: Final[oa.Schema] = {"type": "string", "minLength": 1, "maxLength": 128,
                                "description": "idempotency key: the same request_id again is a replay"}
OPERATOR: Final = "the operator (the envelope's user_id; default merchant)"


def _defaults() -> tuple[int, int]:
    fields = GatewaySettings.model_fields
    return int(fields["max_events"].default), int(fields["max_body_bytes"].default)


def _prop(defs: dict[str, oa.Schema], model: str, name: str) -> oa.Schema:
    return copy.deepcopy(defs[model]["properties"][name])


def _body(defs: dict[str, oa.Schema], title: str, description: str, fields: dict[str, tuple[str, str] | oa.Schema],
          required: tuple[str, ...]) -> oa.Schema:
    """An object of ``fields``: each a (model, field) taken from the generated schemas, or a schema."""
    props = {name: _prop(defs, *src) if isinstance(src, tuple) else copy.deepcopy(src) for name, src in fields.items()}
    return {"title": title, "description": description, "type": "object", "properties": props,
            "required": list(required), "additionalProperties": False}


def _nullable(schema: oa.Schema) -> oa.Schema:
    default = schema.pop("default", None)
    out: oa.Schema = {"anyOf": [schema, {"type": "null"}]}
    if default is not None:
        out["default"] = default
    return out


def _request_schemas(defs: dict[str, oa.Schema], max_events: int) -> dict[str, oa.Schema]:
    env, order = "OrderPlacedEvent", "OrderPlaced"
    channel = _nullable(_prop(defs, env, "channel"))
    channel["default"] = "live_room"
    inputs = sorted(INPUT_TYPES)
    return {
        "InputEvent": {"description": "Any event a client may publish (the pipeline's outputs are refused with 403 "
                                      "for every token); `type` selects the schema.",
                       "oneOf": [oa.ref(oa.envelope_name(t)) for t in inputs]},
        "EventBatch": {"description": "One event, or a non-empty array of events; all are validated first and "
                                      "nothing is published unless every one is valid.",
                       "oneOf": [oa.ref("InputEvent"),
                                 {"type": "array", "minItems": 1, "maxItems": max_events,
                                  "items": oa.ref("InputEvent")}]},
        "OrderRequest": _body(defs, "order request", "The order.placed the gateway builds (event id from sale and "
                              "order id, time from the gateway's clock). order_id defaults to a random id.",
                              {"order_id": (order, "order_id"), "user_id": (env, "user_id"),
                               "room_id": (env, "room_id"), "sku": (order, "sku"), "qty": (order, "qty"),
                               "unit_price": (order, "unit_price"), "channel": channel,
                               "referrer_id": (env, "referrer_id")},
                              ("user_id", "room_id", "sku", "qty", "unit_price")),
        "OpenRequest": _body(defs, "open a sale", "sale.opened for the path's sale. ends_at must be greater than "
                             "starts_at. A changed definition updates price, limit, window and TTL; the SKU cannot "
                             "change (409 sku_mismatch).",
                             {"room_id": ("SaleOpenedEvent", "room_id"),
                              **{k: ("SaleOpened", k) for k in SaleOpened.__struct_fields__ if k != "sale_id"},
                              "user_id": {**_prop(defs, "SaleOpenedEvent", "user_id"), "description": OPERATOR},
                              "request_id": _nullable(dict(REQUEST_ID))},
                             ("room_id", *(k for k in defs["SaleOpened"]["required"] if k != "sale_id"))),
        "CloseRequest": _body(defs, "close a sale", "sale.closed for the path's sale.",
                              {"user_id": {**_prop(defs, "SaleClosedEvent", "user_id"), "description": OPERATOR},
                               "request_id": _nullable(dict(REQUEST_ID))}, ()),
        "StockRequest": _body(defs, "adjust stock", "stock.adjusted by delta; every adjustment needs its own "
                              "request_id.",
                              {"delta": ("StockAdjusted", "delta"), "reason": ("StockAdjusted", "reason"),
                               "user_id": {**_prop(defs, "StockAdjustedEvent", "user_id"), "description": OPERATOR},
                               "request_id": REQUEST_ID}, ("delta", "request_id")),
        "PayRequest": _body(defs, "pay an order", "user_id, when given, must be the order's owner.",
                            {"user_id": _nullable(_prop(defs, "OrderPaidEvent", "user_id")),
                             "amount": ("OrderPaid", "amount")}, ()),
        "CancelRequest": _body(defs, "cancel an order", "user_id is required unless the token has the payments "
                               "scope, and must be the order's owner.",
                               {"user_id": _nullable(_prop(defs, "OrderCancelledEvent", "user_id"))}, ()),
    }


def _answer_schemas(defs: dict[str, oa.Schema]) -> dict[str, oa.Schema]:
    int_or_null = {"type": ["integer", "null"]}
    str_or_null = {"type": ["string", "null"]}
    sale_ints = ("price", "allotted", "available", "reserved", "sold", "removal_pending", "per_user_limit",
                 "starts_at", "ends_at", "reservation_ttl_s")
    return {
        "Published": {"type": "object", "required": ["accepted", "records"],
                      "properties": {"accepted": {"type": "integer", "minimum": 1},
                                     "records": {"type": "integer", "minimum": 1,
                                                 "description": "Kafka records written (events are batched)"}}},
        "Decision": {"type": "object", "required": ["order_id", "sale_id", "outcome", "reason", "state", "qty",
                                                    "reserved_until"],
                     "properties": {"order_id": {"type": "string"}, "sale_id": {"type": "string"},
                                    "outcome": {"enum": ["accepted", "rejected"]},
                                    "reason": {"enum": [*REJECT_REASONS, None]},
                                    "state": {"enum": list(ORDER_STATES)}, "qty": {"type": "integer"},
                                    "reserved_until": int_or_null}},
        "Pending": {"type": "object", "required": ["status", "sale_id"],
                    "properties": {"status": {"const": "pending"}, "sale_id": {"type": "string"},
                                   "order_id": {"type": "string"}, "event_id": {"type": "string"},
                                   "status_url": {"type": "string"}}},
        "SoldOut": {"allOf": [oa.ref("Error"), {
            "type": "object", "required": ["sale_id", "order_id", "outcome", "reason"],
            "properties": {"error": {"const": "sold_out"}, "outcome": {"const": "rejected"},
                           "reason": {"const": "sold_out"}}}]},
        "Sale": {"type": "object", "required": ["sale_id", "sku", "room_id", "status", *sale_ints, "sold_out"],
                 "properties": {"sale_id": {"type": "string"}, "sku": str_or_null, "room_id": str_or_null,
                                "status": {"enum": ["open", "closed", None]},
                                **{k: {"type": "integer"} for k in sale_ints}, "sold_out": {"type": "boolean"}}},
        "Applied": {"type": "object", "required": ["status", "event_id", "sale"],
                    "properties": {"status": {"const": "applied"}, "event_id": {"type": "string"},
                                   "sale": oa.ref("Sale")}},
        "Settled": {"type": "object", "required": ["sale_id", "order_id", "state", "qty", "settled_at"],
                    "properties": {"sale_id": {"type": "string"}, "order_id": {"type": "string"},
                                   "state": {"enum": ["sold", "cancelled"]}, "qty": {"type": "integer"},
                                   "settled_at": int_or_null}},
        "Refused": {"allOf": [oa.ref("Error"), {
            "type": "object", "required": ["sale_id", "order_id", "reason", "state"],
            "properties": {"reason": {"type": "string"}, "state": {"enum": [*ORDER_STATES, None]}}}]},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}},
                   "additionalProperties": {"type": "string"}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "invalid request (errors names each field)", 401: "missing or wrong bearer token",
            403: "outside the token's scopes", 404: "not found", 408: "the body did not arrive in time",
            409: "refused by the sale's state", 413: "body or batch too large",
            415: "Content-Type is not JSON", 429: "rate limited (Retry-After)",
            503: "Kafka or Redis unavailable (Retry-After); retry the same request"}
    out: dict[str, Any] = {}
    for code in codes:
        headers = None
        if code == 401:
            headers = {"WWW-Authenticate": oa.header("Bearer realm=\"flashsale\"")}
        elif code in (429, 503):
            headers = {"Retry-After": oa.header("seconds")}
        out[str(code)] = oa.answer(text[code], oa.ref("Error"), headers)
    return out


BODY_ERRORS: Final = (400, 401, 403, 408, 413, 415, 429, 503)


def _sale_param() -> dict[str, Any]:
    return {"name": "sale_id", "in": "path", "required": True, "schema": oa.key_id("the sale")}


def _order_param() -> dict[str, Any]:
    return {"name": "order_id", "in": "path", "required": True, "schema": oa.key_id("the order")}


def _post(summary: str, op_id: str, body: str, responses: dict[str, Any], *, required: bool,
          params: list[dict[str, Any]], description: str = "") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "operationId": op_id, "security": BEARER, "parameters": params,
                          "requestBody": {"required": required, "content": oa.json_body(oa.ref(body))},
                          "responses": responses}
    if description:
        op["description"] = description
    return op


def _paths(max_events: int, max_body: int) -> dict[str, Any]:
    sale, order = _sale_param(), _order_param()
    pending = oa.answer("not decided within the decision timeout: poll status_url", oa.ref("Pending"),
                        {"Location": oa.header("the status URL")})
    control = {"200": oa.answer("applied by the worker: the sale's state", oa.ref("Applied")),
               "202": oa.answer("published; not applied within the decision timeout (retry: a replay)",
                                oa.ref("Pending")),
               **_errors(*BODY_ERRORS, 409)}
    settle = {"200": oa.answer("the order is in the state asked for (also for a retry)", oa.ref("Settled")),
              "202": pending, **_errors(*BODY_ERRORS), "409": oa.answer("refused, with the reason",
                                                                        oa.ref("Refused"))}
    plain = {"200": oa.answer("ok", oa.ref("Health"))}
    return {
        "/v1/events": {"post": _post(
            "Publish events", "postEvents", "EventBatch",
            {"202": oa.answer("every event published", oa.ref("Published")), **_errors(*BODY_ERRORS)},
            required=True, params=[],
            description=f"One event or an array of up to {max_events} (FLASHSALE_GATEWAY_MAX_EVENTS), body up to "
                        f"{max_body} bytes (FLASHSALE_GATEWAY_MAX_BODY_BYTES). Every event costs one rate-limit "
                        "token, valid or not. 403 forbidden_event_type for a type outside the token's scopes and "
                        "for every pipeline output; nothing is published unless every event is valid and allowed.")},
        "/v1/sales/{sale_id}/orders": {"post": _post(
            "Place an order and wait for its decision", "placeOrder", "OrderRequest",
            {"200": oa.answer("decided: accepted or rejected with a reason", oa.ref("Decision")), "202": pending,
             **_errors(*BODY_ERRORS), "409": oa.answer("the sale is sold out (answered without Kafka)",
                                                       oa.ref("SoldOut")),
             "429": oa.answer("rate limited, or (error units_in_flight) the sale's available units are all spoken "
                              "for by orders still being decided: not decided, retry with the same order_id "
                              "(answered without Kafka)", oa.ref("Error"), {"Retry-After": oa.header("seconds")})},
            required=True, params=[sale], description="Needs the orders scope. Admission control (429 "
                                                      "units_in_flight): docs/API.md.")},
        "/v1/sales/{sale_id}/orders/{order_id}": {"get": {
            "summary": "An order's decision", "operationId": "getOrder", "security": BEARER,
            "parameters": [sale, order],
            "responses": {"200": oa.answer("the decision and the order's state now", oa.ref("Decision")),
                          **_errors(401, 403, 404, 429, 503)}}},
        "/v1/sales/{sale_id}/orders/{order_id}/pay": {"post": _post(
            "Pay an order", "payOrder", "PayRequest", settle, required=False, params=[sale, order],
            description="Needs the payments scope. An empty body is {}.")},
        "/v1/sales/{sale_id}/orders/{order_id}/cancel": {"post": _post(
            "Cancel an order", "cancelOrder", "CancelRequest", settle, required=False, params=[sale, order],
            description="Needs the orders scope with the order's own user_id, or payments.")},
        "/v1/sales/{sale_id}/open": {"post": _post(
            "Open (or update) a sale", "openSale", "OpenRequest", control, required=True, params=[sale],
            description="Needs the control scope.")},
        "/v1/sales/{sale_id}/close": {"post": _post(
            "Close a sale", "closeSale", "CloseRequest", control, required=False, params=[sale],
            description="Needs the control scope; 409 unknown_sale for a sale never opened.")},
        "/v1/sales/{sale_id}/stock": {"post": _post(
            "Add or remove units", "adjustStock", "StockRequest", control, required=True, params=[sale],
            description="Needs the control scope; 409 unknown_sale for a sale never opened. Reserved units are "
                        "removed as their reservations release (removal_pending).")},
        "/healthz": {"get": {"summary": "The process runs", "operationId": "healthz", "security": OPEN,
                             "responses": plain}},
        "/readyz": {"get": {"summary": "Kafka connected and Redis answering", "operationId": "readyz",
                            "security": OPEN,
                            "responses": {"200": oa.answer("ready", oa.ref("Health")),
                                          "503": oa.answer("not ready: what is not", oa.ref("Health"))}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics", "security": OPEN,
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This description", "operationId": "openapi", "security": OPEN,
                                  "responses": {"200": oa.answer("OpenAPI 3.1", {"type": "object"})}}},
    }


def build() -> dict[str, Any]:
    """The description of every route ``producers.gateway.app.create_app`` registers."""
    max_events, max_body = _defaults()
    defs = oa.event_components(sorted(INPUT_TYPES))
    schemas = {**defs, **_request_schemas(defs, max_events), **_answer_schemas(defs),
               "Error": oa.ERROR, "ItemError": oa.ITEM_ERROR}
    description = ("HTTP ingest for flashsale: events, orders answered synchronously, payments, cancellations and "
                   "sale control, each behind a bearer token's scopes (engagement, orders, payments, control). "
                   f"Channels: {', '.join(CHANNELS)}. Money is integer minor units, times epoch milliseconds. "
                   "See docs/INGEST.md.")
    security = {"bearer": {"type": "http", "scheme": "bearer",
                           "description": "FLASHSALE_GATEWAY_TOKEN; without configured tokens every caller has "
                                          "FLASHSALE_GATEWAY_ANONYMOUS_SCOPES"}}
    return oa.document(TITLE, VERSION, description, _paths(max_events, max_body), schemas, security)


@functools.cache
def served() -> bytes:
    """What ``GET /openapi.json`` answers: built on the first request, the same bytes as the committed file."""
    return oa.render(build()).encode()


def main(argv: list[str] | None = None) -> int:
    return oa.main(argv, "producers.gateway.openapi", PATH, build)


if __name__ == "__main__":
    raise SystemExit(main())
