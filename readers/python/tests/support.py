"""Helpers for the tests against real Redis: the servers' addresses (from
the environment, defaults on this package's test ports), bumps through the
daemon's own bump script (src/sink/bump.lua), loaders that count their calls
and how many run at once, and one way to drive either cache from async tests
(the threaded ``Cache`` runs in a pool of its own, one thread per get)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from cdc_cache import AsyncCache, Cache, CacheResult

ROOT = Path(__file__).resolve().parents[3]
BUMP_LUA = (ROOT / "src" / "sink" / "bump.lua").read_text()


def redis_url() -> str:
    return os.environ.get("CDC_CACHE_REDIS_URL", "redis://127.0.0.1:16600")


def cluster_url() -> str:
    return os.environ.get("CDC_CACHE_CLUSTER_URL", "redis://127.0.0.1:16610")


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def admin(topology: str) -> redis.Redis | RedisCluster:
    """A plain client for the test's own commands."""
    if topology == "cluster":
        return RedisCluster.from_url(cluster_url())
    return redis.Redis.from_url(redis_url())


def bump(client: redis.Redis | RedisCluster, prefix: str, key: str, position: int) -> int:
    """One bump of ``key`` through the daemon's bump script; the new version."""
    record = f"{prefix}{key}"
    reply = client.eval(BUMP_LUA, 1, record, 600_000, "p:test", str(position).rjust(20, "0"))
    # Per record the new version (a string) when applied, 0 when not.
    version = reply[0]
    assert isinstance(version, (bytes, str)), f"bump of {key} at {position} not applied"
    return int(version)


def command_calls(client: redis.Redis | RedisCluster) -> dict[str, int]:
    """Calls per command so far, summed over the primaries (INFO commandstats)."""
    nodes = (
        [n.redis_connection for n in client.get_primaries()]
        if isinstance(client, RedisCluster)
        else [client]
    )
    calls: dict[str, int] = {}
    for node in nodes:
        for name, stats in node.info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            calls[command] = calls.get(command, 0) + int(stats["calls"])
    return calls


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A metric's value summed over the series that carry ``labels``."""
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name != name:
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class Loads:
    """Loader calls: how many, and the most that ran at once."""

    def __init__(
        self, value: bytes | str = b"v", *, delay: float = 0.0, fail: bool = False
    ) -> None:
        self.value = value
        self.delay = delay
        self.fail = fail
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def _enter(self) -> None:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)

    def _leave(self) -> None:
        with self._lock:
            self.running -= 1

    async def load(self) -> bytes | str:
        self._enter()
        try:
            await asyncio.sleep(self.delay)
            if self.fail:
                raise RuntimeError("database down")
            return self.value
        finally:
            self._leave()

    def load_sync(self) -> bytes | str:
        self._enter()
        try:
            time.sleep(self.delay)
            if self.fail:
                raise RuntimeError("database down")
            return self.value
        finally:
            self._leave()


AnyCache = AsyncCache | Cache


class Reader:
    """Either cache behind one async ``get``: the threaded one runs each get
    on a thread of its own pool, so 200 gets are 200 threads at once."""

    def __init__(self, cache: AnyCache, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        self.cache = cache
        self._pool = pool

    @property
    def is_async(self) -> bool:
        return isinstance(self.cache, AsyncCache)

    async def get(self, key: str, loads: Loads, **options: Any) -> CacheResult:
        if isinstance(self.cache, AsyncCache):
            return await self.cache.get(key, loads.load, **options)
        call = functools.partial(self.cache.get, key, loads.load_sync, **options)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def warm(self) -> None:
        """Connects (a Cluster client also learns the slots): a test's timed
        gets then measure the cache, not the client's first connection."""
        await self.get(f"{unique('warm')}:1", Loads(b"warm"), ttl=5)

    async def wait_live(self) -> bool:
        if isinstance(self.cache, AsyncCache):
            return await self.cache.start()
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.cache.wait_live)

    async def close(self) -> None:
        if isinstance(self.cache, AsyncCache):
            await self.cache.aclose()
        else:
            self.cache.close()


def make_cache(flavour: str, topology: str, **options: Any) -> AnyCache:
    """A cache of ``flavour`` (``async``, ``sync``) on a client of ``topology``."""
    if flavour == "async":
        async_client: aredis.Redis | AsyncRedisCluster = (
            AsyncRedisCluster.from_url(cluster_url())
            if topology == "cluster"
            else aredis.Redis.from_url(redis_url())
        )
        return AsyncCache(async_client, **options)
    sync_client: redis.Redis | RedisCluster = (
        RedisCluster.from_url(cluster_url())
        if topology == "cluster"
        else redis.Redis.from_url(redis_url())
    )
    return Cache(sync_client, **options)


async def until(what: str, predicate: Callable[[], object], seconds: float = 3.0) -> None:
    """Waits until ``predicate()`` is true, at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.01)


async def gather_timed(
    calls: Sequence[Callable[[], Awaitable[Any]]],
) -> list[tuple[float, Any]]:
    """Runs every call at once; each one's duration and result (or error)."""

    async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
        began = time.monotonic()
        try:
            result = await call()
        except Exception as e:
            result = e
        return time.monotonic() - began, result

    return await asyncio.gather(*(timed(c) for c in calls))
