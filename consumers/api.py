"""The JSON read API over the read model: rooms, room snapshot, sale view, funnel."""

from __future__ import annotations

import time
from typing import Any, Final

import orjson
from aiohttp import web

from consumers import readmodel
from schemas.events import CHANNELS, MAX_ID_LEN

MAX_ROOMS: Final = 500


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
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        return _error(400, "limit must be an integer")
    if not 1 <= limit <= MAX_ROOMS:
        return _error(400, f"limit must be between 1 and {MAX_ROOMS}")
    return _json({"rooms": await readmodel.list_rooms(request.app["redis"], _now_ms(), limit)})


async def snapshot(request: web.Request) -> web.Response:
    room_id = _id(request, "room_id")
    if room_id is None:
        return _error(400, "bad room id")
    body = await readmodel.room_snapshot(request.app["redis"], room_id, _now_ms())
    if body is None:
        return _error(404, f"unknown room {room_id!r}")
    return _json(body)


async def sale(request: web.Request) -> web.Response:
    sale_id = _id(request, "sale_id")
    if sale_id is None:
        return _error(400, "bad sale id")
    body = await readmodel.sale_view(request.app["redis"], sale_id, _now_ms())
    if body is None:
        return _error(404, f"unknown sale {sale_id!r}")
    return _json(body)


async def funnel(request: web.Request) -> web.Response:
    room_id = _id(request, "room_id")
    if room_id is None:
        return _error(400, "bad room id")
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


def add_api_routes(app: web.Application) -> None:
    """GET /api/rooms, /api/rooms/{room_id}/snapshot, /api/sales/{sale_id}, /api/rooms/{room_id}/funnel."""
    app.router.add_get("/api/rooms", rooms)
    app.router.add_get("/api/rooms/{room_id}/snapshot", snapshot)
    app.router.add_get("/api/sales/{sale_id}", sale)
    app.router.add_get("/api/rooms/{room_id}/funnel", funnel)
