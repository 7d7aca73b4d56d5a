"""The read API's OpenAPI 3.1 description (``consumers.api``); ``GET /openapi.json`` on the dashboard.

``python -m consumers.openapi`` writes docs/openapi/read-api.json (``--check``: exit 1 when stale).
"""

from __future__ import annotations

import functools
from typing import Any, Final

from schemas import keys
from schemas import openapi as oa
from schemas.events import CHANNELS, MAX_ID_LEN, REJECT_REASONS

TITLE: Final = "flashsale read API"
VERSION: Final = "1"
PATH: Final = oa.DOCS_DIR / "read-api.json"
MAX_ROOMS: Final = 500  # the room list's largest limit (consumers.api checks it)
AUTH: Final[list[dict[str, list[str]]]] = [{"bearer": []}, {"link": []}]
ROOM_TOTALS: Final = ("joins", "leaves", "likes", "comments", "shares", "clicks", "adds", "add_units", "removes",
                      "events", "orders", "paid", "gmv", "peak", "refunds", "refunded_gmv")
LEDGER_TOTALS: Final = ("orders", "paid_gmv", "commission_earned", "refunds", "refunded_gmv", "commission_clawed_back",
                        "commission_net", "net_gmv")

INT: Final[oa.Schema] = {"type": "integer"}
NUM: Final[oa.Schema] = {"type": "number"}
INT_OR_NULL: Final[oa.Schema] = {"type": ["integer", "null"]}
NUM_OR_NULL: Final[oa.Schema] = {"type": ["number", "null"]}
STR_OR_NULL: Final[oa.Schema] = {"type": ["string", "null"]}


def _obj(props: dict[str, oa.Schema], description: str = "") -> oa.Schema:
    out: oa.Schema = {"type": "object", "required": list(props), "properties": props}
    if description:
        out["description"] = description
    return out


def _schemas() -> dict[str, oa.Schema]:
    rates = _obj({"1s": NUM, "10s": NUM, "60s": NUM})
    point = {"type": "array", "prefixItems": [INT, NUM], "minItems": 2, "maxItems": 2}
    series = {"type": "array", "items": point}
    stage = _obj({"stage": {"enum": list(keys.STAGES)}, "users": INT, "rate_from_prev": NUM_OR_NULL})
    stages = {"type": "array", "items": stage}
    money = {"orders": INT, "paid_orders": INT, "gmv": INT, "aov": NUM_OR_NULL}  # ratios: null when 0/0
    return {
        "Access": _obj({"room_id": STR_OR_NULL, "all_rooms": {"type": "boolean"}, "distributor_id": STR_OR_NULL,
                        "expires_at_ms": INT},
                       "What the token opens (room_id null: every room; distributor_id: that distributor's "
                       "ledger in room_id only)."),
        "Distributors": _obj({"room_id": {"type": "string"}, "distributors": {"type": "array", "items": _obj(
            {"distributor_id": {"type": "string"}, **{k: INT for k in LEDGER_TOTALS}})}},
            "Every distributor (referrer of share_link orders) of the room with its commission totals, highest "
            "net commission first. Money in integer minor units; commission = floor(amount x bps / 10000)."),
        "Ledger": _obj({
            "room_id": {"type": "string"}, "distributor_id": {"type": "string"}, **{k: INT for k in LEDGER_TOTALS},
            "entries": {"type": "array", "items": _obj({
                "sale_id": {"type": "string"}, "order_id": {"type": "string"}, "amount": INT, "bps": INT,
                "commission": INT, "clawed_back": INT, "net": INT, "paid_at": INT, "refunded_at": INT_OR_NULL})},
            "entries_total": INT},
            "One distributor's commission ledger in a room: totals and one entry per paid order (newest first, "
            "at most 1000): accrued on payment, clawed back in full on refund."),
        "Rooms": _obj({"rooms": {"type": "array", "items": _obj(
            {"room_id": {"type": "string"}, "last_event_ms": INT, "viewers_online": INT})}}),
        "Sale": _obj({"sale_id": {"type": "string"}, "sku": STR_OR_NULL, "room_id": STR_OR_NULL,
                      "status": {"enum": ["open", "closed", None]}, "price": INT, "allotted": INT,
                      "available": INT, "reserved": INT, "sold": INT, "attempts": INT, "accepted": INT,
                      "rejected": _obj({r: INT for r in REJECT_REASONS}), "attempts_per_s": rates,
                      "accepted_per_s": rates, "opened_at": INT_OR_NULL, "sold_out_at": INT_OR_NULL,
                      "seconds_to_sell_out": NUM_OR_NULL, "sell_through": NUM_OR_NULL,
                      "projected_sell_out_at": INT_OR_NULL, "paid": INT, "gmv": INT, "refunds": INT,
                      "refunded_gmv": INT, "refunded": INT, "restocked": INT, "commission_bps": INT,
                      "head_commission_bps": INT, "as_of_ms": INT},
                     "One flash sale: the stock core's stock (allotted = available + reserved + sold + refunded, "
                     "refunded = units refunded without restock), outcomes (paid and gmv net of refunds), rates "
                     "and sell-out timing."),
        "Snapshot": _obj({
            "room_id": {"type": "string"}, "viewers_online": INT, "viewers_peak": INT, "unique_viewers": INT,
            **{k: NUM for k in ("likes_per_s", "comments_per_s", "shares_per_s", "cart_adds_per_s",
                                "events_per_s", "orders_per_s")},
            "shares": INT, "gmv": INT, "gmv_per_1000_viewers": NUM,
            "totals": _obj({k: INT for k in ROOM_TOTALS}),
            "series": _obj({"viewers": series, "likes_per_s": series, "orders_per_s": series}),
            "sales": {"type": "array", "items": oa.ref("Sale")},
            "leaderboard": {"type": "array", "items": _obj({"referrer_id": {"type": "string"}, "orders": INT,
                                                            "gmv": INT, "commission": INT})},
            "spikes": {"type": "array", "items": {"type": "object"}},
            "as_of_ms": INT}, "Everything the host's dashboard shows for one room."),
        "Funnel": _obj({
            "room_id": {"type": "string"}, "channel": {"enum": [*CHANNELS, None]}, "sku": STR_OR_NULL,
            "stages": stages, "overall_rate": NUM_OR_NULL, **money,
            "windows": _obj({"5m": {"oneOf": [{"type": "null"}, _obj({"stages": stages, "overall_rate": NUM_OR_NULL,
                                                                       **money, "from_ms": INT})]}}),
            "skus": {"type": "array", "items": {"type": "string"}}, "as_of_ms": INT},
            "Distinct users per funnel stage (HyperLogLog), orders, GMV and AOV, whole stream and last 5 minutes."),
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string", "minLength": 1, "description": "what is wrong"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "a bad id or query parameter", 401: "no, a malformed, forged or expired token",
            403: "a room (or sale, ledger, or the room list) the token does not open",
            404: "nothing in Redis for it"}
    out: dict[str, Any] = {}
    for code in codes:
        headers = {"WWW-Authenticate": oa.header('Bearer realm="flashsale-dashboard"')} if code == 401 else None
        out[str(code)] = oa.answer(text[code], oa.ref("Error"), headers)
    return out


