"""The reference HTTP server of ``python -m bench http``: the smallest aiohttp POST handler for the order route.

It reads and parses the JSON body and answers a small JSON object, on the same aiohttp and event loop as
the gateway, so the gateway's ratio to it is the cost of what the gateway adds on top of HTTP.
``python -m bench.minimal_http [PORT]`` (default: $BENCH_MINIMAL_PORT).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import orjson
from aiohttp import web


async def post_order(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    return web.Response(
        body=orjson.dumps({"status": "ok", "order_id": body.get("order_id")}), content_type="application/json"
    )


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ready")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/sales/{sale_id}/orders", post_order)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1] if len(sys.argv) > 1 else os.environ["BENCH_MINIMAL_PORT"])))
