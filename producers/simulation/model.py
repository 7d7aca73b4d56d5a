"""Parameters of a simulated live stream with flash sales (pure data, validated on construction)."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import CHANNELS

# Traffic mix of arriving viewers (weights in the order of schemas.events.CHANNELS).
DEFAULT_CHANNEL_WEIGHTS: tuple[float, ...] = (0.45, 0.18, 0.15, 0.17, 0.05)


@dataclass(frozen=True)
class SaleWindow:
    """When one sale is announced (sale.opened published), starts, and ends; seconds from stream start."""

    index: int
    announce_s: float
    open_s: float
    end_s: float


@dataclass(frozen=True)
class SimulationParams:
    """Everything that shapes a simulated stream; a plan is a pure function of these and a seed."""

    seed: int = 42
    rooms: int = 1
    viewers: int = 2000  # per room
    duration_s: float = 90.0
    sales: int = 2  # per room
    allotment: int = 300
    attempts_factor: float = 10.0  # order.placed attempts per sale = allotment * factor
    per_user_limit: int = 2
    ttl_s: int = 20  # reservation TTL announced in sale.opened
    price: int = 9900  # minor units
    first_sale_at_s: float = 10.0
    sale_window_s: float = 35.0
    announce_lead_s: float = 5.0  # sale.opened is published this long before starts_at
    # What buyers do once an order is accepted (fractions of accepted orders; the rest abandon).
    pay_fraction: float = 0.70
    cancel_fraction: float = 0.05
    late_pay_fraction: float = 0.04  # of payers: pay only after the reservation expired
    # Abuse and noise in the order burst (fractions of order attempts).
    duplicate_fraction: float = 0.02  # exact re-sends of the same event (same event_id)
    over_limit_fraction: float = 0.04  # qty above per_user_limit
    multi_qty_fraction: float = 0.15  # qty 2..per_user_limit
    early_fraction: float = 0.01  # tapped "buy" before starts_at
    # Audience behaviour.
    stale_fraction: float = 0.05  # of leaving viewers: disconnect without viewer.left
    end_wave: bool = True  # viewers still watching leave when the stream ends
    like_rate: float = 0.05  # like events per viewer per second (before bursts)
    comment_rate: float = 0.006
    share_rate: float = 0.0015
    browse_rate: float = 0.004  # product clicks on the room's catalog per viewer per second
    click_fraction: float = 0.45  # viewers watching an announcement who open the product card
    cart_fraction: float = 0.30  # of clickers
    distributors: int = 12
    channel_weights: tuple[float, ...] = DEFAULT_CHANNEL_WEIGHTS

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)

        need(1 <= self.rooms <= 1000, "rooms must be in 1..1000")
        need(1 <= self.viewers <= 1_000_000, "viewers must be in 1..1000000")
        need(5.0 <= self.duration_s <= 86_400.0, "duration must be in 5..86400 seconds")
        need(0 <= self.sales <= 100, "sales must be in 0..100")
        need(1 <= self.allotment <= 10_000_000, "allotment must be in 1..10000000")
        need(0.0 < self.attempts_factor <= 1000.0, "attempts factor must be in (0, 1000]")
        need(1 <= self.per_user_limit <= 1000, "per-user limit must be in 1..1000")
        need(2 <= self.ttl_s <= 86_400, "ttl must be in 2..86400 seconds")
        need(self.price >= 0, "price must be >= 0")
        need(0.0 <= self.first_sale_at_s < self.duration_s - 1.0, "first sale must start before the stream ends")
        need(self.sale_window_s >= 1.0, "sale window must be >= 1 s")
        need(self.announce_lead_s >= 0.0, "announce lead must be >= 0")
        for name in ("pay_fraction", "cancel_fraction", "late_pay_fraction", "duplicate_fraction",
                     "over_limit_fraction", "multi_qty_fraction", "early_fraction", "stale_fraction",
                     "click_fraction", "cart_fraction"):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1]")
        need(self.pay_fraction + self.cancel_fraction <= 1.0, "pay + cancel fractions must be <= 1")
        need(self.over_limit_fraction + self.multi_qty_fraction <= 1.0, "qty fractions must sum to <= 1")
        for name in ("like_rate", "comment_rate", "share_rate", "browse_rate"):
            need(0.0 <= getattr(self, name) <= 10.0, f"{name} must be in [0, 10]")
        need(self.distributors >= 1, "distributors must be >= 1")
        need(len(self.channel_weights) == len(CHANNELS) and sum(self.channel_weights) > 0
             and min(self.channel_weights) >= 0, "channel weights: one non-negative weight per channel")

    @property
    def attempts_per_sale(self) -> int:
        return max(1, round(self.allotment * self.attempts_factor))

    def sale_windows(self) -> list[SaleWindow]:
        """The sales' schedule: the first at ``first_sale_at_s``, the rest spread so all end in time."""
        if self.sales == 0:
            return []
        last_end = self.duration_s - 1.0
        window = max(1.0, min(self.sale_window_s, last_end - self.first_sale_at_s))
        spacing = 0.0
        if self.sales > 1:
            spacing = max(0.0, (last_end - window - self.first_sale_at_s) / (self.sales - 1))
        out = []
        for k in range(self.sales):
            open_s = self.first_sale_at_s + k * spacing
            out.append(SaleWindow(k, max(0.0, open_s - self.announce_lead_s), open_s, open_s + window))
        return out
