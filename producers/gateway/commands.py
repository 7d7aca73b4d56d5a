"""Control and payment endpoints: build the event server-side, publish it, answer with what the worker did."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Final

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from producers.gateway.http import ApiError, check_content_type, json_response, read_body
from producers.gateway.routes import REPEATED_KEY, admit, parse_charged, require_connected, require_scope, take
from producers.gateway.state import GatewayState
from producers.sdk import ItemError, PublishError, prepare
from schemas import keys
from schemas.codec import repeated_keys
from schemas.events import SaleOpened, all_errors
from schemas.order_record import OrderRecord, OrderRecordError, parse_order_record

logger = logging.getLogger(__name__)

COMMAND_BODY_LIMIT: Final = 16 * 1024
_NS: Final = uuid.UUID("5f0c6a52-3b7e-4d1a-9a57-6d1f3c2b8e41")
POLL_FIRST_S: Final = 0.02
POLL_MAX_S: Final = 0.2
DEFAULT_OPERATOR: Final = "merchant"  # the envelope's user_id of a control event when the body names none

# Every sale.opened field but the path's sale_id (the contract decides which are required), the
# envelope's room and operator, and the idempotency key.
OPEN_DATA_FIELDS: Final = frozenset(SaleOpened.__struct_fields__) - {"sale_id"}
OPEN_FIELDS: Final = OPEN_DATA_FIELDS | {"room_id", "user_id", "request_id"}
CLOSE_FIELDS: Final = frozenset({"user_id", "request_id"})
STOCK_FIELDS: Final = frozenset({"delta", "reason", "user_id", "request_id"})
PAY_FIELDS: Final = frozenset({"user_id", "amount"})
CANCEL_FIELDS: Final = frozenset({"user_id"})
SALE_INTS: Final = ("price", "allotted", "available", "reserved", "sold", "removal_pending", "per_user_limit",
                    "starts_at", "ends_at")

# Pay/cancel refused, by the order's state: (HTTP reason, what it means). Reserved is the one state
# that gets published; sold (pay) and cancelled (cancel) are an earlier success, answered 200.
PAY_REFUSED: Final = {"rejected": "not_accepted", "expired": "late_payment", "cancelled": "order_cancelled",
                      "refunded": "order_refunded"}
CANCEL_REFUSED: Final = {"rejected": "not_accepted", "expired": "already_released", "sold": "already_paid",
                         "refunded": "order_refunded"}
REFUSAL_TEXT: Final = {
    "not_accepted": "the order was rejected; there is nothing to pay or cancel",
    "late_payment": "the reservation had expired; its units went back to stock and the payment is refused",
    "order_cancelled": "the order was cancelled; the payment is refused",
    "already_released": "the reservation has already expired",
    "already_paid": "the order is paid; it can no longer be cancelled",
    "order_refunded": "the order was paid and refunded; it can no longer be paid or cancelled",
    "not_owner": "the order belongs to another user",
    "unknown_order": "no such order in this sale (or it is not decided yet: retry after its decision)",
}


def command_event_id(kind: str, *parts: str) -> str:
    """A stable event id per request, so a retried command is a replay, never a second command."""
    return uuid.uuid5(_NS, "\x00".join((kind, *parts))).hex


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _body(request: web.Request, state: GatewayState, key: str, allowed: frozenset[str]
                ) -> tuple[dict[str, Any], list[ItemError]]:
    """The JSON object body (an empty body is ``{}``), charged one token; unknown and repeated fields as errors."""
    check_content_type(request)
    raw = await read_body(request, min(COMMAND_BODY_LIMIT, state.settings.max_body_bytes),
                          state.settings.body_timeout_s)
    body = parse_charged(state, key, raw) if raw.strip() else {}
    take(state, key, 1)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "expected a JSON object", reason="invalid_event",
                       errors=[ItemError(0, "", "expected a JSON object")])
    errors = [ItemError(0, str(k)[:64], "unknown field") for k in sorted(set(body) - allowed, key=str)]
    errors += [ItemError(0, path, REPEATED_KEY) for _, path in repeated_keys(raw)]
    return body, errors


def _validated(obj: dict[str, Any], errors: list[ItemError]) -> Any:
    errors = errors + [ItemError(0, e.field.removeprefix("data."), e.message) for e in all_errors(obj)]
    if errors:
        raise ApiError(400, "invalid_request", f"{errors[0].field}: {errors[0].message}", reason="invalid_event",
                       errors=errors)
    return prepare(obj)


def _redis_down(exc: Exception) -> ApiError:
    logger.warning("gateway command: Redis failed: %s", exc)
    return ApiError(503, "redis_unavailable", "the sale store is not answering; retry", reason="redis_unavailable",
                    headers={"Retry-After": "1"})


async def _publish(state: GatewayState, prepared: Any, what: str) -> None:
    require_connected(state)
    assert state.publisher is not None
    try:
        await state.publisher.publish_prepared([prepared])
    except PublishError as exc:
        logger.warning("publishing %s failed: %s", what, exc)
        raise ApiError(503, "broker_unavailable", "Kafka did not acknowledge the command; retry the same request "
                       "(it is a replay)", reason="broker_unavailable", headers={"Retry-After": "1"}) from None
    state.metrics.events.labels("accepted").inc()
    state.metrics.records.inc()


async def _sale(state: GatewayState, sale_id: str) -> dict[str, str]:
    try:
        raw = await state.redis.hgetall(keys.sale(sale_id))
    except (RedisError, OSError) as exc:
        raise _redis_down(exc) from None
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}


def sale_view(sale_id: str, h: dict[str, str]) -> dict[str, Any]:
    """The sale's state as the worker keeps it (schemas.keys.sale), typed for the answer."""
    view: dict[str, Any] = {"sale_id": sale_id, "sku": h.get("sku"), "room_id": h.get("room_id"),
                            "status": h.get("status")}
    for name in SALE_INTS:
        value = h.get(name)
        view[name] = int(value) if value not in (None, "") else 0
    view["reservation_ttl_s"] = int(h.get("ttl_ms") or 0) // 1000
    view["sold_out"] = h.get("soldout") == "1"
    return view


