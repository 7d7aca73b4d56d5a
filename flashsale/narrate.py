"""Terminal narration of the sales ``flashsale up`` runs: phases, sell-outs, releases, GMV so far.

``Narrator.observe`` is pure: given the time and every sale's hash as the stock core keeps it
(``schemas.keys.sale``), it returns the lines worth printing since the last call, plus one progress
line per live sale every ``progress_every_s``. ``read_sales`` is the only I/O, one pipeline per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from schemas import keys

SYMBOLS: Final = {"CNY": "¥", "USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "HKD": "HK$"}
ZERO_DECIMALS: Final = frozenset({"JPY", "KRW"})


def money(minor: int, currency: str = "CNY") -> str:
    """An amount in minor units (cents, fen) for the terminal: ``¥4,950.00``."""
    symbol = SYMBOLS.get(currency, currency + " ")
    if currency in ZERO_DECIMALS:
        return f"{symbol}{minor:,}"
    sign = "-" if minor < 0 else ""
    whole, cents = divmod(abs(minor), 100)
    return f"{sign}{symbol}{whole:,}.{cents:02d}"


@dataclass(frozen=True)
class SaleState:
    """The fields of a sale's hash the narration reads."""

    sale_id: str
    title: str
    status: str
    allotted: int
    available: int
    reserved: int
    sold: int
    expired: int
    cancelled: int
    gmv: int
    price: int
    attempts: int
    sold_out: bool
    sold_out_at: int
    starts_at: int
    ends_at: int

    @classmethod
    def parse(cls, sale_id: str, h: Mapping[str, str]) -> SaleState:
        def num(name: str) -> int:
            try:
                return int(h.get(name) or 0)
            except ValueError:
                return 0

        return cls(sale_id=sale_id, title=h.get("title") or "", status=h.get("status") or "",
                   allotted=num("allotted"), available=num("available"), reserved=num("reserved"),
                   sold=num("sold"), expired=num("expired"), cancelled=num("cancelled"), gmv=num("gmv"),
                   price=num("price"), attempts=num("attempts"), sold_out=h.get("soldout") == "1",
                   sold_out_at=num("sold_out_at"), starts_at=num("starts_at"), ends_at=num("ends_at"))

    def phase(self, now_ms: int) -> str:
        if self.status != "open" or (self.ends_at and now_ms >= self.ends_at):
            return "closed"
        if now_ms < self.starts_at:
            return "announced"
        return "sold out" if self.sold_out else "live"

    @property
    def name(self) -> str:
        return f"sale {self.sale_id}" + (f" ({self.title})" if self.title else "")


class Narrator:
    """Turns successive readings of the sales into lines: what changed, and a periodic progress line."""

    def __init__(self, currency: str = "CNY", progress_every_s: float = 10.0) -> None:
        self.currency = currency
        self.progress_every_ms = int(progress_every_s * 1000)
        self._last: dict[str, tuple[SaleState, str]] = {}
        self._next_progress_ms: int | None = None

    def observe(self, now_ms: int, sales: Mapping[str, Mapping[str, str]]) -> list[str]:
        lines: list[str] = []
        states = {sid: SaleState.parse(sid, h) for sid, h in sales.items() if h.get("sale_id")}
        for sid in sorted(states, key=lambda s: (states[s].starts_at, s)):
            lines += self._changes(now_ms, states[sid])
        if self._next_progress_ms is None:
            self._next_progress_ms = now_ms + self.progress_every_ms
        elif now_ms >= self._next_progress_ms:
            self._next_progress_ms = now_ms + self.progress_every_ms
            live = [s for s in states.values() if s.phase(now_ms) in ("live", "sold out")]
            lines += [self._progress(s) for s in sorted(live, key=lambda s: s.sale_id)]
        return lines

    def _changes(self, now_ms: int, s: SaleState) -> list[str]:
        phase = s.phase(now_ms)
        previous = self._last.get(s.sale_id)
        self._last[s.sale_id] = (s, phase)
        m = self.currency
        if previous is None:
            if phase == "closed":  # an old sale from before this run: say nothing
                return []
            if phase == "announced":
                return [f"{s.name} announced: {s.allotted:,} units at {money(s.price, m)}, opens in "
                        f"{(s.starts_at - now_ms) / 1000:.0f} s"]
            return [f"{s.name} is {phase}: {s.allotted:,} units at {money(s.price, m)}, {s.sold:,} sold"]
        before, was = previous
        out: list[str] = []
        if was == "announced" and phase in ("live", "sold out"):
            out.append(f"{s.name} is live: {s.allotted:,} units at {money(s.price, m)}")
        if s.sold_out and not before.sold_out:
            took = (s.sold_out_at - s.starts_at) / 1000 if s.sold_out_at and s.starts_at else None
            after = f" in {took:.1f} s" if took is not None and took >= 0 else ""
            out.append(f"{s.name} sold out{after}: {s.sold:,} sold, {s.reserved:,} reserved, "
                       f"{s.attempts:,} attempts")
        released = (s.expired - before.expired) + (s.cancelled - before.cancelled)
        if released > 0:
            out.append(f"{s.name}: {released:,} reservation{'s' if released != 1 else ''} released "
                       f"({s.available:,} units available again)")
        if before.sold_out and not s.sold_out and phase == "live":
            out.append(f"{s.name} has units again: {s.available:,} available")
        if phase == "closed" and was != "closed":
            out.append(f"{s.name} closed: sold {s.sold:,}/{s.allotted:,}, GMV {money(s.gmv, m)}")
        return out

    def _progress(self, s: SaleState) -> str:
        return (f"progress: {s.name} sold {s.sold:,}/{s.allotted:,}, reserved {s.reserved:,}, "
                f"{s.attempts:,} attempts, GMV so far {money(s.gmv, self.currency)}")


def read_sales(client: Any) -> dict[str, dict[str, str]]:
    """Every sale's hash, by sale id, from a synchronous redis-py client (one pipeline)."""
    ids = sorted(v.decode() if isinstance(v, bytes) else str(v) for v in client.smembers(keys.sales_index()))
    if not ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for sid in ids:
        pipe.hgetall(keys.sale(sid))
    out: dict[str, dict[str, str]] = {}
    for sid, raw in zip(ids, pipe.execute(), strict=True):
        out[sid] = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                    for k, v in raw.items()}
    return out
