"""The gateway's handlers: event ingest, order placement and status, health, readiness, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from producers.decisions import Decision, read_decision
from producers.gateway import openapi
from producers.gateway.http import ApiError, check_content_type, client_ip, json_response, parse_json, read_body
from producers.gateway.ratelimit import retry_after_header
from producers.gateway.scopes import Principal
from producers.gateway.state import GatewayState
from producers.sdk import ItemError, Prepared, PublishError, order_event_id, prepare, prepare_all
from schemas.codec import repeated_keys
from schemas.events import ValidationError, all_errors

logger = logging.getLogger(__name__)

STATE: Final = web.AppKey("gateway_state", GatewayState)
ORDER_FIELDS: Final = ("order_id", "user_id", "room_id", "sku", "qty", "unit_price", "channel", "referrer_id")
ORDER_BODY_LIMIT: Final = 16 * 1024
READY_TIMEOUT_S: Final = 1.0
REPEATED_KEY: Final = "repeated key: each field may appear once in an object"


def state_of(request: web.Request) -> GatewayState:
    return request.app[STATE]


def admit(request: web.Request) -> tuple[GatewayState, str, Principal]:
    """Authenticate, then refuse at once (before reading the body) a client whose bucket is empty."""
    state = state_of(request)
    principal = state.auth.check(request)
    key = principal.key or f"ip:{client_ip(request, state.proxies)}"
    wait = state.limiter.retry_after(key, 1)
    if wait > 0:
        raise _rate_limited(wait)
    return state, key, principal


def require_scope(state: GatewayState, principal: Principal, *any_of: str) -> None:
    """403 (nothing read further, nothing published) unless the caller holds one of ``any_of``."""
    message = principal.require(*any_of)
    if message is not None:
        raise ApiError(403, "forbidden", message, reason="missing_scope")


def _rate_limited(wait: float) -> ApiError:
    return ApiError(429, "rate_limited", f"too many events; retry in {wait:.2f}s", reason="rate_limited",
                    headers={"Retry-After": retry_after_header(wait)}, close=True)


def take(state: GatewayState, key: str, n: int) -> None:
    wait = state.limiter.take(key, n)
    if wait > 0:
        state.metrics.events.labels("rejected").inc(n)
        raise _rate_limited(wait)


def parse_charged(state: GatewayState, key: str, raw: bytes) -> Any:
    """The JSON body; a body that is not JSON still costs its sender one token."""
    try:
        return parse_json(raw)
    except ApiError:
        take(state, key, 1)
        raise


def require_connected(state: GatewayState) -> None:
    if not state.ready:
        raise ApiError(503, "broker_unavailable", "the gateway is not connected to Kafka yet",
                       reason="broker_unavailable", headers={"Retry-After": "1"})


async def post_events(request: web.Request) -> web.Response:
    """POST /v1/events: one event object or an array; all valid → published (202), else nothing (400)."""
    state, key, principal = admit(request)
    check_content_type(request)
    raw = await read_body(request, state.settings.max_body_bytes, state.settings.body_timeout_s)
    body = parse_charged(state, key, raw)
    items = body if isinstance(body, list) else [body]
    if not items:
        raise ApiError(400, "empty_batch", "the array holds no events", reason="invalid_event")
    if len(items) > state.settings.max_events:
        raise ApiError(413, "too_many_events", f"{len(items)} events exceed the limit of {state.settings.max_events}"
                       " per request", reason="too_large")
    take(state, key, len(items))  # charged before validation: invalid events cost as much as valid ones
    _check_scopes(state, principal, items)
    prepared, errors = prepare_all(items)
    errors = sorted(errors + [ItemError(i, path, REPEATED_KEY) for i, path in repeated_keys(raw)],
                    key=lambda e: e.index)
    if errors:
        state.metrics.events.labels("invalid").inc(len(errors))
        state.metrics.events.labels("rejected").inc(len(prepared))
        raise ApiError(400, "invalid_events", f"{len(errors)} of {len(items)} events are invalid; nothing was "
                       "published", reason="invalid_event", errors=errors)
    require_connected(state)
    assert state.publisher is not None
    try:
        deliveries = await state.publisher.publish_prepared(prepared)
    except PublishError as exc:
        logger.warning("publish failed: %s", exc)
        state.metrics.events.labels("rejected").inc(len(prepared) - sum(d.count for d in exc.deliveries))
        state.metrics.events.labels("accepted").inc(sum(d.count for d in exc.deliveries))
        raise ApiError(503, "broker_unavailable", "Kafka did not acknowledge the events; retry (events carry "
                       "ids, so a retry is deduplicated downstream)", reason="broker_unavailable",
                       headers={"Retry-After": "1"}) from None
    state.metrics.events.labels("accepted").inc(len(prepared))
    state.metrics.records.inc(len(deliveries))
    return json_response({"accepted": len(prepared), "records": len(deliveries)}, status=202)


def _check_scopes(state: GatewayState, principal: Principal, items: list[Any]) -> None:
    """403 naming each item whose type the caller may not publish (outputs: nobody); nothing is published."""
    refused: list[tuple[int, str, str]] = []
    for i, item in enumerate(items):
        type_ = item.get("type") if isinstance(item, dict) else None
        if isinstance(type_, str):
            why = principal.refusal(type_)
            if why is not None:
                refused.append((i, *why))
    if not refused:
        return
    state.metrics.events.labels("forbidden").inc(len(refused))
    state.metrics.events.labels("rejected").inc(len(items) - len(refused))
    reason = "output_type" if any(r == "output_type" for _, r, _ in refused) else "missing_scope"
    first = refused[0][2]
    raise ApiError(403, "forbidden_event_type", f"{len(refused)} of {len(items)} events are not allowed for this "
                   f"caller ({first}); nothing was published", reason=reason,
                   errors=[ItemError(i, "type", message) for i, _, message in refused])


def _order_event(sale_id: str, body: Any) -> tuple[str, dict[str, Any], list[ItemError]]:
    """The order.placed event a body describes, and the body's unknown fields (left out of the event)."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_order", "expected a JSON object", reason="invalid_event",
                       errors=[ItemError(0, "", "expected a JSON object")])
    unknown = [ItemError(0, str(k)[:64], "unknown field") for k in sorted(set(body) - set(ORDER_FIELDS), key=str)]
    order_id = body.get("order_id")
    if order_id is None:
        order_id = uuid.uuid4().hex
    data: dict[str, Any] = {"order_id": order_id, "sale_id": sale_id}
    data.update({k: body[k] for k in ("sku", "qty", "unit_price") if k in body})  # absent: the validator names it
    event: dict[str, Any] = {
        "type": "order.placed", "v": 1, "ts": int(time.time() * 1000),
        "event_id": order_event_id(sale_id, order_id) if isinstance(order_id, str) else "invalid",
        "channel": "live_room" if body.get("channel") is None else body["channel"], "data": data,
    }
    event.update({k: body[k] for k in ("room_id", "user_id") if k in body})
    if body.get("referrer_id") is not None:
        event["referrer_id"] = body["referrer_id"]
    return order_id, event, unknown


