"""Live push: one snapshot per watched room per tick, fanned out to every subscriber as SSE.

A room's feed reads Redis once per tick, however many pages watch it (plus one funnel read per
channel in use), encodes the payload once per channel and hands the same bytes to every
subscriber. A subscriber holds at most one pending frame: a slow reader skips to the newest
payload instead of queueing, so memory stays bounded whatever the viewers do. A page opened
with one room's token gets the room list cut down to that room (a second frame variant per channel).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import orjson
from aiohttp import web

from consumers import access
from consumers.dashboard.metrics import DashboardMetrics
from consumers.dashboard.settings import CHANNEL_CHOICES

logger = logging.getLogger(__name__)

ALL: Final = "all"
CHANNELS: Final = (ALL, *CHANNEL_CHOICES)
MAX_ROOM_ID_LEN: Final = 128
RETRY_MS: Final = 2000
MIN_TICK_GAP_S: Final = 0.1


class Source(Protocol):
    """Where a feed reads its data (the read model over Redis in production)."""

    async def snapshot(self, room_id: str, now_ms: int) -> dict[str, Any] | None: ...

    async def funnel(self, room_id: str, channel: str | None, now_ms: int) -> dict[str, Any] | None: ...

    async def rooms(self, now_ms: int) -> list[dict[str, Any]]: ...


class Subscriber:
    """One open page: a single-slot mailbox holding the newest frame it has not written yet."""

    __slots__ = ("room_id", "channel", "all_rooms", "_frame", "_ready", "closed")

    def __init__(self, room_id: str, channel: str, all_rooms: bool = True) -> None:
        self.room_id = room_id
        self.channel = channel
        self.all_rooms = all_rooms  # may see the whole room list (a host token)
        self._frame: bytes | None = None
        self._ready = asyncio.Event()
        self.closed = False

    def offer(self, frame: bytes) -> bool:
        """Queue ``frame``; True when it replaced one the reader had not taken (a dropped frame)."""
        dropped = self._frame is not None
        self._frame = frame
        self._ready.set()
        return dropped

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self, wait_s: float) -> bytes | None:
        """The next frame, b"" on timeout (caller sends a keepalive), None once closed."""
        if self._frame is None and not self.closed:
            try:
                await asyncio.wait_for(self._ready.wait(), wait_s)
            except TimeoutError:
                return b""
        if self.closed:
            return None
        frame, self._frame = self._frame, None
        self._ready.clear()
        return frame or b""


class RoomFeed:
    """The subscribers of one room and the task that ticks for them."""

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.subscribers: set[Subscriber] = set()
        self.frames: dict[Variant, bytes] = {}  # newest frame per variant, for pages that join between ticks
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.seq = 0
        self.idle_since: float | None = None


Variant = tuple[str, bool]  # (channel, sees every room)


def sse_frame(event: str, data: bytes, seq: int) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event.encode(), data)


class LiveHub:
    """Owns every room feed; subscribe/unsubscribe from request handlers, close() on shutdown."""

    def __init__(self, source: Source, metrics: DashboardMetrics, *, interval_s: float = 1.0,
                 rooms_refresh_s: float = 5.0, idle_grace_s: float = 5.0, currency: str = "CNY",
                 clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self._metrics = metrics
        self.interval_s = interval_s
        self._rooms_refresh_s = rooms_refresh_s
        self._idle_grace_s = idle_grace_s
        self._currency = currency
        self._clock = clock
        self._feeds: dict[str, RoomFeed] = {}
        self._rooms: list[dict[str, Any]] = []
        self._rooms_at = float("-inf")
        self._rooms_lock = asyncio.Lock()
        self._closed = False
        self.connections = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def feed_count(self) -> int:
        return len(self._feeds)

    def subscribe(self, room_id: str, channel: str = ALL, all_rooms: bool = True) -> Subscriber:
        if self._closed:
            raise RuntimeError("the live hub is closed")
        sub = Subscriber(room_id, channel, all_rooms)
        feed = self._feeds.get(room_id)
        if feed is None:
            feed = self._feeds[room_id] = RoomFeed(room_id)
            feed.task = asyncio.create_task(self._run(feed), name=f"dashboard-feed:{room_id}")
            self._metrics.rooms_watched.set(len(self._feeds))
        was_idle = not feed.subscribers
        feed.subscribers.add(sub)
        feed.idle_since = None
        cached = feed.frames.get((channel, all_rooms))
        if cached is not None:
            sub.offer(cached)
        if cached is None or was_idle:
            feed.wake.set()  # tick now rather than at the next interval
        self.connections += 1
        self._metrics.connections.set(self.connections)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        feed = self._feeds.get(sub.room_id)
        if feed is None or sub not in feed.subscribers:
            return
        feed.subscribers.discard(sub)
        sub.close()
        self.connections -= 1
        self._metrics.connections.set(self.connections)
        if not feed.subscribers:
            feed.idle_since = time.monotonic()
            feed.frames = {k: v for k, v in feed.frames.items() if k[0] == ALL}

    async def close(self) -> None:
        """Close every stream (handlers return) and stop every feed task."""
        self._closed = True
        feeds = list(self._feeds.values())
        for feed in feeds:
            for sub in list(feed.subscribers):
                self.unsubscribe(sub)
            if feed.task is not None:
                feed.task.cancel()
        await asyncio.gather(*(f.task for f in feeds if f.task is not None), return_exceptions=True)
        self._feeds.clear()
        self._metrics.rooms_watched.set(0)

    async def _run(self, feed: RoomFeed) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closed:
                if not feed.subscribers:
                    # Idle: keep the feed (and its last frames) a little while for reconnecting pages.
                    remaining = self._idle_grace_s - (time.monotonic() - (feed.idle_since or 0.0))
                    if remaining <= 0:
                        break
                    feed.wake.clear()  # a wake-up left by a page that already left must not spin us
                    try:
                        await asyncio.wait_for(feed.wake.wait(), remaining)
                    except TimeoutError:
                        pass
                    continue
                started = loop.time()
                feed.wake.clear()
                try:
                    await self._tick(feed)
                except Exception:
                    logger.exception("live tick of room %s failed", feed.room_id)
                # Early wake-ups (a page joined with a channel nobody watched) are rate limited too.
                gap = min(MIN_TICK_GAP_S, self.interval_s)
                delay = max(gap, self.interval_s - (loop.time() - started))
                try:
                    await asyncio.wait_for(feed.wake.wait(), delay)
                    await asyncio.sleep(max(0.0, gap - (loop.time() - started)))
                except TimeoutError:
                    pass
        finally:
            if self._feeds.get(feed.room_id) is feed:
                del self._feeds[feed.room_id]
                self._metrics.rooms_watched.set(len(self._feeds))

    async def _tick(self, feed: RoomFeed) -> None:
        started = time.perf_counter()
        now_ms = int(self._clock() * 1000)
        feed.seq += 1
        variants = {(s.channel, s.all_rooms) for s in feed.subscribers} or {(ALL, True)}
        channels = {ch for ch, _ in variants}
        try:
            rooms = await self._room_list(now_ms)
            snapshot = await self._source.snapshot(feed.room_id, now_ms)
            funnels: dict[str, dict[str, Any] | None] = dict.fromkeys(channels)
            if snapshot is not None:
                ordered = sorted(channels)
                results = await asyncio.gather(*(
                    self._source.funnel(feed.room_id, None if ch == ALL else ch, now_ms) for ch in ordered))
                funnels = dict(zip(ordered, results, strict=True))
        except Exception as exc:  # Redis down or a read failed: tell the pages, keep ticking
            self._metrics.errors.inc()
            logger.warning("live snapshot of room %s failed: %s", feed.room_id, exc)
            data = orjson.dumps({"type": "status", "room_id": feed.room_id, "server_ms": now_ms,
                                 "error": "data source unavailable"})
            self._fan_out(feed, {v: sse_frame("status", data, feed.seq) for v in variants}, cache=False)
            return
        own_room = [r for r in rooms if r.get("room_id") == feed.room_id]
        frames = {}
        for ch, all_rooms in variants:
            payload = {
                "type": "snapshot", "seq": feed.seq, "room_id": feed.room_id, "channel": ch,
                "server_ms": now_ms, "pushed_ms": int(self._clock() * 1000),
                "interval_ms": int(self.interval_s * 1000), "currency": self._currency,
                "snapshot": snapshot, "funnel": funnels.get(ch), "rooms": rooms if all_rooms else own_room,
            }
            frames[(ch, all_rooms)] = sse_frame("snapshot", orjson.dumps(payload), feed.seq)
        self._fan_out(feed, frames, cache=True)
        self._metrics.ticks.inc()
        self._metrics.push_duration.observe(time.perf_counter() - started)

    def _fan_out(self, feed: RoomFeed, frames: dict[Variant, bytes], cache: bool) -> None:
        if cache:
            feed.frames.update(frames)
        pushed = dropped = 0
        for sub in feed.subscribers:
            frame = frames.get((sub.channel, sub.all_rooms))
            if frame is None:
                continue
            dropped += sub.offer(frame)
            pushed += 1
        self._metrics.pushes.inc(pushed)
        if dropped:
            self._metrics.dropped.inc(dropped)

    async def _room_list(self, now_ms: int) -> list[dict[str, Any]]:
        if time.monotonic() - self._rooms_at < self._rooms_refresh_s:
            return self._rooms
        async with self._rooms_lock:  # one read for every feed that noticed the list is stale
            if time.monotonic() - self._rooms_at >= self._rooms_refresh_s:
                self._rooms = await self._source.rooms(now_ms)
                self._rooms_at = time.monotonic()
        return self._rooms


def parse_channel(raw: str | None) -> str | None:
    channel = (raw or ALL).strip() or ALL
    return channel if channel in CHANNELS else None


def make_live_handler(get_hub: Callable[[web.Request], LiveHub], max_connections: int,
                      metrics: DashboardMetrics) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The ``GET /live/rooms/{room_id}?channel=`` handler: a text/event-stream that ends when the
    token does (the page then learns it expired); the grant comes from ``consumers.access.middleware``."""

    async def live(request: web.Request) -> web.StreamResponse:
        hub = get_hub(request)
        room_id = request.match_info["room_id"]
        channel = parse_channel(request.query.get("channel"))
        if not room_id or len(room_id) > MAX_ROOM_ID_LEN:
            return web.json_response({"error": "room id must be 1-128 characters"}, status=400)
        if channel is None:
            return web.json_response({"error": f"channel must be one of {', '.join(CHANNELS)}"}, status=400)
        if (refused := access.refusal(request, room_id)) is not None:
            return refused
        grant = request[access.GRANT]
        if hub.closed:
            return web.json_response({"error": "shutting down"}, status=503, headers={"Retry-After": "2"})
        if hub.connections >= max_connections:
            metrics.rejected.inc()
            return web.json_response({"error": "too many live connections"}, status=503,
                                     headers={"Retry-After": "5"})
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform",
            "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        sub = hub.subscribe(room_id, channel, all_rooms=grant.room_id is None)
        try:
            await resp.write(b"retry: %d\n\n" % RETRY_MS)
            while True:
                left_s = grant.expires_at - time.time()
                if left_s <= 0:
                    break  # the token expired: end the stream, the reconnect is refused with 401
                frame = await sub.next(min(max(5.0, hub.interval_s * 5), left_s))
                if frame is None:
                    break
                await resp.write(frame or b": keepalive\n\n")
        except (ConnectionResetError, ConnectionError):
            logger.debug("live client of room %s went away", room_id)
        finally:
            hub.unsubscribe(sub)
        return resp

    return live
