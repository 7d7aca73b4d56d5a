"""Seeded, pure generation of a live stream with flash sales as a time-ordered plan of events.

Per room: viewers arrive on a curve (regulars at the start, a front-loaded ramp, a rush when a sale
is announced, stragglers), stay for a while and leave (a few silently: stale sessions); likes come
in bursts, comments and shares trickle; viewers open product cards and add to cart. The host opens
each sale with sale.opened a few seconds before ``starts_at``; then an order burst far above the
allotment: buyers retry with new order ids, some ask for more than the per-user limit, a few tap
too early, and some requests are re-sent verbatim (same event_id). Each order carries the buyer's
intent if accepted (pay after a delay, cancel, or abandon so the reservation expires).
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections import Counter
from itertools import accumulate

from schemas.events import (
    CHANNELS,
    CartAdded,
    CartRemoved,
    Channel,
    Event,
    OrderPlaced,
    Payload,
    ProductClicked,
    SaleClosed,
    SaleOpened,
    ViewerCommented,
    ViewerJoined,
    ViewerLeft,
    ViewerLiked,
    ViewerShared,
    new_event,
)

from .model import SaleWindow, SimulationParams
from .oracle import reference_outcomes
from .plan_types import Intent, Plan, SaleSpec, Scheduled

DEFAULT_T0_MS = 1_750_000_000_000  # a fixed clock origin keeps plans comparable in tests
MAX_RUN_ID_LEN = 40

COMMENTS = (
    "hello from Chengdu!", "what size is the model wearing?", "is it waterproof?", "love this host",
    "can you show the back?", "how long is shipping?", "just joined, what did I miss?", "the colour is gorgeous",
    "does it come in black?", "first time here", "666", "so cute", "my sister bought this last week, great quality",
)
SALE_COMMENTS = (
    "link please!!", "how many left?", "ready ready ready", "I got one!!", "sold out already??",
    "it keeps saying busy", "3 2 1 go", "please add more stock", "paid!", "missed it again",
    "is there a second round?", "can't believe it's this cheap",
)
SHARE_TARGETS: tuple[Channel, ...] = ("community_group", "share_link", "other")
SHARE_WEIGHTS = (0.5, 0.35, 0.15)


class _Viewer:
    __slots__ = ("user_id", "channel", "referrer_id", "join", "leave", "stale", "clicked")

    def __init__(self, user_id: str, channel: str, referrer_id: str | None, join: float, leave: float,
                 stale: bool) -> None:
        self.user_id = user_id
        self.channel = channel
        self.referrer_id = referrer_id
        self.join = join
        self.leave = leave
        self.stale = stale
        self.clicked: set[int] = set()


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth for small means, a rounded normal for large ones)."""
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class _Intensity:
    """A per-second activity profile with bursts; samples times in [a, b) proportionally to it."""

    def __init__(self, profile: list[float]) -> None:
        self.profile = profile
        self.cum = [0.0, *accumulate(profile)]
        self.n = len(profile)

    def mass(self, a: float, b: float) -> float:
        lo, hi = max(0, int(a)), min(self.n, math.ceil(b))
        if hi <= lo:
            return 0.0
        full = self.cum[hi] - self.cum[lo]
        return max(0.0, full - (a - lo) * self.profile[lo] - (hi - b) * self.profile[hi - 1])

    def sample(self, rng: random.Random, a: float, b: float, count: int) -> list[float]:
        lo, hi = max(0, int(a)), min(self.n, math.ceil(b))
        if hi <= lo or count <= 0:
            return []
        base, total = self.cum[lo], self.cum[hi] - self.cum[lo]
        out = []
        for _ in range(count):
            i = min(max(bisect_right(self.cum, base + rng.random() * total) - 1, lo), hi - 1)
            out.append(min(max(i + rng.random(), a), b - 0.001))
        return out