async def _wait(state: GatewayState, done: Any) -> Any:
    """Poll ``done()`` (an awaitable returning a value or None) with back-off until the decision timeout."""
    deadline = time.monotonic() + state.settings.decision_timeout_ms / 1000
    delay = POLL_FIRST_S
    while True:
        try:
            value = await done()
        except (RedisError, OSError) as exc:
            logger.warning("gateway command: waiting on Redis failed: %s", exc)
            value = None
        if value is not None:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, POLL_MAX_S)


# --- sale control: open, close, stock -------------------------------------------------------------------


async def _control(request: web.Request, command: str, allowed: frozenset[str]) -> web.Response:
    state, key, principal = admit(request)
    require_scope(state, principal, "control")
    sale_id = request.match_info["sale_id"]
    body, errors = await _body(request, state, key, allowed)
    request_id = body.get("request_id")
    if request_id is not None and not (isinstance(request_id, str) and 0 < len(request_id) <= 128):
        errors.append(ItemError(0, "request_id", "expected a string of 1 to 128 characters"))
    if command == "stock" and request_id is None:
        errors.append(ItemError(0, "request_id", "required: two equal adjustments need two request ids"))
    current = await _sale(state, sale_id)
    if command == "open":
        data: dict[str, Any] = {k: body[k] for k in OPEN_DATA_FIELDS if k in body}
        room_id = body.get("room_id")
        type_ = "sale.opened"
    else:
        if not current.get("sale_id"):
            state.metrics.commands.labels(command, "refused").inc()
            raise ApiError(409, "unknown_sale", f"sale {sale_id} was never opened", reason="unknown_sale",
                           extra={"sale_id": sale_id})
        data = {"sku": current.get("sku", "")}
        if command == "stock":
            data.update({k: body[k] for k in ("delta", "reason") if k in body})
        room_id = current.get("room_id")
        type_ = "sale.closed" if command == "close" else "stock.adjusted"
    data["sale_id"] = sale_id
    if isinstance(request_id, str):
        event_id = command_event_id(type_, sale_id, request_id)
    else:  # the same definition again is a replay; a changed one is an update
        event_id = command_event_id(type_, sale_id, orjson.dumps([room_id, data], option=orjson.OPT_SORT_KEYS,
                                                                 default=str).decode())
    obj: dict[str, Any] = {"type": type_, "v": 1, "event_id": event_id, "ts": _now_ms(), "data": data,
                           "channel": "other", "user_id": body.get("user_id", DEFAULT_OPERATOR)}
    if room_id is not None:
        obj["room_id"] = room_id
    prepared = _validated(obj, errors)
    if command == "open" and current.get("sku") and current["sku"] != data["sku"]:
        state.metrics.commands.labels(command, "refused").inc()
        raise ApiError(409, "sku_mismatch", f"sale {sale_id} sells {current['sku']}; its SKU cannot change",
                       reason="sku_mismatch", extra={"sale_id": sale_id})
    await _publish(state, prepared, f"{type_} for sale {sale_id}")

    async def applied() -> bool | None:
        return True if await state.redis.sismember(keys.sale_applied(sale_id), event_id) else None

    if await _wait(state, applied) is None:
        state.metrics.commands.labels(command, "pending").inc()
        return json_response({"status": "pending", "sale_id": sale_id, "event_id": event_id}, status=202)
    state.metrics.commands.labels(command, "done").inc()
    return json_response({"status": "applied", "event_id": event_id,
                          "sale": sale_view(sale_id, await _sale(state, sale_id))})


