"""The read model: room snapshots, sale views and funnels computed from the counters in Redis.

Every function takes an explicit ``now_ms``; "now" for rates is ``max(now_ms, newest event
time)``, so a replayed or delayed stream still shows the rates of its own latest moment. Rates
use complete seconds only: the ``W`` s rate at now is the sum of seconds ``[now_s-W, now_s-1]``
divided by ``W``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson

from kernel.redis import queue_pfcount
from schemas import keys
from schemas.events import CHANNELS, REJECT_REASONS
from schemas.order_record import (
    DistributorTotals,
    OrderRecordError,
    parse_distributor_totals,
    parse_ledger_entry,
)

SERIES_S: Final = 300
RATE_S: Final = 10
LEADERBOARD_N: Final = 10
SPIKES_N: Final = 20
WINDOW_MINUTES: Final = 5
DEFAULT_STALE_MS: Final = 120_000
# A sale that sold out this recently stays pinned with the live ones (the host is still talking about it).
JUST_SOLD_OUT_MS: Final = 10 * 60_000
PHASES: Final = ("upcoming", "live", "sold_out", "back_in_stock", "closed")
GROUPS: Final = ("now", "upcoming", "earlier")  # pinned first, then the countdowns, then "earlier in this stream"
ROOM_COUNTERS: Final = ("joins", "leaves", "likes", "comments", "shares", "clicks", "adds", "add_units", "removes",
                        "events", "orders", "paid", "gmv", "peak", "refunds", "refunded_gmv")
LEDGER_ENTRIES_N: Final = 1000  # a distributor's ledger lists its newest entries, at most this many


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _i(v: Any, default: int = 0) -> int:
    if v is None or v == b"" or v == "":
        return default
    try:
        return int(v)
    except (TypeError, ValueError):
        return int(float(v))


def _decode_hash(raw: dict[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _packed(v: Any, idx: int) -> int:
    if v is None:
        return 0
    parts = _s(v).split()
    return int(parts[idx]) if idx < len(parts) else 0


def _ratio(num: float, den: float, digits: int = 4) -> float:
    return round(num / den, digits) if den else 0.0


def _rate_or_none(num: float, den: float, digits: int = 4) -> float | None:
    """A conversion rate, or None when the stage before is empty (no rate, not 0 %)."""
    return round(num / den, digits) if den else None


def sale_phase(*, status: str | None, starts_at: int | None, ends_at: int | None, allotted: int, available: int,
               sold_out_at: int | None, now_ms: int) -> str:
    """One of PHASES, as a host reads it: announced but not started is ``upcoming``; closed or past its
    window is ``closed``; no unit left is ``sold_out``; units back after a sell-out (a restock or
    released reservations) is ``back_in_stock``; otherwise ``live``."""
    if status == "closed" or (ends_at and now_ms >= ends_at):
        return "closed"
    if starts_at and now_ms < starts_at:
        return "upcoming"
    if available <= 0 and allotted > 0:
        return "sold_out"
    if sold_out_at and available > 0:
        return "back_in_stock"
    return "live"


def sale_group(phase: str, sold_out_at: int | None, now_ms: int) -> str:
    """Where the page puts a sale (GROUPS): live and just-sold-out ones pinned first (``now``),
    upcoming ones next, the rest under "earlier in this stream"."""
    if phase in ("live", "back_in_stock"):
        return "now"
    if phase == "sold_out":
        return "now" if sold_out_at is None or now_ms - sold_out_at <= JUST_SOLD_OUT_MS else "earlier"
    return "upcoming" if phase == "upcoming" else "earlier"


def _ended_at(view: dict[str, Any]) -> int:
    for name in ("closed_at", "sold_out_at", "ends_at", "opened_at"):
        if view.get(name):
            return int(view[name])
    return 0


def order_sales(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sales in the order a host needs them: live (newest opened first), then sold out (newest
    sell-out first), then upcoming (soonest first), then earlier ones (newest ended first); sale
    id breaks ties so the order is stable between pushes."""
    def key(v: dict[str, Any]) -> tuple[int, int, int, str]:
        group = GROUPS.index(v["group"])
        if v["group"] == "now":
            live = v["phase"] in ("live", "back_in_stock")
            return (group, 0 if live else 1, -int((v["opened_at"] if live else v["sold_out_at"]) or 0), v["sale_id"])
        if v["group"] == "upcoming":
            return (group, 0, int(v.get("starts_at") or 0), v["sale_id"])
        return (group, 0, -_ended_at(v), v["sale_id"])
    return sorted(views, key=key)