class _RoomBuilder:
    """Builds one room's events into a shared list (ids and sequence numbers come from the plan)."""

    def __init__(self, plan: _PlanBuilder, room_no: int) -> None:
        self.plan = plan
        self.p = plan.params
        self.room_no = room_no
        self.room_id = f"room-{room_no}"
        self.rng = random.Random(f"{self.p.seed}:room:{room_no}")
        self.duration = self.p.duration_s
        self.windows = self.p.sale_windows()
        self.sales: list[SaleSpec] = []
        self.catalog = [f"sku-{room_no}-{k + 1:02d}" for k in range(max(3, self.p.sales + 2))]

    # --- emission -------------------------------------------------------------------------
    def emit(self, at_s: float, payload: Payload, user_id: str, channel: str = "live_room",
             referrer_id: str | None = None) -> Event:
        return self.plan.emit(at_s, payload, self.room_id, user_id, channel, referrer_id)

    def emit_as(self, v: _Viewer, at_s: float, payload: Payload) -> Event:
        return self.emit(at_s, payload, v.user_id, v.channel, v.referrer_id)

    # --- the room -------------------------------------------------------------------------
    def build(self) -> None:
        viewers = self.arrivals()
        self.joins(viewers)  # first, so a join sorts before anything else its viewer does in the same ms
        intensity = self.intensity()
        for k, w in enumerate(self.windows):
            self.sale(k, w, viewers)
        self.leaves(viewers)
        self.engagement(viewers, intensity)

    def arrivals(self) -> list[_Viewer]:
        rng, p, d = self.rng, self.p, self.duration
        channels = list(CHANNELS)
        cum_channels = list(accumulate(p.channel_weights))
        distributors = [f"dist-{i + 1:02d}" for i in range(p.distributors)]
        cum_dist = list(accumulate(1.0 / (i + 1) for i in range(p.distributors)))  # Zipf: a few top sellers
        rush = [w.announce_s for w in self.windows]
        out = []
        for i in range(p.viewers):
            channel = rng.choices(channels, cum_weights=cum_channels)[0]
            referrer = None
            if channel == "share_link" or (channel == "community_group" and rng.random() < 0.4):
                referrer = rng.choices(distributors, cum_weights=cum_dist)[0]
            r = rng.random()
            if r < 0.15:  # regulars waiting when the stream starts
                join = rng.uniform(0.0, 3.0)
            elif r < 0.65:  # front-loaded ramp over the first half
                join = d * 0.5 * rng.random() ** 1.6
            elif r < 0.85 and rush:  # notification rush around an announcement
                join = max(0.0, rng.choice(rush) + rng.uniform(-6.0, 3.0))
            else:
                join = rng.uniform(0.0, d * 0.92)
            if rng.random() < 0.12:
                leave = d
            else:
                leave = join + max(5.0, rng.expovariate(1.0 / (0.45 * d)))
            stale = leave < d and rng.random() < p.stale_fraction
            if leave >= d:  # still watching when the stream ends: leave in the last seconds, or never
                leave = max(join + 0.5, d - 2.5 * rng.random()) if p.end_wave else d
            out.append(_Viewer(f"u-{self.plan.run_id}-{self.room_no}-{i}", channel, referrer, join,
                               min(leave, d - 0.001) if p.end_wave else leave, stale))
        return out

    def intensity(self) -> _Intensity:
        rng, d = self.rng, self.duration
        n = max(1, math.ceil(d))
        prof = [1.0] * n
        # Likes and comments surge when the host announces a sale and again, harder, when it goes live.
        bursts = [(w.announce_s, 2.0, 6.0) for w in self.windows] + [(w.open_s, 5.0, 10.0) for w in self.windows]
        bursts += [(rng.uniform(0, d), rng.uniform(1.5, 3.0), rng.uniform(4, 9)) for _ in range(max(1, round(d / 30)))]
        for start, amp, length in bursts:
            for s in range(max(0, int(start)), min(n, math.ceil(start + length))):
                prof[s] += amp * math.exp(-2.0 * (s - start) / length)
        return _Intensity(prof)

    def sale(self, k: int, w: SaleWindow, viewers: list[_Viewer]) -> None:
        rng, p = self.rng, self.p
        spec = SaleSpec(
            sale_id=f"{self.plan.run_id}-r{self.room_no}-s{k + 1}", sku=self.catalog[k], room_id=self.room_id,
            price=p.price + 5000 * (k % 3), allotment=p.allotment, per_user_limit=p.per_user_limit, ttl_s=p.ttl_s,
            announce_ms=self.plan.ms(w.announce_s), starts_at=self.plan.ms(w.open_s), ends_at=self.plan.ms(w.end_s),
            closes=w.end_s <= self.duration)
        self.sales.append(spec)
        host = f"host-{self.room_no}"
        self.emit(w.announce_s, SaleOpened(
            sale_id=spec.sale_id, sku=spec.sku, price=spec.price, allotment=spec.allotment,
            per_user_limit=spec.per_user_limit, starts_at=spec.starts_at, ends_at=spec.ends_at,
            reservation_ttl_s=spec.ttl_s), host)
        if spec.closes:
            self.emit(w.end_s, SaleClosed(sale_id=spec.sale_id, sku=spec.sku), host)
        # Product cards opened while the host presents the item; some go to the cart.
        a, b = w.announce_s, w.open_s + 6.0
        for v in viewers:
            lo, hi = max(a, v.join), min(b, v.leave)
            if hi > lo and rng.random() < p.click_fraction:
                self.click(v, k, spec.sku, rng.uniform(lo, hi))
        self.orders(k, w, spec, viewers)

    def click(self, v: _Viewer, k: int, sku: str, t: float) -> None:
        rng, p = self.rng, self.p
        v.clicked.add(k)
        self.emit_as(v, t, ProductClicked(sku=sku))
        if rng.random() < p.cart_fraction:
            tc = t + rng.uniform(0.5, 6.0)
            if tc < v.leave:
                qty = 1 if rng.random() < 0.85 else 2
                self.emit_as(v, tc, CartAdded(sku=sku, qty=qty))
                tr = tc + rng.uniform(3.0, 25.0)
                if rng.random() < 0.12 and tr < v.leave:
                    self.emit_as(v, tr, CartRemoved(sku=sku, qty=qty))

    def orders(self, k: int, w: SaleWindow, spec: SaleSpec, viewers: list[_Viewer]) -> None:
        rng, p = self.rng, self.p
        attempts = p.attempts_per_sale
        eligible = [v for v in viewers if v.join < w.end_s - 1.0 and v.leave > w.open_s - 2.0]
        if not eligible:
            return
        n_buyers = min(len(eligible), attempts, max(1, round(attempts / 1.8)))
        # Weighted sample without replacement (Efraimidis-Spirakis): people who looked at the item buy more.
        buyers = heapq.nlargest(n_buyers, eligible,
                                key=lambda v: rng.random() ** (1.0 / (4.0 if k in v.clicked else 1.0)))
        per_buyer = [1] * n_buyers
        extra = attempts - n_buyers
        if extra > 0:
            cum = list(accumulate(rng.expovariate(1.0) + 0.05 for _ in range(n_buyers)))
            for i, c in Counter(rng.choices(range(n_buyers), cum_weights=cum, k=extra)).items():
                per_buyer[i] += c
        end, order_no = w.end_s, 0
        for v, n in zip(buyers, per_buyer, strict=True):
            r = rng.random()
            if r < p.early_fraction:
                t = w.open_s - rng.uniform(0.1, 2.0)
            elif r < p.early_fraction + 0.8:
                t = w.open_s + min(rng.expovariate(1.0), 8.0)
            else:  # late-comers keep trying through the window (and catch released stock)
                t = rng.uniform(w.open_s + 3.0, end - 0.2)
            t = min(max(t, v.join + 0.3), end - 0.05)
            if k not in v.clicked:
                self.click(v, k, spec.sku, max(v.join, t - rng.uniform(0.3, 3.0)))
            for _ in range(n):
                order_no += 1
                self.place(v, spec, f"{spec.sale_id}-o{order_no}", t)
                nxt = t + rng.uniform(0.25, 2.5)
                t = nxt if nxt < end - 0.01 else t + (end - t) * 0.9 * rng.random()
            v.leave = max(v.leave, min(t + rng.uniform(1.0, 20.0), self.duration - 0.001))

    def place(self, v: _Viewer, spec: SaleSpec, order_id: str, t: float) -> None:
        rng, p = self.rng, self.p
        r = rng.random()
        if r < p.over_limit_fraction:
            qty = p.per_user_limit + (1 if rng.random() < 0.7 else 2)
        elif r < p.over_limit_fraction + p.multi_qty_fraction and p.per_user_limit >= 2:
            qty = rng.randint(2, p.per_user_limit)
        else:
            qty = 1
        ev = self.emit_as(v, t, OrderPlaced(order_id=order_id, sale_id=spec.sale_id, sku=spec.sku, qty=qty,
                                            unit_price=spec.price))
        if rng.random() < p.duplicate_fraction:
            self.plan.resend(ev, rng.randint(50, 800))
        ttl_ms = spec.ttl_s * 1000
        r = rng.random()
        if r < p.pay_fraction:
            action = "pay"
            if rng.random() < p.late_pay_fraction:
                delay = ttl_ms + rng.randint(2000, 8000)
            else:
                delay = 800 + int((ttl_ms - 1800) * rng.betavariate(1.6, 3.2))
        elif r < p.pay_fraction + p.cancel_fraction:
            action, delay = "cancel", rng.randint(1000, max(1001, ttl_ms - 1000))
        else:
            action, delay = "abandon", ttl_ms
        self.plan.intents[order_id] = Intent(
            order_id=order_id, sale_id=spec.sale_id, sku=spec.sku, room_id=self.room_id, user_id=v.user_id,
            channel=v.channel, referrer_id=v.referrer_id, qty=qty, unit_price=spec.price, placed_ts=ev.ts,
            action=action, delay_ms=delay)

    def joins(self, viewers: list[_Viewer]) -> None:
        for v in viewers:
            self.emit_as(v, v.join, ViewerJoined(session_id=f"{v.user_id}-s1"))

    def leaves(self, viewers: list[_Viewer]) -> None:
        for v in viewers:
            if not v.stale and (self.p.end_wave or v.leave < self.duration):
                self.emit_as(v, v.leave, ViewerLeft(session_id=f"{v.user_id}-s1"))

    def engagement(self, viewers: list[_Viewer], intensity: _Intensity) -> None:
        rng, p = self.rng, self.p
        hot = [(w.announce_s, w.open_s + 15.0) for w in self.windows]
        for v in viewers:
            mass = intensity.mass(v.join, v.leave)
            for t in intensity.sample(rng, v.join, v.leave, poisson(rng, p.like_rate * mass)):
                self.emit_as(v, t, ViewerLiked(count=min(1 + int(rng.expovariate(0.25)), 99)))
            for t in intensity.sample(rng, v.join, v.leave, poisson(rng, p.comment_rate * mass)):
                pool = SALE_COMMENTS if any(a <= t < b for a, b in hot) and rng.random() < 0.7 else COMMENTS
                self.emit_as(v, t, ViewerCommented(text=rng.choice(pool)))
            span = max(0.0, v.leave - v.join)
            for _ in range(poisson(rng, p.share_rate * span)):
                target = rng.choices(SHARE_TARGETS, SHARE_WEIGHTS)[0]
                self.emit_as(v, rng.uniform(v.join, v.leave), ViewerShared(target=target))
            for _ in range(poisson(rng, p.browse_rate * span)):
                t = rng.uniform(v.join, v.leave)
                self.emit_as(v, t, ProductClicked(sku=rng.choice(self.catalog)))


