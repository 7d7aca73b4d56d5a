"""The gateway's aiohttp app: factory, error/metrics middleware, lifecycle, and a signal-aware server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry

from producers.gateway.commands import add_command_routes
from producers.gateway.http import ApiError, Authenticator, json_response
from producers.gateway.metrics import GatewayMetrics
from producers.gateway.ratelimit import TokenBucketLimiter
from producers.gateway.routes import STATE, add_routes
from producers.gateway.settings import GatewaySettings
from producers.gateway.state import GatewayState

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KEEPALIVE_TIMEOUT_S: Final = 30.0
LINGERING_TIME_S: Final = 1.0


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "other"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn ApiErrors into JSON answers; count every request by route template and status."""
    state = request.app[STATE]
    started = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except ApiError as err:
        status = err.status
        if err.reason is not None:
            state.metrics.rejected.labels(err.reason).inc()
        return err.response()
    except web.HTTPException as exc:  # aiohttp's own 404/405: answer in the same JSON shape
        status = exc.status
        if status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        return json_response({"error": code, "message": exc.reason}, status=status, headers=headers)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, _route(request))
        return json_response({"error": "internal", "message": "internal error"}, status=500)
    finally:
        state.metrics.observe_request(_route(request), status, time.perf_counter() - started)


def create_app(settings: GatewaySettings, registry: CollectorRegistry | None = None) -> web.Application:
    """Build the app; clients are created and Kafka is connected when it starts (no I/O here)."""
    app = web.Application(middlewares=[observe], client_max_size=settings.max_body_bytes)
    metrics = GatewayMetrics(registry)
    app[STATE] = GatewayState(settings=settings, metrics=metrics,
                              limiter=TokenBucketLimiter(settings.rate_limit, settings.rate_burst),
                              auth=Authenticator(settings.credentials(), frozenset(settings.anonymous_scopes)))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE]
        await state.open()
        logger.info("gateway starting: %r (auth %s, rate limit %g events/s, burst %d)", settings,
                    "on" if state.auth.enabled else "off", settings.rate_limit, settings.rate_burst)
        try:
            yield
        finally:
            await state.close()

    app.cleanup_ctx.append(lifecycle)
    add_routes(app)
    add_command_routes(app)
    return app


def make_runner(app: web.Application) -> web.AppRunner:
    # keepalive bounds idle connections; a short lingering time stops a client that keeps sending an
    # already refused body from holding the connection.
    return web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT_S,
                         lingering_time=LINGERING_TIME_S)


async def serve(settings: GatewaySettings, stop: asyncio.Event | None = None,
                registry: CollectorRegistry | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``); then stop accepting, finish in-flight requests, flush, close."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    runner = make_runner(create_app(settings, registry))
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=settings.shutdown_timeout_s,
                           reuse_port=settings.reuse_port or None)
        await site.start()
        logger.info("gateway listening on http://%s:%d", settings.host, settings.port)
        await stop.wait()
        logger.info("gateway shutting down")
    finally:
        await runner.cleanup()
        for sig in installed:
            loop.remove_signal_handler(sig)