async def open_sale(request: web.Request) -> web.Response:
    """POST /v1/sales/{sale_id}/open (control): sale.opened; answers the sale once the worker applied it."""
    return await _control(request, "open", OPEN_FIELDS)


async def close_sale(request: web.Request) -> web.Response:
    """POST /v1/sales/{sale_id}/close (control): sale.closed."""
    return await _control(request, "close", CLOSE_FIELDS)


async def adjust_stock(request: web.Request) -> web.Response:
    """POST /v1/sales/{sale_id}/stock (control): stock.adjusted by ``delta`` (``request_id`` required)."""
    return await _control(request, "stock", STOCK_FIELDS)


# --- payment and cancellation ---------------------------------------------------------------------------


async def _record(state: GatewayState, sale_id: str, order_id: str) -> OrderRecord | None:
    raw = await state.redis.hget(keys.sale_orders(sale_id), order_id)
    if raw is None:
        return None
    try:
        return parse_order_record(raw)
    except OrderRecordError as exc:
        logger.warning("unreadable order record for sale %s order %s: %s", sale_id, order_id, exc)
        return None


def _refuse(state: GatewayState, command: str, sale_id: str, order_id: str, reason: str,
            rec: OrderRecord | None) -> ApiError:
    state.metrics.commands.labels(command, "refused").inc()
    verb = "payment" if command == "pay" else "cancellation"
    return ApiError(409, f"{verb}_refused", f"order {order_id}: {REFUSAL_TEXT[reason]}", reason=reason,
                    extra={"sale_id": sale_id, "order_id": order_id, "reason": reason,
                           "state": rec.state if rec is not None and reason != "not_owner" else None})


def _settled(state: GatewayState, command: str, sale_id: str, order_id: str, rec: OrderRecord) -> web.Response:
    """The answer for an order no longer reserved: 200 when it is in the state asked for, else 409."""
    want = "sold" if command == "pay" else "cancelled"
    if rec.state == want:
        state.metrics.commands.labels(command, "done").inc()
        return json_response({"sale_id": sale_id, "order_id": order_id, "state": rec.state, "qty": rec.qty,
                              "settled_at": rec.settled_at})
    refused = PAY_REFUSED if command == "pay" else CANCEL_REFUSED
    raise _refuse(state, command, sale_id, order_id, refused.get(rec.state, "not_accepted"), rec)