def spike_ratio(rate: Any, baseline: Any) -> float | None:
    """The measured ratio of a spike (its rate over its baseline); None when the baseline was 0."""
    try:
        r, b = float(rate), float(baseline)
    except (TypeError, ValueError):
        return None
    return round(r / b, 2) if b > 0 else None


async def list_rooms(redis: Any, now_ms: int, limit: int = 50) -> list[dict[str, Any]]:
    """The most recently active rooms, newest first, with their viewers online now."""
    rows = await redis.zrevrange(keys.rooms_index(), 0, max(0, limit - 1), withscores=True)
    if not rows:
        return []
    rooms = [(_s(room), int(score)) for room, score in rows]
    pipe = redis.pipeline(transaction=False)
    for room_id, _ in rooms:
        pipe.hmget(keys.room_base(room_id), "stale", "nall")
    metas = await pipe.execute()
    pipe = redis.pipeline(transaction=False)
    for (room_id, _), (stale, nall) in zip(rooms, metas, strict=False):
        now = max(now_ms, _i(nall))
        pipe.zcount(keys.room_online(room_id), now - _i(stale, DEFAULT_STALE_MS), "+inf")
    online = await pipe.execute()
    return [{"room_id": room_id, "last_event_ms": last, "viewers_online": int(n)}
            for (room_id, last), n in zip(rooms, online, strict=False)]


async def room_exists(redis: Any, room_id: str) -> bool:
    return bool(await redis.exists(keys.room_base(room_id)))


async def _spikes(redis: Any, bases: list[str], limit: int) -> list[dict[str, Any]]:
    pipe = redis.pipeline(transaction=False)
    for base in bases:
        pipe.zrevrange(keys.spikes(base), 0, limit - 1)
    id_lists = await pipe.execute()
    pipe = redis.pipeline(transaction=False)
    asked = []
    for base, ids in zip(bases, id_lists, strict=False):
        if ids:
            pipe.hmget(keys.spike_details(base), *ids)
            asked.append(base)
    out: list[dict[str, Any]] = []
    for bodies in (await pipe.execute()) if asked else []:
        for body in bodies:
            if body:
                obj = orjson.loads(body)
                row = {k: obj.get(k) for k in ("ts", "scope", "subject_id", "metric", "rate", "baseline",
                                               "factor", "threshold", "room_id")}
                row["ratio"] = spike_ratio(row["rate"], row["baseline"])
                out.append(row)
    out.sort(key=lambda a: (a["ts"] or 0, a["subject_id"] or ""), reverse=True)
    return out[:limit]


def totals_view(t: DistributorTotals) -> dict[str, int]:
    return {"orders": t.orders, "paid_gmv": t.paid_gmv, "commission_earned": t.earned, "refunds": t.refunds,
            "refunded_gmv": t.refunded_gmv, "commission_clawed_back": t.clawed_back, "commission_net": t.net,
            "net_gmv": t.paid_gmv - t.refunded_gmv}


async def _room_sale_ids(redis: Any, room_id: str) -> list[str]:
    return sorted(_s(x) for x in await redis.smembers(keys.room_sales(room_id)))


