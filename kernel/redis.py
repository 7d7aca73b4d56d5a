"""The Redis layer: the client factory (single node or Cluster) and Lua scripts run by EVALSHA with NOSCRIPT reload."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

AnyRedis = aioredis.Redis | RedisCluster


def connect(url: str, cluster: bool = False, *, timeout_s: float | None = None,
            connect_timeout_s: float | None = None, max_connections: int | None = None,
            pool_wait_s: float = 5.0, retries: int | None = None, health_check_s: float = 10.0) -> AnyRedis:
    """The one way every process makes a Redis client. No I/O here: redis-py connects lazily on the
    first command, inside the running loop.

    ``timeout_s`` bounds connecting and each reply (a health probe wants that; the default waits like
    redis-py); ``connect_timeout_s`` bounds connecting only. ``max_connections`` sizes a blocking pool on a
    single node: under load a command waits up to ``pool_wait_s`` for a free connection instead of failing
    with "Too many connections" (a Cluster client keeps up to that many connections per node).

    ``retries`` (single node) replaces redis-py's own retry policy, which differs between versions
    (none in 5.x, three with backoff in 6+): 0 means a timeout or lost connection raises at once (the
    connection is dropped, the next command opens a fresh one) and the caller's loop retries.
    ``health_check_s``: a connection idle for longer is PINGed before it is used again, so a stale one
    is replaced before a command is lost on it."""
    opts: dict[str, Any] = {}
    if retries is not None and not cluster:
        opts["retry"] = Retry(NoBackoff(), retries)
    if timeout_s is not None:
        opts.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    elif connect_timeout_s is not None:
        opts["socket_connect_timeout"] = connect_timeout_s
    if cluster:
        if max_connections is not None:
            opts["max_connections"] = max_connections
        return RedisCluster.from_url(url, decode_responses=False, **opts)
    if max_connections is not None:
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=pool_wait_s,
                                                        decode_responses=False, health_check_interval=health_check_s,
                                                        **opts)
        return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections
    return aioredis.Redis.from_url(url, decode_responses=False, health_check_interval=health_check_s, **opts)


class RedisUnavailable(RedisConnectionError):
    """Redis answered, but refuses work now (OOM under maxmemory, READONLY after a failover, LOADING,
    BUSY, MASTERDOWN, CLUSTERDOWN, TRYAGAIN, NOREPLICAS, MISCONF): the batch waits and is retried, like
    a lost connection, never turned into a dead letter. A ConnectionError, so every retry loop that
    handles connection loss handles this too."""


_UNAVAILABLE_CLASSES = (OutOfMemoryError, ReadOnlyError, BusyLoadingError, MasterDownError, ClusterDownError,
                        TryAgainError)
_UNAVAILABLE_CODES = frozenset({"BUSY", "NOREPLICAS", "MISCONF", "OOM", "READONLY", "LOADING", "MASTERDOWN",
                                "CLUSTERDOWN", "TRYAGAIN"})


def is_unavailable(exc: BaseException) -> bool:
    """Whether a Redis error reply means "not now" rather than "this input is bad"."""
    if isinstance(exc, _UNAVAILABLE_CLASSES):
        return True
    if isinstance(exc, ResponseError):
        words = str(exc).split(None, 1)
        return bool(words) and words[0] in _UNAVAILABLE_CODES
    return False


def queue_pfcount(pipe: Any, *names: str) -> None:
    """Queue PFCOUNT (of one HyperLogLog, or of the union of several) on a pipeline of either client.

    Not ``pipe.pfcount()``: redis-py blocks that name in cluster pipelines, since a multi-key
    PFCOUNT may span slots. The raw command is the same bytes on a single node, and a cluster
    pipeline routes it by its keys, so all of ``names`` must share one slot (a room's keys do: they
    share the hash tag ``{r:<room>}``); the reply is the count, as from ``pfcount()``.
    """
    pipe.execute_command("PFCOUNT", *names)


class LuaScript:
    """``<package>/lua/<name>.lua``, called by EVALSHA; its SHA is computed locally, loaded on NOSCRIPT.

    ``include`` names scripts of the same folder prepended to it (Lua in Redis has no import).
    """

    def __init__(self, package: str, name: str, *, include: Sequence[str] = ()) -> None:
        self.name = name
        folder = resources.files(package).joinpath("lua")
        self.source = "\n".join(folder.joinpath(f"{n}.lua").read_text() for n in (*include, name))
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def load(self, client: AnyRedis) -> None:
        # redis-py routes SCRIPT LOAD to every primary of a cluster (its default for the command;
        # script_load() takes no target_nodes), so a node that restarted empty gets it back too.
        await client.script_load(self.source)

    def queue(self, pipe: Any, keys: list[str], args: list[Any]) -> None:
        # Not pipe.evalsha(): redis-py blocks that name in cluster pipelines. The raw command is
        # the same bytes on a single node, and a cluster pipeline routes it by its KEYS (one slot
        # per call, since all keys of a sale share a hash tag).
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


class _Calls:
    """Records pipeline calls (``pipe.sadd(...)``, ``pipe.execute_command(...)``) so that a subset
    can be replayed onto a fresh pipeline; every call used by the gateway yields one result."""

    def __init__(self) -> None:
        self.items: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.items.append((name, args, kwargs))

        return record


async def _execute(client: AnyRedis, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for name, args, kwargs in calls:
        getattr(pipe, name)(*args, **kwargs)
    try:
        results: list[Any] = await pipe.execute(raise_on_error=False)
    except NoScriptError as exc:
        results = [exc] * len(calls)
    if len(results) != len(calls):
        raise RuntimeError(f"pipeline returned {len(results)} results for {len(calls)} calls")
    return results


async def run_pipeline(client: AnyRedis, scripts: list[LuaScript], build: Any) -> list[Any]:
    """Build a non-transactional pipeline with ``build(pipe)`` and execute it; on NOSCRIPT (Redis
    restarted or failed over, or on a cluster one node did) load the scripts on every primary and
    run again only the calls that answered NOSCRIPT: the others have been applied already, and on
    a cluster they may sit on nodes that kept their scripts. Every script is idempotent, so a
    repeat is harmless anyway. Per-command errors come back inline as exception objects;
    connection errors raise."""
    calls = _Calls()
    build(calls)
    results = await _execute(client, calls.items)
    _raise_unavailable(results)
    failed = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if not failed:
        return results
    for script in scripts:
        await script.load(client)
    retried = await _execute(client, [calls.items[i] for i in failed])
    _raise_unavailable(retried)
    for i, res in zip(failed, retried, strict=True):
        results[i] = res
    return results


def _raise_unavailable(results: list[Any]) -> None:
    for res in results:
        if isinstance(res, Exception) and is_unavailable(res):
            raise RedisUnavailable(f"Redis refuses work now: {type(res).__name__}: {res}") from res
