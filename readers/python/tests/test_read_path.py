"""The rest of the read path against real Redis (readers/spec.md sections
5, 7, 8 and 9): hits and misses, XFetch, the freshness check, the bounded L1
and its notices, the exact L1 on client tracking, bad versions, binary
values. Both caches, standalone and Cluster."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
from conftest import Readers
from redis.cluster import RedisCluster
from support import Loads, bump, metric, unique

from cdc_cache import L1, BadVersionError, TrackingL1

TTL = 60


async def test_binary_values_round_trip(
    readers: Readers, client: redis.Redis | RedisCluster
) -> None:
    cache = readers(unique("binary"))
    key = f"{unique('blob')}:1"
    raw = bytes(range(256)) + b"c1:7:"
    loaded = await cache.get(key, Loads(raw), ttl=TTL)
    again = await cache.get(key, Loads(b"unused"), ttl=TTL)
    assert (loaded.value, again.value, again.hit) == (raw, raw, True)
    assert isinstance(again.value, bytes)
    # A value filled by hand (no envelope) is returned as it is.
    client.set(again.data_key, b"c1:x:plain")
    assert (await cache.get(key, Loads(b"unused"), ttl=TTL)).value == b"c1:x:plain"
    text = await cache.get(f"{unique('text')}:1", Loads("Café"), ttl=TTL)
    assert (text.value, text.text) == ("Café".encode(), "Café")


async def test_hits_misses_and_the_ttl(
    readers: Readers, client: redis.Redis | RedisCluster
) -> None:
    cache = readers(name := unique("hits"), beta=0)
    key = f"{unique('product')}:2"
    first = await cache.get(key, Loads(b"a"), ttl=30)
    second = await cache.get(key, Loads(b"b"), ttl=30)
    assert (first.hit, second.hit, second.value, second.stale) == (False, True, b"a", False)
    assert 29_000 < client.pttl(first.data_key) <= 30_000
    assert metric(readers.registry, "cache_hits_total", cache=name, layer="redis") == 1
    assert metric(readers.registry, "cache_misses_total", cache=name) == 1
    assert metric(readers.registry, "cache_fills_total", cache=name) == 1
    assert metric(readers.registry, "cache_fill_latency_ms_count", cache=name) == 1


async def test_xfetch_refreshes_early(readers: Readers) -> None:
    # beta 1e9: a 5 ms loader is "close to expiry" for the whole TTL (the
    # chance of no refresh is about one in a million).
    cache = readers(name := unique("xfetch"), beta=1e9)
    key = f"{unique('x')}:1"
    await cache.get(key, Loads(b"n1", delay=0.005), ttl=TTL)
    again = await cache.get(key, Loads(b"n2", delay=0.005), ttl=TTL)
    assert (again.hit, again.value) == (False, b"n2")
    assert metric(readers.registry, "cache_early_refreshes_total", cache=name) == 1
    off = readers(unique("xfetch_off"), beta=0)
    assert (await off.get(key, Loads(b"n3"), ttl=TTL)).hit


async def test_freshness_check(readers: Readers) -> None:
    cache = readers(name := unique("fresh"), sample_rate=1.0, beta=0)
    key = f"{unique('f')}:1"
    await cache.get(key, Loads(b"old"), ttl=TTL)
    # The row changed but no bump came (a lost invalidation): the check sees it.
    served = await cache.get(key, Loads(b"new"), ttl=TTL)
    assert served.value == b"old", "the served value is not replaced"
    await cache.get(key, Loads(b"old"), ttl=TTL)
    assert metric(readers.registry, "cache_freshness_checks_total", cache=name) == 2
    assert metric(readers.registry, "cache_freshness_mismatches_total", cache=name) == 1
    assert metric(readers.registry, "cache_stale_ratio", cache=name) == 0.5


async def test_bad_version_names_the_record(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str
) -> None:
    cache = readers(unique("bad"))
    key = f"{unique('bad')}:1"
    client.hset(f"{prefix}{key}", "v", "1.7e+15")
    with pytest.raises(BadVersionError) as caught:
        await cache.get(key, Loads(b"x"), ttl=TTL)
    assert caught.value.kind == "bad_version"
    assert f"{prefix}{key}" in str(caught.value)


async def test_bounded_l1_serves_within_its_bound_and_drops_on_a_notice(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str
) -> None:
    channel = unique("notices")
    cache = readers(name := unique("l1"), l1=L1(max_stale=60, max_entries=100, channel=channel))
    assert await cache.wait_live()
    key = f"{unique('p')}:1"
    eventual = {"ttl": TTL, "consistency": "eventual", "max_stale": 60}
    await cache.get(key, Loads(b"one"), **eventual)
    bump(client, prefix, key, 1)
    # No notice yet: the L1 serves its entry within the bound, marked stale.
    held = await cache.get(key, Loads(b"two"), **eventual)
    assert (held.value, held.hit, held.stale) == (b"one", True, True)
    notice = {
        "kind": "KEY",
        "target": key,
        "record_key": f"{prefix}{key}",
        "version": 1,
        "source": "t",
        "position": "1",
        "commit_time_us": time.time_ns() // 1000 - 5000,
    }
    client.publish(channel, json.dumps(notice))
    for _ in range(100):
        if metric(readers.registry, "cache_l1_invalidations_total", cache=name, reason="notice"):
            break
        await asyncio.sleep(0.01)
    fresh = await cache.get(key, Loads(b"two"), **eventual)
    assert (fresh.value, fresh.stale) == (b"two", False)
    assert (
        metric(readers.registry, "cache_l1_invalidations_total", cache=name, reason="notice") == 1
    )
    assert metric(readers.registry, "invalidation_propagation_ms_count", cache=name) == 1
    assert metric(readers.registry, "invalidation_propagation_ms_sum", cache=name) >= 5
    # A strong get never reads the bounded L1; a tight bound re-verifies.
    assert (await cache.get(key, Loads(b"x"), ttl=TTL)).value == b"two"
    await asyncio.sleep(0.02)
    bounded = await cache.get(key, Loads(b"x"), ttl=TTL, consistency="eventual", max_stale=0.01)
    assert (bounded.value, bounded.stale) == (b"two", False)
    assert metric(readers.registry, "cache_hits_total", cache=name, layer="l1") == 1
    assert metric(readers.registry, "cache_hits_total", cache=name, layer="redis") == 2


async def until_metric(readers: Readers, name: str, above: float, **labels: str) -> float:
    for _ in range(300):
        value = metric(readers.registry, name, **labels)
        if value > above:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} {labels} stayed at {above}")


async def test_tracking_l1_is_exact(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str
) -> None:
    """The exact L1 serves strong gets from process memory until Redis
    reports a change of a version record; then the next get reads Redis."""
    cache = readers(name := unique("tracking"), l1=TrackingL1())
    assert await cache.wait_live()
    tag = unique("page")
    deps = [f"{tag}:product", f"{tag}:category"]
    key = f"{tag}:page"
    options = {"ttl": TTL, "deps": deps, "namespaces": ["product"]}
    loaded = await cache.get(key, Loads(b"one"), **options)
    held = await cache.get(key, Loads(b"unused"), **options)
    assert (held.value, held.hit, held.stale, held.data_key) == (
        b"one",
        True,
        False,
        loaded.data_key,
    )
    assert metric(readers.registry, "cache_hits_total", cache=name, layer="l1") == 1

    for position, record in enumerate([deps[1], "ns:product", "epoch"], 1):
        dropped = metric(
            readers.registry, "cache_l1_invalidations_total", cache=name, reason="tracking"
        )
        if record == "epoch":
            client.hset(f"{prefix}epoch", "e", str(time.time_ns() // 1000 + 10**6))
        else:
            bump(client, prefix, record, position)
        await until_metric(
            readers, "cache_l1_invalidations_total", dropped, cache=name, reason="tracking"
        )
        moved = await cache.get(key, Loads(f"after {record}"), **options)
        assert (moved.value, moved.hit) == (f"after {record}".encode(), False)
        again = await cache.get(key, Loads(b"unused"), **options)
        assert (again.value, again.hit, again.stale) == (f"after {record}".encode(), True, False)
    assert metric(readers.registry, "cache_hits_total", cache=name, layer="l1") == 4

    # A write to an unrelated key (outside the version prefix) drops nothing.
    before = metric(readers.registry, "cache_l1_invalidations_total", cache=name, reason="tracking")
    client.set(unique("unrelated"), b"x")
    await asyncio.sleep(0.1)
    assert (
        metric(readers.registry, "cache_l1_invalidations_total", cache=name, reason="tracking")
        == before
    )


async def test_tracking_l1_is_cleared_when_tracking_drops(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str
) -> None:
    cache = readers(name := unique("tracking_drop"), l1=TrackingL1(health_interval=0.2))
    assert await cache.wait_live()
    key = f"{unique('p')}:1"
    await cache.get(key, Loads(b"one"), ttl=TTL)
    assert (await cache.get(key, Loads(b"x"), ttl=TTL)).hit
    assert metric(readers.registry, "cache_hits_total", cache=name, layer="l1") == 1
    resets = metric(readers.registry, "cache_l1_invalidations_total", cache=name, reason="reset")
    # Kill the tracking connections (every subscribed client of this test's
    # servers: only this cache has one now).
    nodes = client.get_primaries() if isinstance(client, RedisCluster) else [None]
    for node in nodes:
        if node is None:
            assert isinstance(client, redis.Redis)
            client.client_kill_filter(_type="pubsub")
        else:
            node.redis_connection.client_kill_filter(_type="pubsub")
    await until_metric(readers, "cache_l1_invalidations_total", resets, cache=name, reason="reset")
    # Until tracking is back, gets read Redis.
    got = await cache.get(key, Loads(b"x"), ttl=TTL)
    assert (got.value, got.hit) == (b"one", True)
    assert await cache.wait_live()
    await cache.get(key, Loads(b"x"), ttl=TTL)
    assert (await cache.get(key, Loads(b"x"), ttl=TTL)).hit
    assert metric(readers.registry, "cache_hits_total", cache=name, layer="l1") >= 2