async def room_distributors(redis: Any, room_id: str, sale_ids: list[str] | None = None
                            ) -> dict[str, DistributorTotals]:
    """Each distributor's commission totals over the room's sales (the stock core's ledger, per sale)."""
    sales = await _room_sale_ids(redis, room_id) if sale_ids is None else sale_ids
    if not sales:
        return {}
    pipe = redis.pipeline(transaction=False)
    for sid in sales:
        pipe.hgetall(keys.sale_distributors(sid))
    out: dict[str, DistributorTotals] = {}
    for raw in await pipe.execute():
        for k, v in raw.items():
            try:
                t = parse_distributor_totals(v)
            except OrderRecordError:
                continue
            d = _s(k)
            out[d] = out[d] + t if d in out else t
    return out


async def distributor_list(redis: Any, room_id: str) -> list[dict[str, Any]]:
    """Every distributor of the room with its totals, highest net commission first."""
    found = await room_distributors(redis, room_id)
    order = sorted(found, key=lambda d: (-found[d].net, -found[d].paid_gmv, d))
    return [{"distributor_id": d, **totals_view(found[d])} for d in order]


async def distributor_ledger(redis: Any, room_id: str, distributor_id: str) -> dict[str, Any]:
    """One distributor's ledger in a room: totals and its entries (newest payment first)."""
    sales = await _room_sale_ids(redis, room_id)
    entries: list[dict[str, Any]] = []
    total = DistributorTotals()
    if sales:
        pipe = redis.pipeline(transaction=False)
        for sid in sales:
            pipe.hget(keys.sale_distributors(sid), distributor_id)
            pipe.hgetall(keys.sale_ledger(sid))
        res = await pipe.execute()
        for i, sid in enumerate(sales):
            raw_t, raw_l = res[2 * i], res[2 * i + 1]
            if raw_t is not None:
                try:
                    total = total + parse_distributor_totals(raw_t)
                except OrderRecordError:
                    pass
            for oid, raw in raw_l.items():
                try:
                    e = parse_ledger_entry(raw)
                except OrderRecordError:
                    continue
                if e.distributor != distributor_id:
                    continue
                entries.append({"sale_id": sid, "order_id": _s(oid), "amount": e.amount, "bps": e.bps,
                                "commission": e.commission, "clawed_back": e.clawed_back, "net": e.net,
                                "paid_at": e.paid_at, "refunded_at": e.refunded_at})
    entries.sort(key=lambda e: (-e["paid_at"], e["sale_id"], e["order_id"]))
    return {"room_id": room_id, "distributor_id": distributor_id, **totals_view(total),
            "entries": entries[:LEDGER_ENTRIES_N], "entries_total": len(entries)}


async def _leaderboard(redis: Any, room_id: str, n: int, sale_ids: list[str] | None = None) -> list[dict[str, Any]]:
    pipe = redis.pipeline(transaction=False)
    pipe.zrevrange(keys.room_ref_gmv(room_id), 0, n - 1, withscores=True)
    pipe.zrevrange(keys.room_ref_orders(room_id), 0, n - 1, withscores=True)
    by_gmv, by_orders = await pipe.execute()
    refs = sorted({_s(r) for r, _ in by_gmv} | {_s(r) for r, _ in by_orders})
    if not refs:
        return []
    pipe = redis.pipeline(transaction=False)
    pipe.zmscore(keys.room_ref_gmv(room_id), refs)
    pipe.zmscore(keys.room_ref_orders(room_id), refs)
    gmvs, orders = await pipe.execute()
    ranked = sorted(((int(g or 0), int(o or 0), r) for r, g, o in zip(refs, gmvs, orders, strict=False)),
                    key=lambda x: (-x[0], -x[1], x[2]))
    # commission next to GMV: the net commission of the stock core's ledger (0 without a commission rule)
    ledger = await room_distributors(redis, room_id, sale_ids)
    return [{"referrer_id": r, "orders": o, "gmv": g,
             "commission": ledger[r].net if r in ledger else 0} for g, o, r in ranked[:n]]


