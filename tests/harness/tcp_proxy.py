"""A TCP fault proxy on 127.0.0.1 for the fault suite: sits between the workers and Redis or the
broker and injects network faults on command.

It runs its own asyncio loop in a thread, so a busy test loop never slows the forwarding, and its
controls are plain (thread-safe) calls:

- ``cut(seconds)``: close every connection now and refuse new ones (accepted, then reset) for
  ``seconds`` (or until ``heal()``).
- ``latency(ms)``: every chunk read from either side is written ``ms`` later (order kept,
  throughput not capped).
- ``blackhole()``: every connection, open or new, goes silent: bytes from either side are read and
  dropped, nothing is ever forwarded or answered, nothing is closed. Connections blackholed stay
  dead after ``heal()`` (as behind a middlebox that lost the flow): only a client that notices the
  silence and reconnects gets through again.
- ``heal()``: new connections work normally again; returns the wall-clock time (epoch s).
- ``repoint(host, port)``: new connections go to another upstream and the open ones are closed (a
  failover VIP or Sentinel-aware client moving to the promoted replica).

With ``kafka_faults_for`` the proxy reads the first Kafka request of each connection (its header
carries the client id) and applies faults only to connections whose client id starts with that
prefix (``"faust"``: the workers), so the test's own producer, readers and the audit, which reach
the broker through the same advertised address, are never faulted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from flashsale.embedded import free_port, spawn, tansu_binary, wait_port
from tests.harness.broker import Broker

logger = logging.getLogger(__name__)

T = TypeVar("T")
CHUNK = 65_536


def kafka_client_id(frame: bytes) -> str | None:
    """The client id in a Kafka request header (after size, api key, version, correlation id), or
    None if ``frame`` (the request without its 4-byte size) is too short to hold one."""
    if len(frame) < 10:
        return None
    (n,) = struct.unpack(">h", frame[8:10])
    if n < 0:
        return ""
    return frame[10:10 + n].decode("utf-8", "replace")


@dataclass(eq=False)
class _Conn:
    client_w: asyncio.StreamWriter
    faultable: bool
    upstream_w: asyncio.StreamWriter | None = None
    frozen: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for w in (self.client_w, self.upstream_w):
            if w is not None:
                with contextlib.suppress(Exception):
                    _reset(w)
                    w.close()
        for t in self.tasks:
            t.cancel()


def _reset(w: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a cut link or a dead peer looks to the client."""
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class TcpProxy:
    """A fault-injecting TCP proxy: ``127.0.0.1:port`` → ``upstream``."""

    def __init__(self, upstream_port: int, port: int | None = None, upstream_host: str = "127.0.0.1",
                 name: str = "proxy", kafka_faults_for: str | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.upstream = (upstream_host, upstream_port)
        self.kafka_faults_for = kafka_faults_for
        self.stats: Counter[str] = Counter()  # accepted, refused, cut_closed, blackholed, faultable, ...
        self._latency_s = 0.0
        self._refuse_until = 0.0  # monotonic; refuse faultable connections until then
        self._blackhole = False
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread = threading.Thread(target=self._run, name=f"tcp-proxy-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"proxy {self.name} did not start")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

        loop.run_until_complete(serve())
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for c in list(self._conns):
                c.close()
            self._conns.clear()

        self._call(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "proxy not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- controls ---------------------------------------------------------------------------

    def cut(self, seconds: float | None = None) -> float:
        """Close every (faultable) connection and refuse new ones for ``seconds`` (None: until
        heal). Returns the wall-clock time of the cut."""

        async def go() -> None:
            self._refuse_until = time.monotonic() + (seconds if seconds is not None else 1e9)
            for c in [c for c in self._conns if c.faultable]:
                self.stats["cut_closed"] += 1
                self._drop(c)

        at = time.time()
        self._call(go())
        logger.info("proxy %s: cut (%s s)", self.name, seconds)
        return at

    def latency(self, ms: float) -> float:
        """Delay every chunk of (faultable) connections by ``ms`` from now on (0: none)."""
        self._latency_s = ms / 1000
        logger.info("proxy %s: latency %s ms", self.name, ms)
        return time.time()

    def blackhole(self) -> float:
        """Every (faultable) connection, open or new, goes silent for good (see the module doc)."""

        async def go() -> None:
            self._blackhole = True
            for c in self._conns:
                if c.faultable and not c.frozen:
                    c.frozen = True
                    self.stats["blackholed"] += 1

        at = time.time()
        self._call(go())
        logger.info("proxy %s: blackhole", self.name)
        return at

    def heal(self) -> float:
        """End cut, latency and blackhole for new connections; returns the wall-clock time."""

        async def go() -> None:
            self._refuse_until = 0.0
            self._blackhole = False
            self._latency_s = 0.0

        self._call(go())
        logger.info("proxy %s: healed", self.name)
        return time.time()

    def repoint(self, upstream_port: int, upstream_host: str = "127.0.0.1", drop: bool = True) -> float:
        """New connections go to ``upstream``; with ``drop`` the open ones are closed. Returns the time."""

        async def go() -> None:
            self.upstream = (upstream_host, upstream_port)
            if drop:
                for c in list(self._conns):
                    self.stats["repoint_closed"] += 1
                    self._drop(c)

        self._call(go())
        logger.info("proxy %s: repointed to %s:%d", self.name, upstream_host, upstream_port)
        return time.time()

    def open_connections(self, faultable_only: bool = True) -> int:
        return sum(1 for c in list(self._conns) if c.faultable or not faultable_only)

    # --- forwarding -------------------------------------------------------------------------

    def _drop(self, c: _Conn) -> None:
        self._conns.discard(c)
        c.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["accepted"] += 1
        first = b""
        faultable = True
        if self.kafka_faults_for is not None:
            try:
                head = await reader.readexactly(4)
                (size,) = struct.unpack(">i", head)
                first = head + await reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                return
            client = kafka_client_id(first[4:]) or ""
            faultable = client.startswith(self.kafka_faults_for)
        conn = _Conn(writer, faultable)
        if faultable:
            self.stats["faultable"] += 1
            if time.monotonic() < self._refuse_until:
                self.stats["refused"] += 1
                conn.close()
                return
        self._conns.add(conn)
        if faultable and self._blackhole:
            conn.frozen = True
            self.stats["blackholed"] += 1
            self.stats["blackholed_new"] += 1
            conn.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            await self._sink(reader, conn)
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.stats["upstream_refused"] += 1
            self._drop(conn)
            return
        conn.upstream_w = up_w
        if conn not in self._conns:  # cut or repointed while connecting
            conn.close()
            return
        if first:
            up_w.write(first)
        conn.tasks.extend([asyncio.create_task(self._pump(reader, up_w, conn, from_client=True)),
                           asyncio.create_task(self._pump(up_r, writer, conn, from_client=False))])

    async def _sink(self, reader: asyncio.StreamReader, conn: _Conn) -> None:
        """Read and drop everything until the client goes away."""
        with contextlib.suppress(Exception):
            while await reader.read(CHUNK):
                pass
        self._drop(conn)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn,
                    from_client: bool) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer, conn))
        conn.tasks.append(sender)
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if conn.frozen:
                    continue  # blackholed: dropped, never forwarded
                delay = self._latency_s if conn.faultable else 0.0
                queue.put_nowait((time.monotonic() + delay, data))
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            sender.cancel()
            raise
        # One side closed: deliver what is queued, then close both. A blackholed connection stays
        # open, silent, until its client goes away.
        sender.cancel() if conn.frozen else None
        if not conn.frozen and not sender.done():
            await queue.join()
        if from_client or not conn.frozen:
            self._drop(conn)
        sender.cancel()

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter,
                    conn: _Conn) -> None:
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not conn.frozen:
                    writer.write(data)
                    await writer.drain()
                queue.task_done()
        except (ConnectionError, OSError):
            self._drop(conn)


@pytest.fixture
def proxy_factory() -> Iterator[Any]:
    """``make(upstream_port, **kw) -> TcpProxy`` (started); every proxy is stopped at teardown."""
    made: list[TcpProxy] = []

    def make(upstream_port: int, **kw: Any) -> TcpProxy:
        p = TcpProxy(upstream_port, **kw).start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture
def proxied_broker(tmp_path: Path, proxy_factory: Any) -> Iterator[tuple[Broker, TcpProxy]]:
    """A per-test Tansu that advertises a fault proxy's address: every client (workers, the test's
    producer and readers, the audit) reaches the broker through the proxy, which faults only the
    workers' connections (Faust's client id). Returns the broker as clients see it, and the proxy."""
    proxy_port = free_port()
    broker_port = free_port()
    proc = spawn("tansu-proxied", [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}",
                                   "--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}",
                                   "--storage-engine", "memory://tansu/"], tmp_path / "logs",
                 env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
    try:
        wait_port("127.0.0.1", broker_port, 20, proc)
        proxy = proxy_factory(broker_port, port=proxy_port, name="broker", kafka_faults_for="faust")
        yield Broker("127.0.0.1", proxy.port, proc), proxy
    finally:
        proc.stop()