def _id(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN, "description": what}}


def _get(summary: str, op_id: str, schema: str, errors: tuple[int, ...], params: list[dict[str, Any]] | None = None,
         description: str = "") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "operationId": op_id, "security": AUTH, "parameters": params or [],
                          "responses": {"200": oa.answer("ok", oa.ref(schema)), **_errors(*errors)}}
    if description:
        op["description"] = description
    return {"get": op}


def _paths() -> dict[str, Any]:
    room = _id("room_id", "the room")
    return {
        "/api/access": _get("What the token opens", "access", "Access", (401,)),
        "/api/rooms": _get("Rooms, newest first", "rooms", "Rooms", (400, 401, 403), [
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ROOMS, "default": 50}}],
            "Host tokens only."),
        "/api/rooms/{room_id}/snapshot": _get("A room's dashboard", "snapshot", "Snapshot", (400, 401, 403, 404),
                                              [room]),
        "/api/sales/{sale_id}": _get("One flash sale", "sale", "Sale", (400, 401, 403, 404),
                                     [_id("sale_id", "the sale")],
                                     "A room token opens its room's sales only; any other or unknown sale is 403."),
        "/api/rooms/{room_id}/funnel": _get("A room's conversion funnel", "funnel", "Funnel", (400, 401, 403, 404), [
            room,
            {"name": "channel", "in": "query", "required": False,
             "schema": {"enum": ["", "all", *CHANNELS], "default": "all"},
             "description": "all (or empty): every channel"},
            {"name": "sku", "in": "query", "required": False,
             "schema": {"type": "string", "maxLength": MAX_ID_LEN}, "description": "one SKU's stages (empty: all)"}]),
        "/api/rooms/{room_id}/distributors": _get(
            "A room's distributors and their commission", "distributors", "Distributors", (400, 401, 403, 404),
            [room], "Host and room tokens; a distributor's token is 403."),
        "/api/rooms/{room_id}/distributors/{distributor_id}/ledger": _get(
            "One distributor's commission ledger", "ledger", "Ledger", (400, 401, 403, 404),
            [room, _id("distributor_id", "the distributor (referrer_id)")],
            "A distributor's token opens its own ledger only (403 for any other distributor or room); the room's "
            "token and host tokens open every distributor of the room."),
        "/openapi.json": {"get": {"summary": "This description", "operationId": "openapi", "security": [],
                                  "responses": {"200": oa.answer("OpenAPI 3.1", {"type": "object"})}}},
    }


def build() -> dict[str, Any]:
    """The description of every route ``consumers.api.add_api_routes`` registers."""
    description = ("JSON over the read model (Redis only), served by the dashboard process. Every /api request "
                   "needs a dashboard token for one room or every room (flashsale dashboard-link). Times are "
                   "epoch milliseconds of event time. See docs/API.md.")
    security = {"bearer": {"type": "http", "scheme": "bearer", "description": "a dashboard token"},
                "link": {"type": "apiKey", "in": "query", "name": "t",
                         "description": "the same token in a link (EventSource and phones cannot set headers)"}}
    return oa.document(TITLE, VERSION, description, _paths(), _schemas(), security)


@functools.cache
def served() -> bytes:
    """What ``GET /openapi.json`` answers: built on the first request."""
    return oa.render(build()).encode()


def main(argv: list[str] | None = None) -> int:
    return oa.main(argv, "consumers.openapi", PATH, build)


if __name__ == "__main__":
    raise SystemExit(main())