async def _settle(request: web.Request, command: str) -> web.Response:
    state, key, principal = admit(request)
    if command == "pay":
        require_scope(state, principal, "payments")
    else:
        require_scope(state, principal, "orders", "payments")
    sale_id, order_id = request.match_info["sale_id"], request.match_info["order_id"]
    body, errors = await _body(request, state, key, PAY_FIELDS if command == "pay" else CANCEL_FIELDS)
    user_id = body.get("user_id")
    if user_id is None and "payments" not in principal.scopes:
        errors.append(ItemError(0, "user_id", "required: the order's own user (or a payments-scope token)"))
    if user_id is not None and not isinstance(user_id, str):
        errors.append(ItemError(0, "user_id", "expected a string"))
    if errors:
        raise ApiError(400, "invalid_request", f"{errors[0].field}: {errors[0].message}", reason="invalid_event",
                       errors=errors)
    try:
        rec = await _record(state, sale_id, order_id)
        sale = await _sale(state, sale_id) if rec is not None else {}
    except (RedisError, OSError) as exc:
        raise _redis_down(exc) from None
    if rec is None:
        raise _refuse(state, command, sale_id, order_id, "unknown_order", None)
    if user_id is not None and rec.user_id != user_id:
        raise _refuse(state, command, sale_id, order_id, "not_owner", rec)
    if rec.state != "reserved":  # settled before: a retry is answered, nothing is published
        return _settled(state, command, sale_id, order_id, rec)
    type_ = "order.paid" if command == "pay" else "order.cancelled"
    data: dict[str, Any] = {"order_id": order_id, "sale_id": sale_id, "sku": rec.sku or sale.get("sku", "")}
    if command == "pay" and "amount" in body:
        data["amount"] = body["amount"]
    # The payment keeps the order's attribution (the counters credit payers, GMV and the distributor's
    # leaderboard to the envelope's channel and referrer): a payment service knows neither.
    obj = {"type": type_, "v": 1, "event_id": command_event_id(type_, sale_id, order_id), "ts": _now_ms(),
           "room_id": sale.get("room_id") or "", "user_id": rec.user_id, "channel": rec.channel or "other",
           "data": data}
    if rec.referrer_id:
        obj["referrer_id"] = rec.referrer_id
    prepared = _validated(obj, [])
    await _publish(state, prepared, f"{type_} for order {order_id}")

    async def moved() -> OrderRecord | None:
        now = await _record(state, sale_id, order_id)
        return now if now is not None and now.state != "reserved" else None

    after = await _wait(state, moved)
    if after is None:
        state.metrics.commands.labels(command, "pending").inc()
        status_url = f"/v1/sales/{sale_id}/orders/{order_id}"
        return json_response({"status": "pending", "sale_id": sale_id, "order_id": order_id,
                              "status_url": status_url}, status=202, headers={"Location": status_url})
    return _settled(state, command, sale_id, order_id, after)


async def pay_order(request: web.Request) -> web.Response:
    """POST /v1/sales/{sale_id}/orders/{order_id}/pay (payments): order.paid; 200 sold or 409 with the reason."""
    return await _settle(request, "pay")


async def cancel_order(request: web.Request) -> web.Response:
    """POST /v1/sales/{sale_id}/orders/{order_id}/cancel (orders with the order's user, or payments)."""
    return await _settle(request, "cancel")


def add_command_routes(app: web.Application) -> None:
    app.router.add_post("/v1/sales/{sale_id}/open", open_sale)
    app.router.add_post("/v1/sales/{sale_id}/close", close_sale)
    app.router.add_post("/v1/sales/{sale_id}/stock", adjust_stock)
    app.router.add_post("/v1/sales/{sale_id}/orders/{order_id}/pay", pay_order)
    app.router.add_post("/v1/sales/{sale_id}/orders/{order_id}/cancel", cancel_order)

