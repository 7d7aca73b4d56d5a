"""Reference point: a naive Faust agent that awaits Redis once per event (what not to do).

Same Lua script and decisions as the pipeline, but one EVALSHA round trip per order attempt
and one produce per decision. ``python -m bench.naive_agent`` with FLASHSALE_* settings.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from kernel.redis import connect
from schemas.codec import decode_record, encode_event
from schemas.topics import TopicNames, partition_key
from streams.metrics import WorkerMetrics
from streams.pipeline import FlashsaleApp
from streams.settings import get_settings
from streams.stock.logic import decision_event, sale_of, to_op
from streams.stock.store import StockStore


def build() -> FlashsaleApp:
    s = get_settings()
    app = FlashsaleApp(s.app_id + "-naive", **{**s.faust_options(), "web_enabled": False})
    app.fetch_max_wait_ms = s.fetch_max_wait_ms
    names = TopicNames(s.topic_prefix)
    orders = app.topic(names.orders, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    decisions = app.topic(
        names.decisions, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    holder: dict[str, StockStore] = {}

    @app.agent(orders, name="naive.stock")
    async def naive(stream: Any) -> None:
        async for value in stream:
            if "gw" not in holder:
                holder["gw"] = StockStore(connect(s.redis_url), WorkerMetrics())
            for event in decode_record(value).events:
                op, sale_id = to_op(event), sale_of(event)
                if op is None or sale_id is None:
                    continue
                res = (await holder["gw"].apply({sale_id: [op]}, event.ts))[sale_id]  # one round trip per event
                if res.results and res.results[0].get("op") == "place":
                    d = decision_event(event, res.results[0])
                    await decisions.send(key=partition_key(d), value=encode_event(d))

    return app


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    faust.Worker(build(), loglevel="warning", quiet=True, redirect_stdouts=False).execute_from_commandline()