async def room_snapshot(redis: Any, room_id: str, now_ms: int) -> dict[str, Any] | None:
    """Everything the host's dashboard shows for one room; None when the room is unknown."""
    base = keys.room_base(room_id)
    raw = await redis.hgetall(base)
    if not raw:
        return None
    h = _decode_hash(raw)
    as_of = _i(h.get("nall"))
    now = max(now_ms, as_of)
    now_s = now // 1000
    first = now_s - SERIES_S + 1
    series_fields = []
    for sec in range(first, now_s + 1):
        series_fields += [f"{sec}e", f"{sec}o", f"{sec}v"]
    pipe = redis.pipeline(transaction=False)
    pipe.zcount(keys.room_online(room_id), now - _i(h.get("stale"), DEFAULT_STALE_MS), "+inf")
    pipe.hmget(keys.room_series(room_id), series_fields)
    queue_pfcount(pipe, keys.room_hll(room_id, "viewers"))
    pipe.smembers(keys.room_sales(room_id))
    online, series_raw, unique_viewers, sale_ids = await pipe.execute()

    n = SERIES_S
    ev = [series_raw[3 * i] for i in range(n)]
    orders = [series_raw[3 * i + 1] for i in range(n)]
    viewers = [series_raw[3 * i + 2] for i in range(n)]
    secs = list(range(first, now_s + 1))

    def rate(values: list[Any], idx: int) -> float:
        # complete seconds only: [now_s - RATE_S, now_s - 1] are positions n-1-RATE_S .. n-2
        return round(sum(_packed(v, idx) for v in values[n - 1 - RATE_S:n - 1]) / RATE_S, 3)

    viewer_points: list[list[int]] = []
    carry = next((_i(v) for v in viewers if v is not None), 0)
    for sec, v in zip(secs, viewers, strict=False):
        if v is not None:
            carry = _i(v)
        viewer_points.append([sec * 1000, carry])
    gmv = _i(h.get("gmv"))
    sales = sorted(_s(x) for x in sale_ids)
    views = [v for v in await asyncio.gather(*(sale_view(redis, sid, now_ms) for sid in sales)) if v is not None]
    spikes = await _spikes(redis, [base] + [keys.sale_base(sid) for sid in sales], SPIKES_N)
    by_id = {v["sale_id"]: v for v in views}
    for spike in spikes:  # name the product, not the internal sale id
        sale = by_id.get(spike["subject_id"]) if spike["scope"] == "sale" else None
        spike["title"] = sale["title"] if sale else None
        spike["sku"] = sale["sku"] if sale else None
    return {
        "room_id": room_id,
        "viewers_online": int(online),
        "viewers_peak": _i(h.get("peak")),
        "unique_viewers": int(unique_viewers),
        "likes_per_s": rate(ev, 1),
        "comments_per_s": rate(ev, 2),
        "shares": _i(h.get("shares")),
        "shares_per_s": rate(ev, 3),
        "cart_adds_per_s": rate(ev, 4),
        "events_per_s": rate(ev, 0),
        "orders_per_s": rate(orders, 0),
        "gmv": gmv,
        "gmv_per_1000_viewers": round(gmv * 1000 / int(unique_viewers), 2) if unique_viewers else 0.0,
        "totals": {k: _i(h.get(k)) for k in ROOM_COUNTERS},
        "series": {
            "viewers": viewer_points,
            "likes_per_s": [[sec * 1000, _packed(v, 1)] for sec, v in zip(secs, ev, strict=False)],
            "orders_per_s": [[sec * 1000, _packed(v, 0)] for sec, v in zip(secs, orders, strict=False)],
        },
        "sales": order_sales(views),
        "leaderboard": await _leaderboard(redis, room_id, LEADERBOARD_N, sales),
        "spikes": spikes,
        "as_of_ms": as_of,
    }


