"""``flashsale report --room R``: one self-contained HTML recap of a stream, for the host after the show.

What it shows and where each figure comes from:

* totals, each sale's sell-out time and sell-through, the funnel by channel, the distributors and the
  spikes: the dashboard's read model (``consumers.readmodel``), so the recap says what the live view said;
* GMV over time (net of refunds) and orders over time: the stock core's order records in Redis, one
  point per minute (an order is counted at its event time, a payment when the stock core settled it,
  a refund when it was refunded), so their sum is the room's GMV;
* viewers over time: distinct viewers per minute, from the engagement topic in Kafka (the counters keep
  per-minute viewer sets only for the funnel's 5-minute window); ``--no-log`` skips it.

The page has no script and no external resource: the charts are inline SVG, and it prints on A4.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from consumers import readmodel
from flashsale.audit import Unreadable, read_log
from flashsale.narrate import money
from kernel.kafka_auth import KafkaAuth
from kernel.redis import connect
from kernel.settings import ConfigError, redact_url
from schemas import keys
from schemas.events import CHANNELS
from schemas.order_record import OrderRecordError, parse_order_record
from schemas.topics import TopicNames

MINUTE_MS: Final = 60_000
CHART_W, CHART_H = 640, 160


class RoomUnknown(LookupError):
    """No counters for the room: it never had an event, or its keys expired."""


@dataclass
class Recap:
    room_id: str
    generated_ms: int
    snapshot: dict[str, Any]
    funnels: dict[str, dict[str, Any]]  # "all" and every channel
    gmv_per_minute: dict[int, int] = field(default_factory=dict)  # minute start (ms) -> net GMV settled in it
    orders_per_minute: dict[int, int] = field(default_factory=dict)  # attempts by event time
    viewers_per_minute: dict[int, int] | None = None  # distinct viewers; None: the log was not read

    @property
    def gmv_from_orders(self) -> int:
        return sum(self.gmv_per_minute.values())


def _minute(ms: int) -> int:
    return ms - ms % MINUTE_MS


async def collect(redis: Any, room_id: str, now_ms: int) -> Recap:
    """Everything the recap shows from Redis (the viewers series is added by ``viewers_from_log``)."""
    snapshot = await readmodel.room_snapshot(redis, room_id, now_ms)
    if snapshot is None:
        raise RoomUnknown(room_id)
    funnels = {"all": await readmodel.room_funnel(redis, room_id, None, now_ms)}
    for ch in CHANNELS:
        funnels[ch] = await readmodel.room_funnel(redis, room_id, ch, now_ms)
    recap = Recap(room_id, now_ms, snapshot, funnels)
    sale_ids = [s["sale_id"] for s in snapshot["sales"]]
    if sale_ids:
        pipe = redis.pipeline(transaction=False)
        for sid in sale_ids:
            pipe.hgetall(keys.sale_orders(sid))
        gmv: Counter[int] = Counter()
        orders: Counter[int] = Counter()
        for raw in await pipe.execute():
            for value in raw.values():
                try:
                    rec = parse_order_record(value)
                except OrderRecordError:
                    continue
                if rec.ts:
                    orders[_minute(rec.ts)] += 1
                amount = rec.qty * rec.unit_price
                if rec.state in ("sold", "refunded") and rec.settled_at:
                    gmv[_minute(rec.settled_at)] += amount
                if rec.state == "refunded" and rec.refunded_at:
                    gmv[_minute(rec.refunded_at)] -= amount
        recap.gmv_per_minute, recap.orders_per_minute = dict(gmv), dict(orders)
    return recap


async def viewers_from_log(bootstrap: str, prefix: str, room_id: str, kafka_auth: KafkaAuth | None = None
                           ) -> dict[int, int]:
    """Distinct viewers (any ``viewer.*`` event) per minute of event time, from the engagement topic."""
    users: dict[int, set[str]] = defaultdict(set)
    for ev in await read_log(bootstrap, TopicNames(prefix).engagement, kafka_auth=kafka_auth):
        if ev.room_id == room_id and type(ev.data).__name__.startswith("Viewer"):
            users[_minute(ev.ts)].add(ev.user_id)
    return {m: len(u) for m, u in users.items()}


# --- rendering -----------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _hhmm(ms: int) -> str:
    return time.strftime("%H:%M", time.gmtime(ms / 1000))


def _filled(series: dict[int, int], cumulative: bool = False) -> list[tuple[int, int]]:
    """One point per minute from the first to the last (missing minutes are 0), optionally running totals."""
    if not series:
        return []
    first, last = min(series), max(series)
    out, total = [], 0
    for m in range(first, last + MINUTE_MS, MINUTE_MS):
        v = series.get(m, 0)
        total += v
        out.append((m, total if cumulative else v))
    return out


def chart(points: list[tuple[int, int]], testid: str, label: str, fmt: Any = str, bars: bool = False) -> str:
    """An inline SVG chart of one series (minutes on x), with its peak and time range as labels."""
    if not points:
        return f'<p class="empty" data-testid="{testid}">No data for {label.lower()}.</p>'
    pad_l, w, h = 8, CHART_W - 16, CHART_H - 30
    top = max(max(v for _, v in points), 1)
    low = min(min(v for _, v in points), 0)
    span = top - low or 1
    n = len(points)

    def x(i: int) -> float:
        return pad_l + (w * (i + 0.5) / n)

    def y(v: int) -> float:
        return 6 + h * (top - v) / span

    parts = [f'<svg class="chart" data-testid="{testid}" data-points="{n}" viewBox="0 0 {CHART_W} {CHART_H}" '
             f'role="img" aria-label="{_e(label)}">',
             f'<line x1="{pad_l}" y1="{y(0):.1f}" x2="{pad_l + w}" y2="{y(0):.1f}" class="axis"/>']
    if bars:
        bw = max(w / n * 0.8, 1)
        for i, (_, v) in enumerate(points):
            y0, y1 = sorted((y(0), y(v)))
            parts.append(f'<rect x="{x(i) - bw / 2:.1f}" y="{y0:.1f}" width="{bw:.1f}" height="{max(y1 - y0, 0.5):.1f}"'
                         f' class="bar"/>')
    else:
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(i):.1f},{y(v):.1f}" for i, (_, v) in enumerate(points))
        parts.append(f'<path d="{path}" class="line"/>')
    peak_i = max(range(n), key=lambda i: points[i][1])
    anchor = ' end' if x(peak_i) > CHART_W / 2 else ''  # the label grows away from the nearer edge
    parts.append(f'<text x="{x(peak_i):.1f}" y="14" class="peak{anchor}">peak {_e(fmt(points[peak_i][1]))}'
                 f' at {_hhmm(points[peak_i][0])}</text>')
    parts.append(f'<text x="{pad_l}" y="{CHART_H - 4}" class="tick">{_hhmm(points[0][0])} UTC</text>')
    parts.append(f'<text x="{pad_l + w}" y="{CHART_H - 4}" class="tick end">{_hhmm(points[-1][0])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _rate(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f} %"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;margin:24px auto;max-width:720px;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0 0 16px}.kpis{display:grid;grid-template-columns:repeat(3,1fr);gap:8px}
.kpi{border:1px solid #e3e3e3;border-radius:8px;padding:8px 10px}.kpi b{display:block;font-size:18px}
.kpi span{color:#666;font-size:12px}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:4px 6px;border-bottom:1px solid #eee}td.n,th.n{text-align:right}
svg.chart{width:100%;height:auto}.line{fill:none;stroke:#e4393c;stroke-width:2}.bar{fill:#f39c12}
.axis{stroke:#aaa}.tick,.peak{font-size:11px;fill:#555}.end{text-anchor:end}.empty{color:#888}
.note{color:#666;font-size:12px}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}table,svg{break-inside:avoid}}
@page{size:A4;margin:14mm}
"""


