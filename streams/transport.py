"""A Faust transport that is the aiokafka driver with a configurable consumer fetch wait.

Faust hard-codes ``fetch_max_wait_ms=1500``; on brokers that hold a fetch for the full wait
(Tansu does) that adds up to 1.5 s of latency. The transport is registered through Faust's own
plugin namespace (entry point ``faust.transports``: ``flashsale = streams.transport:Transport``),
so the broker URL scheme ``flashsale://`` selects it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiokafka
from faust.transport.drivers import aiokafka as driver

DEFAULT_FETCH_MAX_WAIT_MS = 50


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = int(getattr(self.app, "fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS))
        if not hasattr(consumer, "_fetch_max_wait_ms"):
            raise RuntimeError("aiokafka changed: AIOKafkaConsumer has no _fetch_max_wait_ms to override")
        # The fetcher is built in start() from this attribute, so setting it before start is enough.
        consumer._fetch_max_wait_ms = wait_ms
        return consumer


class Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    Consumer: ClassVar[type[driver.Consumer]] = Consumer