async def sale_view(redis: Any, sale_id: str, now_ms: int) -> dict[str, Any] | None:
    """A sale's stock (from the stock core's hash), rates, sell-out timing; None when unknown."""
    base = keys.sale_base(sale_id)
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.sale(sale_id))
    pipe.hmget(base, "nall", "attempts", "accepted", "accepted_units")
    stock_raw, mine = await pipe.execute()
    if not stock_raw and mine[0] is None:
        return None
    s = _decode_hash(stock_raw)
    as_of = _i(mine[0])
    now_s = max(now_ms, as_of) // 1000
    secs = [str(sec) for sec in range(now_s - 60, now_s)]
    buckets = await redis.hmget(keys.sale_series(sale_id), secs)

    def rates(idx: int) -> dict[str, float]:
        vals = [_packed(v, idx) for v in buckets]
        return {"1s": float(vals[-1]), "10s": round(sum(vals[-10:]) / 10, 3), "60s": round(sum(vals) / 60, 3)}

    allotted, available, sold = _i(s.get("allotted")), _i(s.get("available")), _i(s.get("sold"))
    opened_at = _i(s.get("opened_at")) or None
    sold_out_at = _i(s.get("sold_out_at")) or None
    starts_at = _i(s.get("starts_at")) or None
    ends_at = _i(s.get("ends_at")) or None
    closed_at = _i(s.get("closed_at")) or None
    now = max(now_ms, as_of)
    phase = sale_phase(status=s.get("status"), starts_at=starts_at, ends_at=ends_at, allotted=allotted,
                       available=available, sold_out_at=sold_out_at, now_ms=now)
    units_60 = sum(_packed(v, 2) for v in buckets) / 60
    projected = None
    if phase in ("live", "back_in_stock") and available > 0 and units_60 > 0:
        projected = max(now_ms, as_of) + int(available / units_60 * 1000)
    return {
        "sale_id": sale_id,
        "sku": s.get("sku"),
        "title": s.get("title") or None,  # optional product fields of sale.opened, when the stock core keeps them
        "image_url": s.get("image_url") or None,
        "room_id": s.get("room_id"),
        "status": s.get("status"),
        "phase": phase,
        "group": sale_group(phase, sold_out_at, now),
        "price": _i(s.get("price")),
        "allotted": allotted,
        "available": available,
        "reserved": _i(s.get("reserved")),
        "sold": sold,
        "attempts": _i(s.get("attempts"), _i(mine[1])),
        "accepted": _i(s.get("accepted"), _i(mine[2])),
        "rejected": {r: _i(s.get(f"rej_{r}")) for r in REJECT_REASONS},
        "attempts_per_s": rates(0),
        "accepted_per_s": rates(1),
        "opened_at": opened_at,
        "starts_at": starts_at,
        "ends_at": ends_at,
        "closed_at": closed_at,
        "sold_out_at": sold_out_at,
        "seconds_to_sell_out": round((sold_out_at - opened_at) / 1000, 3) if sold_out_at and opened_at else None,
        "sell_through": _ratio(sold, allotted),
        "projected_sell_out_at": projected,
        "paid": _i(s.get("paid")),  # net of refunds, like gmv
        "gmv": _i(s.get("gmv")),
        "refunds": _i(s.get("refunds")),
        "refunded_gmv": _i(s.get("refunded_gmv")),
        "refunded": _i(s.get("refunded")),  # units refunded without restock (allotted = available + reserved +
        "restocked": _i(s.get("restocked")),  # sold + refunded); units refunded back on sale
        "commission_bps": _i(s.get("commission_bps")),
        "head_commission_bps": _i(s.get("head_commission_bps")),
        "as_of_ms": as_of,
    }