def render(recap: Recap, currency: str = "CNY") -> str:
    s = recap.snapshot

    def m(v: int) -> str:
        return money(int(v), currency)

    sales = s["sales"]
    paid = sum(int(v.get("paid") or 0) for v in sales)
    kpis = [("GMV (net of refunds)", m(s["gmv"]), "gmv"), ("paid orders", f"{paid:,}", "paid"),
            ("units sold", f"{sum(int(v['sold']) for v in sales):,}", "units"),
            ("peak viewers online", f"{s['viewers_peak']:,}", "peak"),
            ("unique viewers", f"{s['unique_viewers']:,}", "unique"),
            ("order attempts", f"{sum(int(v['attempts']) for v in sales):,}", "attempts")]
    out = ["<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>Recap: room {_e(recap.room_id)}</title><meta name=\"viewport\" "
           "content=\"width=device-width,initial-scale=1\">",
           f"<style>{CSS}</style></head><body>",
           f'<h1 data-testid="title">Stream recap: room {_e(recap.room_id)}</h1>',
           f'<p class="sub">Generated {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(recap.generated_ms / 1000))}'
           f"; {len(sales)} sale{'s' if len(sales) != 1 else ''}.</p>", '<div class="kpis">']
    out += [f'<div class="kpi" data-testid="kpi-{t}"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v, t in kpis]
    out.append("</div>")

    out.append("<h2>GMV over time</h2>")
    out.append(chart(_filled(recap.gmv_per_minute, cumulative=True), "chart-gmv", "GMV over time", m))
    out.append('<p class="note">Cumulative, net of refunds, by the minute the stock core settled each payment.</p>')
    out.append("<h2>Viewers over time</h2>")
    if recap.viewers_per_minute is None:
        out.append('<p class="empty" data-testid="chart-viewers">Not available: the engagement log was not read '
                   "(--no-log, or the broker could not be read).</p>")
    else:
        out.append(chart(_filled(recap.viewers_per_minute), "chart-viewers", "Viewers per minute", bars=True))
        out.append(f'<p class="note">Distinct viewers per minute (engagement log). Peak online at once: '
                   f"{s['viewers_peak']:,}.</p>")
    out.append("<h2>Order attempts over time</h2>")
    out.append(chart(_filled(recap.orders_per_minute), "chart-orders", "Order attempts per minute", bars=True))

    out.append('<h2>Sales</h2><table data-testid="sales"><tr><th>product</th><th class="n">price</th>'
               '<th class="n">sold / allotted</th><th class="n">sell-through</th><th class="n">sold out in</th>'
               '<th class="n">GMV</th></tr>')
    for v in sorted(sales, key=lambda v: (v.get("opened_at") or v.get("starts_at") or 0, v["sale_id"])):
        name = v.get("title") or v.get("sku") or v["sale_id"]
        out.append(f'<tr data-testid="sale-{_e(v["sale_id"])}"><td>{_e(name)}<br><span class="note">'
                   f'{_e(v["sale_id"])} · {_e(v.get("sku"))}</span></td><td class="n">{m(v["price"])}</td>'
                   f'<td class="n">{v["sold"]:,} / {v["allotted"]:,}</td><td class="n">{_rate(v["sell_through"])}</td>'
                   f'<td class="n">{_duration(v.get("seconds_to_sell_out"))}</td><td class="n">{m(v["gmv"])}</td></tr>')
    out.append("</table>")

    out.append('<h2>Funnel by channel</h2><table data-testid="funnel"><tr><th>channel</th>'
               + "".join(f'<th class="n">{_e(st)}</th>' for st in keys.STAGES)
               + '<th class="n">view → pay</th><th class="n">GMV</th></tr>')
    for ch, f in recap.funnels.items():
        cells = "".join(f'<td class="n">{row["users"]:,}</td>' for row in f["stages"])
        out.append(f'<tr data-testid="funnel-{_e(ch)}"><td>{_e(ch.replace("_", " "))}</td>{cells}'
                   f'<td class="n">{_rate(f["overall_rate"])}</td><td class="n">{m(f["gmv"])}</td></tr>')
    out.append('</table><p class="note">Distinct users per stage (HyperLogLog, about 0.8 % error); stages count '
               "independently, so a later stage can exceed an earlier one.</p>")

    out.append('<h2>Top distributors</h2>')
    board = s.get("leaderboard") or []
    if board:
        out.append('<table data-testid="distributors"><tr><th>distributor</th><th class="n">orders</th>'
                   '<th class="n">GMV</th><th class="n">commission</th></tr>')
        out += [f'<tr><td>{_e(r["referrer_id"])}</td><td class="n">{r["orders"]:,}</td><td class="n">{m(r["gmv"])}</td>'
                f'<td class="n">{m(r.get("commission", 0))}</td></tr>' for r in board]
        out.append("</table>")
    else:
        out.append('<p class="empty" data-testid="distributors">No share-link orders in this stream.</p>')

    out.append("<h2>Spikes</h2>")
    spikes = s.get("spikes") or []
    if spikes:
        out.append('<table data-testid="spikes"><tr><th>time</th><th>what</th><th class="n">rate</th>'
                   '<th class="n">× baseline</th></tr>')
        for a in spikes:
            what = a.get("title") or a.get("subject_id")
            ratio = a.get("ratio")
            out.append(f'<tr><td>{_hhmm(int(a.get("ts") or 0))}</td><td>{_e(a.get("scope"))} {_e(what)}: '
                       f'{_e(a.get("metric"))}</td><td class="n">{_e(a.get("rate"))}/s</td>'
                       f'<td class="n">{"—" if ratio is None else f"×{ratio:.1f}"}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p class="empty" data-testid="spikes">No spikes.</p>')
    out.append("</body></html>")
    return "\n".join(out)


# --- command -------------------------------------------------------------------------------------------

DESCRIPTION = ("Build one self-contained HTML recap of a room's stream: GMV, viewers and orders over time, "
               "each sale's sell-out time and sell-through, the funnel by channel, top distributors and spikes. "
               "Reads Redis (the dashboard's figures) and the engagement topic (viewers per minute). Broker, "
               "Redis and prefix default to the FLASHSALE_* settings and the env file flashsale up writes.")


def parse(argv: list[str] | None, s: Any) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="flashsale report", description=DESCRIPTION)
    p.add_argument("--room", required=True, help="the room to recap (required)")
    p.add_argument("--out", help="the HTML file to write (default recap-ROOM.html in the current directory)")
    p.add_argument("--broker", default=s.broker_url, help=f"Kafka bootstrap (default {s.broker_url}, "
                                                          "FLASHSALE_BROKER_URL)")
    p.add_argument("--redis", default=s.redis_url, help=f"Redis URL (default {redact_url(s.redis_url)}, "
                                                        "FLASHSALE_REDIS_URL)")
    p.add_argument("--redis-cluster", action="store_true", default=s.redis_cluster,
                   help=f"talk Redis Cluster protocol (default {str(s.redis_cluster).lower()}, "
                        "FLASHSALE_REDIS_CLUSTER)")
    p.add_argument("--prefix", default=s.topic_prefix, help=f"topic prefix (default {s.topic_prefix!r}, "
                                                            "FLASHSALE_TOPIC_PREFIX)")
    p.add_argument("--currency", default="CNY", help="currency of the minor-unit amounts (default CNY)")
    p.add_argument("--no-log", action="store_true",
                   help="do not read the engagement topic (default: read it for viewers over time)")
    return p.parse_args(argv)


