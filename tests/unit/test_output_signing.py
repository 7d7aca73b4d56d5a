"""Output signatures (issue 12, item 2): the header, key rotation, the setting, and who drops what."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kernel.settings import ConfigError
from kernel.signing import HEADER, OutputKeys, key_id
from producers.decisions import DecisionWaiter
from producers.settings import PublisherSettings
from schemas.codec import encode_batch
from schemas.events import Event, OrderAccepted, make_event
from schemas.topics import ALERTS, DECISIONS
from streams.app import create_app
from streams.counters.params import CounterParams
from streams.counters.service import CountersService
from streams.emit import Record
from streams.metrics import WorkerMetrics
from streams.settings import WorkerSettings

KEY = "a" * 32
NEW_KEY = "n" * 48
VALUE = b'[{"type":"order.accepted"}]'


def keys(secret: str) -> OutputKeys:
    parsed = OutputKeys.parse(secret)
    assert parsed is not None
    return parsed


def accepted(order_id: str) -> Event:
    return make_event(OrderAccepted(order_id=order_id, sale_id="s1", sku="k1", qty=1, unit_price=990,
                                    reserved_until=2_000_000_000_000),
                      event_id=f"dec:s1:{order_id}", ts=1_700_000_000_000, room_id="r1", user_id="u1")


# --- the header -------------------------------------------------------------------------------------------

def test_the_header_is_version_key_id_and_hex_mac_and_verifies() -> None:
    k = keys(KEY)
    name, value = k.header(DECISIONS, VALUE)
    version, kid, mac = value.decode().split(":")
    assert (name, version, kid, len(mac)) == (HEADER, "v1", key_id(KEY), 64)
    assert k.verify(DECISIONS, VALUE, [(name, value)])
    assert k.verify(DECISIONS, VALUE, {name: value})  # a mapping of headers too
    assert KEY not in value.decode() and len(kid) == 8


@pytest.mark.parametrize("case", ["no header", "wrong key", "changed value", "other topic", "two headers",
                                  "not hex", "unknown version", "tombstone"])
def test_a_record_no_key_signed_does_not_verify(case: str) -> None:
    k = keys(KEY)
    header = k.header(DECISIONS, VALUE)
    value: bytes | None = VALUE
    headers: list[tuple[str, bytes]] = [header]
    if case == "no header":
        headers = [("other", b"x")]
    elif case == "wrong key":
        headers = [keys("b" * 32).header(DECISIONS, VALUE)]
    elif case == "changed value":
        value = VALUE.replace(b"accepted", b"rejected")
    elif case == "other topic":  # a signed alert replayed onto order-decisions
        headers = [k.header(ALERTS, VALUE)]
    elif case == "two headers":
        headers = [header, header]
    elif case == "not hex":
        headers = [(HEADER, header[1][:-2] + b"zz")]
    elif case == "unknown version":
        headers = [(HEADER, b"v2" + header[1][2:])]
    else:
        value = None
    assert not k.verify(DECISIONS, value, headers)
    assert not k.verify(DECISIONS, VALUE, None)


def test_rotation_signs_with_the_first_key_and_verifies_with_every_key() -> None:
    old, rotated = keys(KEY), keys(f"{NEW_KEY}, {KEY}")
    old_record = old.header(DECISIONS, VALUE)
    assert rotated.verify(DECISIONS, VALUE, [old_record])  # records signed before the rotation still count
    new_record = rotated.header(DECISIONS, VALUE)
    assert rotated.signing_key_id == key_id(NEW_KEY) != old.signing_key_id
    assert not old.verify(DECISIONS, VALUE, [new_record])
    assert keys(NEW_KEY).verify(DECISIONS, VALUE, [new_record])


# --- the setting ------------------------------------------------------------------------------------------

def test_the_key_is_optional_secret_and_32_characters_per_key() -> None:
    assert WorkerSettings.from_env({}).output_keys is None
    s = PublisherSettings.from_env({"FLASHSALE_OUTPUT_SIGNING_KEY": f"{NEW_KEY},{KEY}"})
    assert s.output_keys is not None and s.output_keys.signing_key_id == key_id(NEW_KEY)
    assert KEY not in repr(s)
    with pytest.raises(ConfigError) as err:
        WorkerSettings.from_env({"FLASHSALE_OUTPUT_SIGNING_KEY": f"{KEY},short-secret"})
    assert "FLASHSALE_OUTPUT_SIGNING_KEY" in str(err.value) and "at least 32" in str(err.value)
    assert "short-secret" not in str(err.value)


# --- the worker signs what it sends -----------------------------------------------------------------------

class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **kw: Any) -> asyncio.Future[None]:
        """Like a Faust topic: hands the record over and returns the future of the broker's ack."""
        self.sent.append(kw)
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked


def test_the_worker_signs_every_record_it_sends_once_a_key_is_set(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streams.pipeline"):
        unsigned = create_app(WorkerSettings.from_env({}), CollectorRegistry())
    assert "outputs are not signed" in caplog.text
    pipeline = create_app(WorkerSettings.from_env({"FLASHSALE_OUTPUT_SIGNING_KEY": KEY}), CollectorRegistry())
    for p in (unsigned, pipeline):
        p.decisions = p.dead_letter = FakeTopic()

        async def send_both(p: Any = p) -> None:
            await p.send(DECISIONS, b"k1", VALUE)
            await p.send("dead-letter", b"bad_json", b"{}")

        asyncio.run(send_both())
    assert [set(kw) for kw in unsigned.decisions.sent] == [{"key", "value"}] * 2
    decision, dead = pipeline.decisions.sent
    assert keys(KEY).verify(DECISIONS, VALUE, decision["headers"])
    assert keys(KEY).verify("dead-letter", b"{}", dead["headers"])


# --- readers drop what no worker signed -------------------------------------------------------------------

def test_counters_drop_and_count_decision_records_without_a_valid_signature() -> None:
    metrics = WorkerMetrics()
    svc = CountersService(None, CounterParams(), metrics, None, DECISIONS)  # type: ignore[arg-type]  # prepare: no I/O
    good = Record(DECISIONS, 0, 1, encode_batch([accepted("a")]))
    prepared = svc.prepare([replace(good, offset=0, signature_ok=False), good])
    assert [it.event.data.order_id for it in prepared.items] == ["a"]  # type: ignore[union-attr]
    assert metrics.unsigned_outputs_dropped.labels(DECISIONS)._value.get() == 1
    assert not prepared.out.dead  # dropped, not dead-lettered: a forgery is nobody's bad input


async def test_the_waiter_resolves_only_signed_decisions_when_it_has_keys() -> None:
    k = keys(KEY)
    waiter = DecisionWaiter("127.0.0.1:1", DECISIONS, output_keys=k)
    forged = encode_batch([accepted("a")])
    waiter._apply_record(forged, None)
    waiter._apply_record(forged, [keys("c" * 32).header(DECISIONS, forged)])
    assert waiter.recent("s1", "a", "u1") is None and waiter.unsigned_dropped == 2
    waiter._apply_record(forged, [k.header(DECISIONS, forged)])
    assert waiter.recent("s1", "a", "u1") is not None
    open_waiter = DecisionWaiter("127.0.0.1:1", DECISIONS)  # without keys: as before, anything decodable counts
    open_waiter._apply_record(forged, None)
    assert open_waiter.recent("s1", "a", "u1") is not None
