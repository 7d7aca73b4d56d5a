"""A Faust transport: the aiokafka driver with a configurable fetch wait and coalesced records.

Faust hard-codes ``fetch_max_wait_ms=1500``; on brokers that hold a fetch for the full wait
(Tansu does) that adds up to 1.5 s of latency. The transport is registered through Faust's own
plugin namespace (entry point ``faust.transports``: ``flashsale = streams.transport:Transport``),
so the broker URL scheme ``flashsale://`` selects it.

**Coalescing.** Faust spends about 100 µs of worker CPU per Kafka record (a Message, an Event per
channel, stream iteration, sensors, an ack each). For the topics in ``app.coalesce_topics`` the
consumer hands streams one :class:`CoalescedMessage` per run of consecutive records of a partition
from one fetch (at most ``app.coalesce_max_records`` records and ``app.coalesce_max_bytes`` bytes
of values, at least one record), so that cost is paid once per run, not once per record. The
agents expand a run into its records (``streams.batching.records_of``).

Acks keep Faust's bookkeeping: the final ack of a coalesced message (every stream that got it has
acked it) marks each of its offsets acked, so Faust's commit (the first gap-free run of acked
offsets) commits a run only once all of it is done, exactly as if its records had come one by one.
Two rules make it safe across rebalances:

- a coalesced message of a partition that is revoked is *dead*: it is marked acked without
  recording any offset, so however late its batch finishes (or Faust skips it as stale), it can
  never commit anything for the partition's next owner, nor for this worker if the partition comes
  back; its records are delivered again from the committed offset;
- an ack of a message fetched in an older consumer generation records nothing, for the same reason.

Faust registers a "gap" (offsets it treats as acked) whenever one message's offset is more than
one above the last read; a coalesced message sets the read offset just below its own before it is
handed over, so no gap is ever recorded for the offsets it carries (they are acked by its ack).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import aiokafka
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, Message
from faust.types.tuples import ConsumerMessage, ack_lock
from mode.utils.futures import notify

logger = logging.getLogger(__name__)

DEFAULT_FETCH_MAX_WAIT_MS = 50
DEFAULT_COALESCE_MAX_RECORDS = 1000
DEFAULT_COALESCE_MAX_BYTES = 1 << 20


class CoalescedMessage(ConsumerMessage):
    """Consecutive records ``records`` (aiokafka ``ConsumerRecord``s, offsets ``first_offset`` ..
    ``offset``) of one partition, delivered to streams as one message. ``value`` is None: read the
    records (``streams.batching.records_of``), never the value."""

    __slots__ = ("records", "first_offset")

    def __init__(self, tp: TP, records: Sequence[Any], generation_id: int | None) -> None:
        first, last = records[0], records[-1]
        ts = last.timestamp or 0  # Faust's unit: seconds
        super().__init__(last.topic, last.partition, last.offset, ts / 1000.0,
                         last.timestamp_type, None, first.key, None, None, 0,
                         sum(len(r.value or b"") for r in records), tp, generation_id=generation_id)
        self.records: Sequence[Any] = records
        self.first_offset: int = first.offset


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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # coalesced messages handed out and not yet acked, to kill those of revoked partitions
        self._live: weakref.WeakSet[CoalescedMessage] = weakref.WeakSet()
        for name in ("_read_offset", "_acked", "_acked_index", "_committed_offset"):
            if not hasattr(self, name):
                raise RuntimeError(f"faust changed: its Consumer has no {name} to coalesce records with")

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _coalescing(self) -> tuple[frozenset[str], int, int]:
        app = self.app
        return (frozenset(getattr(app, "coalesce_topics", ())),
                max(1, int(getattr(app, "coalesce_max_records", DEFAULT_COALESCE_MAX_RECORDS))),
                max(1, int(getattr(app, "coalesce_max_bytes", DEFAULT_COALESCE_MAX_BYTES))))

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's ``Consumer.getmany`` (same flow, generation and partition checks), with the
        records of coalescing topics cut into runs, each handed over as one CoalescedMessage."""
        topics, max_records, max_bytes = self._coalescing()
        if not topics:
            async for item in super().getmany(timeout):
                yield item
            return
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            logger.debug("getmany called while flow not active; seeking back to the committed offsets")
            try:
                await self.perform_seek()
            except Exception as exc:  # what Faust does: the next fetch seeks again
                logger.warning("seek while the flow is not active failed: %r", exc)
            return
        runs: dict[TP, list[Any]] = {}
        for tp, recs in records.items():
            if tp.topic in topics:
                runs[tp] = [_Run(r) for r in _cut(recs, max_records, max_bytes)]
            else:
                runs[tp] = list(recs)
        to_message = self._to_message
        for tp, item in self.scheduler.iterate(runs):
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                break
            if not (active_partitions is None or tp in active_partitions or tp in self._buffered_partitions):
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if not isinstance(item, _Run):
                yield tp, to_message(tp, item)
                continue
            run = item.records
            read = self._read_offset[tp]
            if read is not None and run[0].offset < read:  # what Faust drops as already read
                run = [r for r in run if r.offset >= read]
                if not run:
                    continue
            message = CoalescedMessage(tp, run, generation_id)
            self._live.add(message)
            # No gap for the offsets the message carries: its own ack covers them.
            self._read_offset[tp] = message.offset - 1
            yield tp, message

    def ack(self, message: Message) -> bool:
        if not isinstance(message, CoalescedMessage):
            return bool(super().ack(message))
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            self._live.discard(message)
            self._unacked_messages.discard(message)
            if message.generation_id != self.app.consumer_generation_id:
                logger.info("ack of %s offsets %d-%d fetched in an older generation: not committed, "
                            "delivered again", message.tp, message.first_offset, message.offset)
                return False
            if not self.app.topics.acks_enabled_for(message.topic):
                return False
            tp = message.tp
            committed = self._committed_offset[tp]
            acked_index = self._acked_index[tp]
            start = message.first_offset if committed is None else max(committed, message.first_offset)
            fresh = [o for o in range(start, message.offset + 1) if o not in acked_index]
            try:
                if not fresh:
                    return False
                acked_index.update(fresh)
                self._acked[tp].extend(fresh)
                # commit_every counts deliveries: one per run, so a run costs one, not len(run), commits
                self._n_acked += 1
                return True
            finally:
                notify(self._waiting_for_ack)

    def kill_runs(self, revoked: set[TP]) -> int:
        """Mark the coalesced messages in flight of ``revoked`` partitions acked without recording
        an offset: however late their batches finish, nothing of theirs can commit. Returns how many."""
        with ack_lock:
            dead = [m for m in list(self._live) if m.tp in revoked]
            for m in dead:
                m.acked = True
                self._live.discard(m)
                self._unacked_messages.discard(m)
        return len(dead)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        dead = self.kill_runs(revoked)
        if dead:
            logger.info("partitions revoked with %d coalesced messages in flight; they are delivered again", dead)
        await super().on_partitions_revoked(revoked)


class _Run:
    """One run of a partition's records, before it becomes a message."""

    __slots__ = ("records",)

    def __init__(self, records: list[Any]) -> None:
        self.records = records


def _cut(records: Sequence[Any], max_records: int, max_bytes: int) -> list[list[Any]]:
    """Consecutive slices of ``records`` of at most ``max_records`` and ``max_bytes`` of values."""
    out: list[list[Any]] = []
    run: list[Any] = []
    size = 0
    for r in records:
        n = len(r.value or b"")
        if run and (len(run) >= max_records or size + n > max_bytes):
            out.append(run)
            run, size = [], 0
        run.append(r)
        size += n
    if run:
        out.append(run)
    return out


class Transport(driver.Transport):
    Consumer: ClassVar[type[driver.Consumer]] = Consumer