async def _known_decision(state: GatewayState, sale_id: str, order_id: str, user_id: str) -> Decision | None:
    """The order's own decision, if it has one, from its record (concurrent lookups share one HMGET)."""
    try:
        if state.reader is not None:
            return await state.reader.read(sale_id, order_id, user_id)
        return await read_decision(state.redis, sale_id, order_id, user_id)
    except (RedisError, OSError) as exc:  # the worker stays the authority: answer sold out as before
        logger.warning("reading order %s: Redis failed: %s", order_id, exc)
        return None


def _key_count(node: Any) -> int:
    """Keys of every object in a parsed JSON value; iterative, so a deeply nested body cannot exhaust
    the stack (it recursed, and a 1 KB body 500 levels deep was a 500 with a traceback)."""
    count, stack = 0, [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return count


def repeated_in_body(raw: bytes, body: Any) -> list[tuple[int, str]]:
    """``repeated_keys(raw)``, skipped when it cannot find anything: every key of a JSON text is followed
    by one colon, so a body with as many colons as its parsed objects hold keys repeats none."""
    if raw.count(b":") == _key_count(body):
        return []
    return repeated_keys(raw)


def _order_errors(obj: dict[str, Any], unknown: list[ItemError], raw: bytes, body: Any) -> Prepared:
    """The validated, encoded order (one validation on the valid path), or 400 naming every bad field."""
    errors = list(unknown)
    prepared: Prepared | None = None
    try:
        prepared = prepare(obj)
    except ValidationError:
        errors += [ItemError(0, err.field.removeprefix("data."), err.message) for err in all_errors(obj)]
    errors += [ItemError(0, path, REPEATED_KEY) for _, path in repeated_in_body(raw, body)]
    if errors or prepared is None:
        first = errors[0]
        raise ApiError(400, "invalid_order", f"{first.field}: {first.message}", reason="invalid_event",
                       errors=errors)
    return prepared


async def post_order(request: web.Request) -> web.Response:
    """POST /v1/sales/{sale_id}/orders: 409 when sold out (no Kafka), 429 while the sale's units are all
    spoken for by orders in flight (no Kafka), else publish (coalesced with concurrent orders of the SKU)
    and wait for the decision."""
    state, key, principal = admit(request)
    require_scope(state, principal, "orders")
    sale_id = request.match_info["sale_id"]
    check_content_type(request)
    raw = await read_body(request, min(ORDER_BODY_LIMIT, state.settings.max_body_bytes),
                          state.settings.body_timeout_s)
    body = parse_charged(state, key, raw)
    take(state, key, 1)  # charged before validation and before the sold-out answer
    order_id, obj, unknown = _order_event(sale_id, body)
    prepared = _order_errors(obj, unknown, raw, body)
    assert state.soldout is not None
    stock = await state.soldout.stock(sale_id)
    if stock.sold_out:
        # A retry of an order that was already decided gets its own decision, not the sale's flag.
        decided = await _known_decision(state, sale_id, order_id, obj["user_id"])
        if decided is not None:
            state.metrics.decisions.labels(decided.outcome).inc()
            return json_response(decided.to_dict(), status=200)
        state.metrics.decisions.labels("rejected").inc()
        raise ApiError(409, "sold_out", f"sale {sale_id} is sold out", reason="sold_out",
                       extra={"sale_id": sale_id, "order_id": order_id, "outcome": "rejected",
                              "reason": "sold_out"})
    require_connected(state)
    assert state.coalescer is not None and state.waiter is not None
    data = obj["data"]
    qty = stock.units_at_stake(data["qty"], data["sku"], data["unit_price"])
    if state.settings.admission and qty and not state.inflight.admits(sale_id, qty, stock):
        decided = await _known_decision(state, sale_id, order_id, obj["user_id"])
        if decided is not None:
            state.metrics.decisions.labels(decided.outcome).inc()
            return json_response(decided.to_dict(), status=200)
        raise ApiError(429, "units_in_flight", f"sale {sale_id}: its {stock.available} available units are all "
                       "spoken for by orders still being decided; retry with the same order_id",
                       reason="units_in_flight", headers={"Retry-After": "1"},
                       extra={"sale_id": sale_id, "order_id": order_id, "outcome": "retry",
                              "reason": "units_in_flight"})
    state.inflight.add(sale_id, qty)
    try:
        return await _publish_and_wait(state, prepared, sale_id, order_id, obj.get("user_id"))
    finally:
        state.inflight.remove(sale_id, qty)


async def _publish_and_wait(state: GatewayState, prepared: Prepared, sale_id: str, order_id: str,
                            user_id: str | None) -> web.Response:
    assert state.coalescer is not None and state.waiter is not None
    started = time.perf_counter()
    try:
        await state.coalescer.publish(prepared)
    except PublishError as exc:
        logger.warning("publishing order %s failed: %s", order_id, exc)
        raise ApiError(503, "broker_unavailable", "Kafka did not acknowledge the order; retry with the same "
                       "order_id", reason="broker_unavailable", headers={"Retry-After": "1"},
                       extra={"order_id": order_id}) from None
    state.metrics.order_published.inc()
    timeout = state.settings.decision_timeout_ms / 1000
    decision = await state.waiter.wait(sale_id, order_id, timeout, user_id=user_id)
    status_url = f"/v1/sales/{sale_id}/orders/{order_id}"
    if decision is None:
        state.metrics.decisions.labels("pending").inc()
        return json_response({"status": "pending", "order_id": order_id, "sale_id": sale_id,
                              "status_url": status_url}, status=202, headers={"Location": status_url})
    state.metrics.decided(decision.outcome).inc()
    state.metrics.decision_wait.observe(time.perf_counter() - started)
    return json_response(decision.to_dict(), status=200)


async def get_order(request: web.Request) -> web.Response:
    """GET /v1/sales/{sale_id}/orders/{order_id}: the decision (200), or 404 while pending or unknown."""
    state, key, principal = admit(request)
    take(state, key, 1)
    require_scope(state, principal, "orders", "payments")
    sale_id, order_id = request.match_info["sale_id"], request.match_info["order_id"]
    try:
        decision = await read_decision(state.redis, sale_id, order_id)
    except (RedisError, OSError) as exc:
        logger.warning("reading order %s: Redis failed: %s", order_id, exc)
        raise ApiError(503, "redis_unavailable", "the order store is not answering; retry",
                       reason="redis_unavailable", headers={"Retry-After": "1"}) from None
    if decision is None:
        raise ApiError(404, "not_found", f"no decision for order {order_id} of sale {sale_id} (pending or unknown)",
                       extra={"status": "pending", "order_id": order_id, "sale_id": sale_id})
    return json_response(decision.to_dict())


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = state_of(request)
    checks = {"kafka": "ok" if state.ready else "connecting"}
    try:
        await asyncio.wait_for(state.redis.ping(), READY_TIMEOUT_S)
        checks["redis"] = "ok"
    except Exception as exc:  # any failure means not ready; say why without a stack trace
        checks["redis"] = type(exc).__name__
    ok = all(v == "ok" for v in checks.values())
    return json_response({"status": "ready" if ok else "unavailable", **checks}, status=200 if ok else 503)


async def metrics_view(request: web.Request) -> web.Response:
    body = generate_latest(state_of(request).metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_view(request: web.Request) -> web.Response:
    """GET /openapi.json: the gateway's OpenAPI 3.1 description (docs/openapi/gateway.json)."""
    return web.Response(body=openapi.served(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/events", post_events)
    app.router.add_post("/v1/sales/{sale_id}/orders", post_order)
    app.router.add_get("/v1/sales/{sale_id}/orders/{order_id}", get_order)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/openapi.json", openapi_view)