class _PlanBuilder:
    def __init__(self, params: SimulationParams, run_id: str, t0_ms: int) -> None:
        self.params = params
        self.run_id = run_id
        self.t0_ms = t0_ms
        self.events: list[Scheduled] = []
        self.intents: dict[str, Intent] = {}
        self.seq = 0

    def ms(self, at_s: float) -> int:
        return self.t0_ms + round(at_s * 1000)

    def emit(self, at_s: float, payload: Payload, room_id: str, user_id: str, channel: str,
             referrer_id: str | None) -> Event:
        at_ms = self.t0_ms + round(at_s * 1000)
        self.seq += 1
        ev = new_event(payload, event_id=f"{self.run_id}:{self.seq}", ts=at_ms, room_id=room_id, user_id=user_id,
                       channel=channel, referrer_id=referrer_id)
        self.events.append(Scheduled(at_ms, self.seq, ev, False))
        return ev

    def emit_at_ms(self, at_ms: int, ev: Event) -> None:
        self.seq += 1
        self.events.append(Scheduled(at_ms, self.seq, ev, False))

    def resend(self, ev: Event, after_ms: int) -> None:
        self.seq += 1
        self.events.append(Scheduled(ev.ts + after_ms, self.seq, ev, True))


def build_plan(params: SimulationParams, *, run_id: str = "sim", t0_ms: int = DEFAULT_T0_MS,
               include_payments: bool = True) -> Plan:
    """The whole stream as a time-ordered plan; pure and deterministic for (params, run_id, t0_ms).

    With ``include_payments`` the plan also holds the buyers' order.paid / order.cancelled for the
    orders the reference stock model accepts (optimistic mode, no feedback from the pipeline).
    """
    if not run_id or len(run_id) > MAX_RUN_ID_LEN or any(c in run_id for c in " :{}"):
        raise ValueError(f"run id must be 1..{MAX_RUN_ID_LEN} characters without spaces, ':' or braces")
    builder = _PlanBuilder(params, run_id, t0_ms)
    sales: list[SaleSpec] = []
    rooms: list[str] = []
    for room_no in range(1, params.rooms + 1):
        room = _RoomBuilder(builder, room_no)
        room.build()
        sales.extend(room.sales)
        rooms.append(room.room_id)
    if include_payments:
        placed = (s.event for s in builder.events if s.event.type == OrderPlaced.TYPE and not s.duplicate)
        for oid, outcome in sorted(reference_outcomes(sales, placed, builder.intents).items()):
            intent = builder.intents.get(oid)
            if outcome.accepted and intent is not None:
                follow = intent.follow_up(intent.placed_ts + intent.delay_ms)
                if follow is not None:
                    builder.emit_at_ms(follow.ts, follow)
    builder.events.sort()
    end_ms = max(builder.ms(params.duration_s), builder.events[-1].at_ms if builder.events else 0)
    return Plan(params=params, run_id=run_id, t0_ms=t0_ms, end_ms=end_ms, events=builder.events, sales=sales,
                intents=builder.intents, rooms=rooms, phases=_phases(params, builder),
                includes_payments=include_payments)


def _phases(params: SimulationParams, b: _PlanBuilder) -> list[tuple[int, str]]:
    marks: list[tuple[int, str]] = [(b.ms(0), "audience arriving")]
    for w in params.sale_windows():
        n = w.index + 1
        marks += [(b.ms(w.announce_s), f"sale {n} announced"), (b.ms(w.open_s), f"sale {n} burst"),
                  (b.ms(w.open_s + 8.0), f"sale {n} open, payments"), (b.ms(w.end_s), f"sale {n} closed")]
    marks.append((b.ms(params.duration_s - 2.5), "stream ending"))
    return sorted(marks)
