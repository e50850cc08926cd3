"""Reads per second and latency percentiles of a cache hit through cdc_cache,
beside a plain GET of the same data key (the limit on one client), with and
without an L1. Not a test: figures for a report.

    .venv/bin/python bench/hit.py [--seconds 3] [--concurrency 32]

Redis: CDC_CACHE_REDIS_URL (default redis://127.0.0.1:16600). The asyncio
cases run once with one loop and once with ``concurrency`` loops on one
client's pool, ``seconds`` each; the threaded cases run one thread (Python
threads share one interpreter lock, so more threads add contention, not
reads)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from cdc_cache import L1, AsyncCache, Cache, TrackingL1

TTL = 600
VALUE = b"x" * 512


def never() -> bytes:
    raise AssertionError("a miss: the bench reads a filled key")


async def never_async() -> bytes:
    raise AssertionError("a miss: the bench reads a filled key")


def report(name: str, latencies: list[float], elapsed: float) -> None:
    latencies.sort()

    def at(q: float) -> float:
        return latencies[int((len(latencies) - 1) * q)] * 1e6

    print(
        f"{name:<40} {len(latencies) / elapsed:>9.0f} reads/s   "
        f"p50 {at(0.5):>7.0f} µs   p99 {at(0.99):>7.0f} µs   p99.9 {at(0.999):>7.0f} µs",
        flush=True,
    )


async def run_async(
    name: str, seconds: float, concurrency: int, read: Callable[[], Awaitable[None]]
) -> None:
    for _ in range(1000):  # warm up: connections, scripts
        await read()
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds

    async def loop() -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            await read()
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    report(name, latencies, time.perf_counter() - started)


def run_sync(name: str, seconds: float, read: Callable[[], None]) -> None:
    for _ in range(1000):
        read()
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        read()
        latencies.append(time.perf_counter() - t)
    report(name, latencies, time.perf_counter() - started)


async def bench_async(url: str, prefix: str, seconds: float, concurrency: int) -> None:
    client = aredis.Redis.from_url(url)
    # beta 0: a hit stays a hit for the whole run (no XFetch refresh).
    cache = AsyncCache(client, prefix=prefix, beta=0, registry=CollectorRegistry())
    key = f"{prefix}product:1"
    filled = await cache.get(key, lambda: asyncio.sleep(0, VALUE), ttl=TTL)
    print(
        f"asyncio: {concurrency} concurrent loops, {seconds} s per case, data key {filled.data_key}"
    )

    async def plain() -> None:
        assert await client.get(filled.data_key) is not None

    async def hit() -> None:
        assert (await cache.get(key, never_async, ttl=TTL)).hit

    bounded = AsyncCache(
        client, prefix=prefix, beta=0, registry=CollectorRegistry(), l1=L1(max_stale=1.0)
    )

    async def bounded_hit() -> None:
        got = await bounded.get(key, never_async, ttl=TTL, consistency="eventual", max_stale=1.0)
        assert got.hit

    tracking = AsyncCache(
        client, prefix=prefix, beta=0, registry=CollectorRegistry(), l1=TrackingL1()
    )
    assert await tracking.start()

    async def tracking_hit() -> None:
        assert (await tracking.get(key, never_async, ttl=TTL)).hit

    await run_async("async plain GET (redis.asyncio)", seconds, concurrency, plain)
    await run_async("async get, Redis hit", seconds, concurrency, hit)
    await run_async("async get, bounded L1 hit (eventual 1 s)", seconds, concurrency, bounded_hit)
    await run_async("async get, tracking L1 hit (strong)", seconds, concurrency, tracking_hit)
    await tracking.aclose()
    await client.aclose()


def bench_sync(url: str, prefix: str, seconds: float) -> None:
    client = redis.Redis.from_url(url)
    cache = Cache(client, prefix=prefix, beta=0, registry=CollectorRegistry())
    key = f"{prefix}product:1"
    filled = cache.get(key, lambda: VALUE, ttl=TTL)
    print(f"threaded: one thread, {seconds} s per case, data key {filled.data_key}")

    def plain() -> None:
        assert client.get(filled.data_key) is not None

    def hit() -> None:
        assert cache.get(key, never, ttl=TTL).hit

    bounded = Cache(
        client, prefix=prefix, beta=0, registry=CollectorRegistry(), l1=L1(max_stale=1.0)
    )

    def bounded_hit() -> None:
        assert bounded.get(key, never, ttl=TTL, consistency="eventual", max_stale=1.0).hit

    with Cache(
        client, prefix=prefix, beta=0, registry=CollectorRegistry(), l1=TrackingL1()
    ) as tracking:
        assert tracking.wait_live()

        def tracking_hit() -> None:
            assert tracking.get(key, never, ttl=TTL).hit

        run_sync("sync plain GET (redis)", seconds, plain)
        run_sync("sync get, Redis hit", seconds, hit)
        run_sync("sync get, bounded L1 hit (eventual 1 s)", seconds, bounded_hit)
        run_sync("sync get, tracking L1 hit (strong)", seconds, tracking_hit)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    url = os.environ.get("CDC_CACHE_REDIS_URL", "redis://127.0.0.1:16600")
    prefix = f"benchpy{os.getpid()}:"
    print(f"512-byte value, Redis {url}")
    bench_sync(url, prefix, args.seconds)
    # One loop: every get its own round trip. Many loops: concurrent gets of
    # the one key share a flight (one Redis read for all of them).
    for concurrency in sorted({1, args.concurrency}):
        asyncio.run(bench_async(url, prefix, args.seconds, concurrency))


if __name__ == "__main__":
    main()