def _stage_rows(users: list[int]) -> list[dict[str, Any]]:
    rows = []
    for i, (stage, n) in enumerate(zip(keys.STAGES, users, strict=False)):
        prev = users[i - 1] if i else None
        rows.append({"stage": stage, "users": n,
                     "rate_from_prev": None if prev is None else _rate_or_none(n, prev)})
    return rows


def stage_keys(room_id: str, stage: str, ch: str, sk: str, skus: list[str]) -> list[str]:
    """The whole-stream HyperLogLogs whose union is a stage's users: viewers are kept per channel
    and overall; SKU stages per channel x SKU only (the writer's cheapest fan-out)."""
    if stage == "viewers":
        return [keys.room_hll(room_id, stage, ch, keys.ALL)]
    channels = CHANNELS if ch == keys.ALL else (ch,)
    wanted = skus if sk == keys.ALL else [sk]
    return [keys.room_hll(room_id, stage, c, s) for c in channels for s in wanted]


async def room_funnel(redis: Any, room_id: str, channel: str | None, now_ms: int,
                      sku: str | None = None) -> dict[str, Any]:
    """Distinct users per funnel stage (HyperLogLog, about 0.8% standard error), orders, GMV, AOV,
    over the whole stream and the last five event-time minutes. Viewers have no SKU: with ``sku``
    set, the viewers stage is the channel's viewers. Minute windows are kept per channel (all
    SKUs) and per SKU (all channels): with both ``channel`` and ``sku`` set, ``windows["5m"]`` is
    None."""
    if channel is not None and channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    ch = channel or keys.ALL
    sk = sku or keys.ALL
    nall = _i(await redis.hget(keys.room_base(room_id), "nall"))
    now_min = max(now_ms, nall) // 60_000
    minutes = list(range(now_min - WINDOW_MINUTES + 1, now_min + 1))
    mfields = [f"o:{ch}:{sk}", f"p:{ch}:{sk}", f"g:{ch}:{sk}"]
    windowed = sku is None or channel is None
    skus = sorted(_s(x) for x in await redis.smembers(keys.room_skus(room_id)))
    pipe = redis.pipeline(transaction=False)
    for stage in keys.STAGES:
        names = stage_keys(room_id, stage, ch, sk, skus)
        if names:
            queue_pfcount(pipe, *names)
        else:
            pipe.exists(keys.room_base(room_id) + ":none")  # a 0 in the stage's slot
    pipe.hmget(keys.room_funnel(room_id), mfields)
    if windowed:
        for stage in keys.STAGES:
            queue_pfcount(pipe, *[keys.room_hll_minute(room_id, m, stage, ch, keys.ALL if stage == "viewers" else sk)
                                  for m in minutes])
        for m in minutes:
            pipe.hmget(keys.room_funnel_minute(room_id, m), mfields)
    res = await pipe.execute()
    k = len(keys.STAGES)
    whole = [int(x) for x in res[:k]]
    orders, paid, gmv = (_i(x) for x in res[k])
    window = None
    if windowed:
        recent = [int(x) for x in res[k + 1:2 * k + 1]]
        w_orders = w_paid = w_gmv = 0
        for row in res[2 * k + 1:]:
            w_orders += _i(row[0])
            w_paid += _i(row[1])
            w_gmv += _i(row[2])
        window = {"stages": _stage_rows(recent), "overall_rate": _rate_or_none(recent[-1], recent[0]),
                  "orders": w_orders, "paid_orders": w_paid, "gmv": w_gmv, "aov": _ratio(w_gmv, w_paid, 2),
                  "from_ms": minutes[0] * 60_000}
    return {
        "room_id": room_id, "channel": channel, "sku": sku,
        "stages": _stage_rows(whole),
        "overall_rate": _rate_or_none(whole[-1], whole[0]),
        "orders": orders, "paid_orders": paid, "gmv": gmv, "aov": _ratio(gmv, paid, 2),
        "windows": {"5m": window},
        "skus": skus,
        "as_of_ms": nall,
    }
