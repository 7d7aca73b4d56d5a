"""The contract of issue 16: order.refunded, the commission rule on sale.opened, the ledger records and the
rounding rule (pure, no I/O)."""

from __future__ import annotations

import random

import pytest

from schemas.events import OrderRefunded, ValidationError, parse_event
from schemas.order_record import (
    DistributorTotals,
    commission,
    parse_distributor_totals,
    parse_ledger_entry,
    parse_order_record,
)
from schemas.topics import ORDERS, logical_topic
from tests.unit.schemas.schema_samples import sample_dict


def refund_dict(**data: object) -> dict[str, object]:
    obj = sample_dict("order.refunded")
    obj["data"] = {"order_id": "o-1", "sale_id": "sale-1", "sku": "sku-1", **data}
    return obj


def test_a_refund_defaults_to_no_restock_and_no_amount() -> None:
    event = parse_event(refund_dict())
    assert isinstance(event.data, OrderRefunded)
    assert (event.data.restock, event.data.amount) == (False, None)
    assert logical_topic("order.refunded") == ORDERS


@pytest.mark.parametrize(("data", "field"), [
    ({"restock": 1}, "data.restock"),  # a bool, not an int
    ({"amount": -1}, "data.amount"),
    ({"amount": 10**14}, "data.amount"),
    ({"reason": "x"}, "data.reason"),
])
def test_a_bad_refund_names_its_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_event(refund_dict(**data))
    assert err.value.field == field


@pytest.mark.parametrize("name", ["commission_bps", "head_commission_bps"])
def test_commission_rates_are_basis_points_0_to_10000(name: str) -> None:
    obj = sample_dict("sale.opened")
    for ok in (0, 350, 10_000):
        obj["data"][name] = ok
        assert getattr(parse_event(obj).data, name) == ok
    for bad in (-1, 10_001, 1.5):
        obj["data"][name] = bad
        with pytest.raises(ValidationError) as err:
            parse_event(obj)
        assert err.value.field == f"data.{name}"


def test_commission_is_the_floor_of_amount_times_bps_over_10000() -> None:
    assert commission(1999, 350) == 69  # 69.965
    assert commission(10_000, 1) == 1 and commission(9_999, 1) == 0
    assert commission(123, 10_000) == 123 and commission(123, 0) == 0
    rng = random.Random(16)
    for _ in range(1000):
        amount, bps = rng.randrange(10**14), rng.randrange(10_001)
        assert commission(amount, bps) * 10_000 <= amount * bps < (commission(amount, bps) + 1) * 10_000


def test_the_records_read_what_the_stock_script_writes() -> None:
    rec = parse_order_record(b'{"s":"refunded","u":"u1","q":2,"p":5,"c":"share_link","f":"kol","n":"r1","y":7,'
                             b'"w":true,"x":3}')
    assert (rec.state, rec.channel, rec.referrer_id, rec.refund_event_id, rec.refunded_at, rec.restocked) == (
        "refunded", "share_link", "kol", "r1", 7, True)
    assert not rec.holds_units and rec.accepted
    old = parse_order_record(b'{"s":"sold","u":"u1","q":1,"p":5}')  # written before issue 16
    assert (old.channel, old.referrer_id, old.restocked) == ("", None, False)
    entry = parse_ledger_entry(b'{"d":"kol","g":3998,"b":350,"c":139,"k":139,"t":1,"y":2}')
    assert (entry.distributor, entry.commission, entry.net) == ("kol", 139, 0)
    t = parse_distributor_totals(b'{"o":2,"g":10,"e":5,"r":1,"rg":4,"k":2}')
    assert (t + DistributorTotals(orders=1, earned=3)).net == 6