async def build(args: argparse.Namespace, kafka_auth: KafkaAuth | None, say: Any) -> Recap:
    redis = connect(args.redis, args.redis_cluster, timeout_s=5.0)
    try:
        say(f"reading room {args.room} from Redis {redact_url(args.redis)}")
        recap = await collect(redis, args.room, int(time.time() * 1000))
    finally:
        await redis.aclose()
    if not args.no_log:
        bootstrap = args.broker.split("://", 1)[-1]
        say(f"reading the engagement topic {TopicNames(args.prefix).engagement} from {bootstrap}")
        try:
            recap.viewers_per_minute = await viewers_from_log(bootstrap, args.prefix, args.room, kafka_auth)
        except (Unreadable, OSError, Exception) as exc:  # noqa: BLE001 - the rest of the recap still stands
            say(f"engagement log not read ({type(exc).__name__}: {exc}); viewers over time left out")
    return recap


def main(argv: list[str] | None = None) -> int:
    from streams.settings import get_settings

    try:
        s = get_settings()  # the workers' settings: the recap reads what they wrote
    except ConfigError as exc:
        print(f"flashsale report: {exc}", file=sys.stderr)
        return 2
    args = parse(argv, s)

    def say(msg: str) -> None:
        print(f"flashsale report: {msg}", file=sys.stderr, flush=True)

    try:
        recap = asyncio.run(build(args, s.kafka_auth, say))
    except RoomUnknown:
        print(f"flashsale report: room {args.room!r} is not known to Redis {redact_url(args.redis)} (no events, "
              "or its keys expired)", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a CLI reports any failure plainly
        print(f"flashsale report: {type(exc).__name__}: {exc} (redis {redact_url(args.redis)})", file=sys.stderr)
        return 2
    out = Path(args.out or f"recap-{args.room}.html")
    out.write_text(render(recap, args.currency), encoding="utf-8")
    say(f"wrote {out} ({len(recap.snapshot['sales'])} sales, GMV {money(recap.snapshot['gmv'], args.currency)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
