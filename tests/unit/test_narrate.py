"""The terminal narration of ``flashsale up``: what it says as a sale moves through its phases."""

from __future__ import annotations

from flashsale.narrate import Narrator, money

T0 = 1_800_000_000_000

def sale(**fields: object) -> dict[str, str]:
    base = {"sale_id": "s1", "title": "Silk scarf", "status": "open", "allotted": "500", "available": "500",
            "reserved": "0", "sold": "0", "expired": "0", "cancelled": "0", "gmv": "0", "price": "990",
            "attempts": "0", "soldout": "0", "starts_at": str(T0), "ends_at": str(T0 + 600_000)}
    base.update({k: str(v) for k, v in fields.items()})
    return base

def test_money_is_minor_units_with_the_currency_symbol() -> None:
    assert money(495000) == "¥4,950.00"
    assert money(5, "USD") == "$0.05"
    assert money(-1990, "EUR") == "-€19.90"
    assert money(1200, "JPY") == "¥1,200"
    assert money(100, "CHF") == "CHF 1.00"

def test_a_sale_announced_then_live_then_sold_out_then_released_then_closed() -> None:
    n = Narrator(progress_every_s=3600)
    assert n.observe(T0 - 30_000, {"s1": sale()}) == [
        "sale s1 (Silk scarf) announced: 500 units at ¥9.90, opens in 30 s"]
    assert n.observe(T0 + 100, {"s1": sale()}) == ["sale s1 (Silk scarf) is live: 500 units at ¥9.90"]
    sold_out = sale(available=0, reserved=480, sold=20, soldout=1, sold_out_at=T0 + 500, attempts=3000)
    assert n.observe(T0 + 1000, {"s1": sold_out}) == [
        "sale s1 (Silk scarf) sold out in 0.5 s: 20 sold, 480 reserved, 3,000 attempts"]
    back = sale(available=30, reserved=450, sold=20, soldout=0, sold_out_at=T0 + 500, attempts=3000, expired=25,
                cancelled=5)
    assert n.observe(T0 + 2000, {"s1": back}) == [
        "sale s1 (Silk scarf): 30 reservations released (30 units available again)",
        "sale s1 (Silk scarf) has units again: 30 available"]
    closed = sale(status="closed", available=30, reserved=0, sold=470, gmv=465300, expired=25, cancelled=5)
    assert n.observe(T0 + 3000, {"s1": closed}) == ["sale s1 (Silk scarf) closed: sold 470/500, GMV ¥4,653.00"]
    assert n.observe(T0 + 4000, {"s1": closed}) == []

def test_progress_line_every_interval_for_live_sales_only() -> None:
    n = Narrator(progress_every_s=10)
    live = sale(sold=120, reserved=30, available=350, gmv=118800, attempts=3400)
    old = sale(sale_id="s0", status="closed", starts_at=T0 - 900_000, ends_at=T0 - 300_000)
    assert n.observe(T0 + 1000, {"s1": live, "s0": old}) == [
        "sale s1 (Silk scarf) is live: 500 units at ¥9.90, 120 sold"]  # an old closed sale: nothing
    assert n.observe(T0 + 5000, {"s1": live, "s0": old}) == []
    assert n.observe(T0 + 11_000, {"s1": live, "s0": old}) == [
        "progress: sale s1 (Silk scarf) sold 120/500, reserved 30, 3,400 attempts, GMV so far ¥1,188.00"]
    assert n.observe(T0 + 12_000, {"s1": live, "s0": old}) == []

def test_a_sale_past_its_window_is_closed_and_bad_numbers_do_not_crash() -> None:
    n = Narrator()
    assert n.observe(T0 + 1000, {"s1": sale(sold="x")}) == [
        "sale s1 (Silk scarf) is live: 500 units at ¥9.90, 0 sold"]
    assert n.observe(T0 + 600_000, {"s1": sale()}) == ["sale s1 (Silk scarf) closed: sold 0/500, GMV ¥0.00"]
    assert n.observe(T0, {"s2": {"attempts": "3"}}) == []  # attempts on a sale never opened: no sale_id
