"""The JSON read API over the read model: rooms, room snapshot, sale view, funnel, distributors' commission
ledgers; room-scoped (or distributor-scoped) by token."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from consumers import access, readmodel
from consumers.openapi import MAX_ROOMS, served
from schemas.events import CHANNELS, MAX_ID_LEN

__all__ = ["MAX_ROOMS", "add_api_routes"]
API_PATHS: Final = ("/api/", "/openapi.json")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-cache"})


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _id(request: web.Request, name: str) -> str | None:
    value = request.match_info[name]
    return value if 0 < len(value) <= MAX_ID_LEN else None


async def rooms(request: web.Request) -> web.Response:
    if (refused := access.refusal(request, None)) is not None:  # the room list: host tokens only
        return refused
    text = request.query.get("limit", "50")
    if not (text.isascii() and text.isdigit() and len(text) <= 6):  # int() also takes " 5", "1_0" and "٥"
        return _error(400, "limit must be an integer")
    limit = int(text)
    if not 1 <= limit <= MAX_ROOMS:
        return _error(400, f"limit must be between 1 and {MAX_ROOMS}")
    return _json({"rooms": await readmodel.list_rooms(request.app["redis"], _now_ms(), limit)})


async def snapshot(request: web.Request) -> web.Response:
    room_id = _id(request, "room_id")
    if room_id is None:
        return _error(400, "bad room id")
    if (refused := access.refusal(request, room_id)) is not None:
        return refused
    body = await readmodel.room_snapshot(request.app["redis"], room_id, _now_ms())
    if body is None:
        return _error(404, f"unknown room {room_id!r}")
    return _json(body)


async def sale(request: web.Request) -> web.Response:
    sale_id = _id(request, "sale_id")
    if sale_id is None:
        return _error(400, "bad sale id")
    host_only = access.refusal(request, None)  # None: a host token, every sale is open
    if host_only is not None and host_only.status == 401:
        return host_only
    body = await readmodel.sale_view(request.app["redis"], sale_id, _now_ms())
    if host_only is not None:
        # A room token: the sale's own room decides. Unknown and foreign sales get the same 403, so
        # one room's link cannot probe which sale ids exist elsewhere.
        own = access.refusal(request, str(body.get("room_id"))) if body is not None else None
        if body is None or own is not None:
            return access.json_refusal(access.Refused(403, f"sale {sale_id!r} is not in this token's room"))
    if body is None:
        return _error(404, f"unknown sale {sale_id!r}")
    return _json(body)


async def funnel(request: web.Request) -> web.Response:
    room_id = _id(request, "room_id")
    if room_id is None:
        return _error(400, "bad room id")
    if (refused := access.refusal(request, room_id)) is not None:
        return refused
    channel = request.query.get("channel") or None
    if channel == "all":
        channel = None
    if channel is not None and channel not in CHANNELS:
        return _error(400, f"channel must be one of all, {', '.join(CHANNELS)}")
    sku = request.query.get("sku") or None
    if sku is not None and len(sku) > MAX_ID_LEN:
        return _error(400, "bad sku")
    redis = request.app["redis"]
    if not await readmodel.room_exists(redis, room_id):
        return _error(404, f"unknown room {room_id!r}")
    return _json(await readmodel.room_funnel(redis, room_id, channel, _now_ms(), sku))


async def distributors(request: web.Request) -> web.Response:
    """GET /api/rooms/{room_id}/distributors: every distributor of the room (host and room tokens)."""
    room_id = _id(request, "room_id")
    if room_id is None:
        return _error(400, "bad room id")
    if (refused := access.refusal(request, room_id)) is not None:
        return refused
    redis = request.app["redis"]
    if not await readmodel.room_exists(redis, room_id):
        return _error(404, f"unknown room {room_id!r}")
    return _json({"room_id": room_id, "distributors": await readmodel.distributor_list(redis, room_id)})


async def ledger(request: web.Request) -> web.Response:
    """GET /api/rooms/{room_id}/distributors/{distributor_id}/ledger: one distributor's commission ledger;
    its own distributor token, the room's token or a host token (any other: 403, before any lookup)."""
    room_id, distributor_id = _id(request, "room_id"), _id(request, "distributor_id")
    if room_id is None or distributor_id is None:
        return _error(400, "bad room or distributor id")
    if (refused := access.ledger_refusal(request, room_id, distributor_id)) is not None:
        return refused
    redis = request.app["redis"]
    if not await readmodel.room_exists(redis, room_id):
        return _error(404, f"unknown room {room_id!r}")
    return _json(await readmodel.distributor_ledger(redis, room_id, distributor_id))


async def whoami(request: web.Request) -> web.Response:
    """What the presented token opens (the page asks when its stream is refused)."""
    grant = request.get(access.GRANT)
    if grant is None:
        return access.json_refusal(access.Refused(401, "a dashboard token is required"))
    return _json({"room_id": grant.room_id, "all_rooms": grant.room_id is None,
                  "distributor_id": grant.distributor_id, "expires_at_ms": grant.expires_at * 1000})


async def openapi_view(request: web.Request) -> web.Response:
    """GET /openapi.json: the read API's OpenAPI 3.1 description (docs/openapi/read-api.json); open."""
    return web.Response(body=served(), content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404 and 405 under the API's paths answer in the API's JSON error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith(API_PATHS):
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        body = orjson.dumps({"error": f"{exc.reason.lower()}: {request.method} {request.path[:200]}"})
        return web.Response(body=body, status=exc.status, content_type="application/json", headers=headers)


def add_api_routes(app: web.Application) -> None:
    """GET /api/rooms, /api/rooms/{room_id}/snapshot, /api/sales/{sale_id}, /api/rooms/{room_id}/funnel,
    /api/rooms/{room_id}/distributors, /api/rooms/{room_id}/distributors/{distributor_id}/ledger,
    /api/access, and /openapi.json (open), with JSON answers for unknown /api paths and wrong methods.
    Every /api answer needs the grant ``consumers.access.middleware`` leaves on the request: an app
    that mounts these routes without it answers 401 to everything."""
    app.middlewares.append(json_errors)
    app.router.add_get("/openapi.json", openapi_view)
    app.router.add_get("/api/access", whoami)
    app.router.add_get("/api/rooms", rooms)
    app.router.add_get("/api/rooms/{room_id}/snapshot", snapshot)
    app.router.add_get("/api/sales/{sale_id}", sale)
    app.router.add_get("/api/rooms/{room_id}/funnel", funnel)
    app.router.add_get("/api/rooms/{room_id}/distributors", distributors)
    app.router.add_get("/api/rooms/{room_id}/distributors/{distributor_id}/ledger", ledger)
