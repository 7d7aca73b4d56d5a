"""The dashboard's aiohttp app: page, static assets, live SSE, read API (room-scoped by token), metrics, health."""

from __future__ import annotations

import asyncio
import html
import logging
import secrets
import time
import warnings
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumers import access, readmodel
from consumers.api import add_api_routes
from consumers.dashboard.live import LiveHub, make_live_handler
from consumers.dashboard.metrics import DashboardMetrics
from consumers.dashboard.settings import DashboardSettings
from kernel.redis import connect

logger = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
READY_TIMEOUT_S: Final = 1.0
# Everything the page needs comes from this origin; inline SVG is markup, not script. Product images
# (sale.opened's image_url) are https URLs or paths here, so images alone may also come over https.
CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
              "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

SETTINGS: Final = web.AppKey("dashboard_settings", DashboardSettings)
METRICS: Final = web.AppKey("dashboard_metrics", DashboardMetrics)
HUB: Final = web.AppKey("dashboard_hub", LiveHub)
SIGNER: Final = web.AppKey("dashboard_signer", access.Signer)
REDIS_KEY: Final = "redis"  # the agreed key consumers.api reads: app["redis"]


class ReadModelSource:
    """The live feed's data: consumers.readmodel over one shared Redis client."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    async def snapshot(self, room_id: str, now_ms: int) -> dict[str, Any] | None:
        return await readmodel.room_snapshot(self._redis, room_id, now_ms)

    async def funnel(self, room_id: str, channel: str | None, now_ms: int) -> dict[str, Any] | None:
        return await readmodel.room_funnel(self._redis, room_id, channel, now_ms)

    async def rooms(self, now_ms: int) -> list[dict[str, Any]]:
        return await readmodel.list_rooms(self._redis, now_ms)


def connect_redis(settings: DashboardSettings) -> Any:
    """No I/O here: redis-py connects on the first command, inside the running loop."""
    return connect(settings.redis_url, settings.redis_cluster, connect_timeout_s=2.0, max_connections=64)


def _set_redis(app: web.Application, client: Any) -> None:
    with warnings.catch_warnings():  # the agreed str key; aiohttp prefers AppKey objects
        warnings.simplefilter("ignore")
        app[REDIS_KEY] = client


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers["Referrer-Policy"] = "no-referrer"  # page URLs carry the token
    if request.path == "/" or request.path.startswith(("/static/", "/rooms/")):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-cache"  # revalidate (304) so a deploy shows up at once


def _refusal_page(exc: access.Refused) -> web.Response:
    """What a browser shows for a missing, bad, expired or other-room link: a page, not JSON."""
    title = "Access denied" if exc.status == 403 else "A dashboard link is needed"
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>flashsale live: {title}</title>'
            f'<link rel="stylesheet" href="/static/app.css"></head><body><main id="main">'
            f'<section class="empty" data-testid="access-refused" data-status="{exc.status}"><h1>{title}</h1>'
            f'<p>{html.escape(exc.message)}.</p><p>The host opens the dashboard with a link made by '
            f'<code>flashsale dashboard-link --room ROOM</code> (or printed by <code>flashsale up</code>).</p>'
            f'</section></main></body></html>')
    headers = {"Cache-Control": "no-store"}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="flashsale-dashboard"'
    return web.Response(text=body, status=exc.status, content_type="text/html", headers=headers)


async def index(request: web.Request) -> web.StreamResponse:
    """``/?t=`` (``&room=``) and ``/rooms/{room_id}?t=``: the page, once the link opens the room."""
    room_id = request.match_info.get("room_id") or request.query.get("room") or None
    try:
        grant = access.grant_for(request.app[SIGNER], request)
        if room_id is None and grant.room_id is not None:  # one room's link on /: go to its page
            raise web.HTTPFound(f"/rooms/{quote(grant.room_id, safe='')}?{request.query_string}")
        if room_id is not None:
            access.check(grant, room_id)
    except access.Refused as exc:
        return _refusal_page(exc)
    return web.FileResponse(STATIC_DIR / "index.html")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(request.app[REDIS_KEY].ping(), READY_TIMEOUT_S)
    except Exception as exc:  # any failure means not ready; say why without a stack trace
        return web.json_response({"status": "unavailable", "redis": type(exc).__name__}, status=503)
    if request.app[HUB].closed:
        return web.json_response({"status": "shutting down"}, status=503)
    return web.json_response({"status": "ready", "redis": "ok"})


async def metrics_view(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _log_start(app: web.Application) -> None:
    logger.info("dashboard ready: %r", app[SETTINGS])


async def _close_streams(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for handlers: ending the streams lets them return now.
    await app[HUB].close()


async def _close_redis(app: web.Application) -> None:
    await app[HUB].close()
    await app[REDIS_KEY].aclose()


def signer_for(settings: DashboardSettings) -> access.Signer:
    """The configured key's signer; without one, a random key: nothing is open by accident, and no
    link made elsewhere opens this process."""
    if settings.key is not None:
        return access.Signer(settings.key.get_secret_value().encode())
    logger.warning("FLASHSALE_DASHBOARD_KEY is not set: using a random key, so only links minted by this "
                   "process open the dashboard; set the key to mint links with 'flashsale dashboard-link'")
    return access.Signer(secrets.token_bytes(32))


def create_app(settings: DashboardSettings, registry: CollectorRegistry | None = None) -> web.Application:
    """Build the app; no I/O here: Redis connects on first use, room feeds start with their first viewer."""
    signer = signer_for(settings)
    app = web.Application(middlewares=[access.middleware(signer)])
    app[SETTINGS] = settings
    app[SIGNER] = signer
    app[METRICS] = DashboardMetrics(registry)
    client = connect_redis(settings)
    _set_redis(app, client)
    app[HUB] = LiveHub(ReadModelSource(client), app[METRICS], interval_s=settings.push_interval_s,
                       rooms_refresh_s=settings.rooms_refresh_s, idle_grace_s=settings.idle_room_grace_s,
                       currency=settings.currency, clock=time.time)
    app.on_response_prepare.append(_headers)
    app.on_startup.append(_log_start)
    app.on_shutdown.append(_close_streams)
    app.on_cleanup.append(_close_redis)
    live = make_live_handler(lambda request: request.app[HUB], settings.max_connections, app[METRICS])
    app.router.add_get("/", index)
    app.router.add_get("/rooms/{room_id:.+}", index)
    app.router.add_get("/live/rooms/{room_id:.+}", live)  # room ids may hold any character
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    add_api_routes(app)
    return app
