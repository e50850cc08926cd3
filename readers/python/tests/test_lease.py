"""The lease rule against real Redis (readers/spec.md section 5 and the
behaviour tests of section 13), for both caches (asyncio and threaded) on a
standalone server and on a Cluster. Versions are bumped by the daemon's own
bump script."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any

import pytest
import redis
from conftest import Readers
from redis.cluster import RedisCluster
from support import Loads, bump, command_calls, gather_timed, metric, unique, until

from cdc_cache import AsyncCache, LeaseTimeoutError, LoaderError, LoaderTimeoutError, lease_key

TTL = 60
PREVENTED = "stampede_prevented_count"


def data_key(key: str, version: int, epoch: int = 0) -> str:
    return f"{key}@e{epoch}:v{version}"


def prevented(readers: Readers, *names: str) -> float:
    return sum(metric(readers.registry, PREVENTED, cache=n) for n in names)


@pytest.mark.parametrize("instances", [1, 2])
async def test_one_load_after_a_bump(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str, instances: int
) -> None:
    """200 gets of a key whose version just moved call the loader once; the
    get that took the lease is not counted as prevented, every other is."""
    names = [unique("one") for _ in range(instances)]
    caches = [readers(n) for n in names]
    key = f"{unique('product')}:1"
    v1 = bump(client, prefix, key, 1)
    for cache in caches[1:]:
        await cache.warm()
    first = await caches[0].get(key, Loads(b"v1"), ttl=TTL)
    assert (first.hit, first.value, first.data_key) == (False, b"v1", data_key(key, v1))

    v2 = bump(client, prefix, key, 2)
    # A load long enough that all 200 gets begin before its fill, even on a
    # busy machine (a get that begins after it is a plain hit).
    loads = Loads(b"v2", delay=1.0)
    before = command_calls(client)
    got = await asyncio.gather(
        *(caches[i % instances].get(key, loads, ttl=TTL) for i in range(200))
    )
    after = command_calls(client)
    assert loads.calls == 1
    if instances == 1:
        # Single flight: one read, one lease attempt, one re-read, one fill.
        def calls(command: str) -> int:
            return after.get(command, 0) - before.get(command, 0)

        assert calls("set") == 2, "the lease and the fill"
        # (INFO commandstats counts the read script's own HMGET too.)
        reads = calls("hmget") if isinstance(client, RedisCluster) else calls("evalsha_ro")
        assert reads == 1, "one read of the records"
    assert [g.hit for g in got].count(False) == 1
    assert all(g.value == b"v2" and g.data_key == data_key(key, v2) and not g.stale for g in got)
    assert prevented(readers, *names) == 199

    # eventual: a flight that did not take the lease serves the previous
    # value at once; the flight that took it returns the new one.
    v3 = bump(client, prefix, key, 3)
    loads = Loads(b"v3", delay=1.0)
    got = await asyncio.gather(
        *(
            caches[i % instances].get(key, loads, ttl=TTL, consistency="eventual", max_stale=30)
            for i in range(200)
        )
    )
    assert loads.calls == 1
    fresh = [g for g in got if not g.stale]
    stale = [g for g in got if g.stale]
    assert all(g.value == b"v3" and g.data_key == data_key(key, v3) for g in fresh)
    assert all(g.value == b"v2" and g.data_key == data_key(key, v2) and g.hit for g in stale)
    assert len(fresh) == 200 // instances
    assert prevented(readers, *names) == 199 + 199
    if instances == 2:
        stale_served = sum(
            metric(readers.registry, "cache_stale_served_total", cache=n) for n in names
        )
        assert stale_served == 100, "one flight served the previous value to its 100 gets"


@pytest.mark.parametrize("waiters_in", ["other instances", "the holder's instance"])
async def test_hung_holder(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str, waiters_in: str
) -> None:
    """A holder whose loader sleeps past the lease: after the lease expires
    exactly one more load starts (a takeover), and the waiters end soon
    after it, whether they are other processes (instances) or gets of the
    holder's own (which leave its flight after a lease)."""
    # A lease long enough that every waiter has read before it expires, even
    # on a busy machine (a waiter reading after it would simply take it).
    lease = 1.0
    holder = readers(holder_name := unique("holder"), lease=lease)
    if waiters_in == "other instances":
        names = [unique("waiter") for _ in range(3)]
        waiters = [readers(n, lease=lease) for n in names]
    else:
        names, waiters = [holder_name], [holder] * 3
    key = f"{unique('product')}:9"
    version = bump(client, prefix, key, 1)
    for reader in {id(r): r for r in (holder, *waiters)}.values():
        await reader.warm()

    hung = Loads(b"late", delay=2.5)
    held = asyncio.ensure_future(holder.get(key, hung, ttl=TTL))
    await until("the hung load", lambda: hung.calls)
    taken_at = time.monotonic()

    fresh = Loads(b"fresh", delay=0.2)
    results = await gather_timed(
        [functools.partial(waiters[i % 3].get, key, fresh, ttl=TTL) for i in range(60)]
    )
    assert fresh.calls == 1, "exactly one load after the lease expired"
    assert fresh.most_at_once == 1
    assert all(getattr(r, "value", r) == b"fresh" for _, r in results), results[:3]
    longest = max(d for d, _ in results)
    # Nobody loaded before the lease expired; everyone had the value about
    # one poll after the taker's load.
    assert time.monotonic() - taken_at >= lease
    assert min(d for d, _ in results) >= lease - 0.25
    assert longest <= lease + 0.2 + 2 * 0.1 + 0.4, f"waited {longest:.3f} s"
    takeovers = sum(metric(readers.registry, "cache_lease_takeovers_total", cache=n) for n in names)
    assert takeovers == 1

    # The hung loader ends at last: its fill is harmless (the same data key)
    # and its release deletes nothing (not its token).
    late = await held
    assert (late.value, late.data_key) == (b"late", data_key(key, version))
    assert not client.exists(lease_key(data_key(key, version)))


async def test_failing_loader(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str
) -> None:
    """With a loader that always fails, loads never overlap and no get waits
    longer than wait_timeout plus one max_poll; waiters end with the shared
    loader error or lease_timeout."""
    wait_timeout, max_poll = 0.6, 0.1
    names = [unique("failing") for _ in range(4)]
    caches = [readers(n, lease=0.3, wait_timeout=wait_timeout, max_poll=max_poll) for n in names]
    key = f"{unique('product')}:5"
    bump(client, prefix, key, 1)
    for cache in caches:
        await cache.warm()
    loads = Loads(delay=0.05, fail=True)
    until = time.monotonic() + 2.0
    durations: list[float] = []
    kinds: set[str] = set()

    async def keep_trying(i: int) -> None:
        while time.monotonic() < until:
            began = time.monotonic()
            try:
                got = await caches[i % 4].get(key, loads, ttl=TTL)
            except (LoaderError, LeaseTimeoutError) as e:
                kinds.add(e.kind)
            else:
                raise AssertionError(f"a failing loader produced {got}")
            durations.append(time.monotonic() - began)

    await asyncio.gather(*(keep_trying(i) for i in range(40)))
    assert loads.calls >= 3, "loads went on, one at a time"
    assert loads.most_at_once == 1, "never two loads at once"
    # The slack: a round trip, and the scheduling of 40 gets on a busy machine.
    slack = 0.5
    assert max(durations) <= wait_timeout + max_poll + slack, f"longest get {max(durations):.3f} s"
    assert kinds <= {"loader", "lease_timeout"}, kinds
    errors = sum(metric(readers.registry, "cache_fill_errors_total", cache=n) for n in names)
    assert errors == loads.calls


async def test_failing_loader_error_kinds(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str
) -> None:
    """The waiters of a failing holder end with ``loader`` (shared in their
    flight) or ``lease_timeout`` (another instance's holder failed; the lease
    then went on to others), never with a value or a load of their own
    without the lease."""
    caches = [readers(unique("kinds"), lease=0.3, wait_timeout=0.5) for _ in range(2)]
    key = f"{unique('product')}:6"
    bump(client, prefix, key, 1)
    for cache in caches:
        await cache.warm()
    loads = Loads(delay=0.1, fail=True)
    outcomes = await gather_timed(
        [functools.partial(caches[i % 2].get, key, loads, ttl=TTL) for i in range(20)]
    )
    kinds = {getattr(r, "kind", "value") for _, r in outcomes}
    assert kinds <= {"loader", "lease_timeout"}, kinds
    assert "loader" in kinds
    assert loads.most_at_once == 1


async def test_cancelled_holder(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str
) -> None:
    """A holder cancelled while its loader runs leaves no lease behind, at
    once; a get that had joined its flight starts again and leads."""
    cache = readers(unique("cancel"))
    key = f"{unique('product')}:7"
    version = bump(client, prefix, key, 1)
    lease = lease_key(data_key(key, version))

    if isinstance(cache.cache, AsyncCache):
        stuck = Loads(delay=30)
        leader = asyncio.ensure_future(cache.get(key, stuck, ttl=TTL))
        await until("the stuck load", lambda: stuck.calls)
        assert client.exists(lease)
        after = Loads(b"after")
        joiner = asyncio.ensure_future(cache.get(key, after, ttl=TTL))
        await asyncio.sleep(0.05)
        leader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leader
        assert not client.exists(lease), "the cancelled holder released its lease"
        got = await joiner
        assert (got.value, got.hit, after.calls) == (b"after", False, 1)
    else:
        # A thread is not cancelled from outside; an interruption (a
        # BaseException such as KeyboardInterrupt) while loading is the same.
        class Interrupted(BaseException):
            pass

        def interrupted() -> bytes:
            assert client.exists(lease)
            raise Interrupted

        with pytest.raises(Interrupted):
            await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: cache.cache.get(key, interrupted, ttl=TTL),  # type: ignore[arg-type]
            )
        assert not client.exists(lease), "the interrupted holder released its lease"


async def test_loader_timeout(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str
) -> None:
    cache = readers(name := unique("timeout"), loader_timeout=0.2)
    key = f"{unique('product')}:8"
    version = bump(client, prefix, key, 1)
    await cache.warm()
    slow = Loads(b"late", delay=0.8)
    began = time.monotonic()
    with pytest.raises(LoaderTimeoutError) as caught:
        await cache.get(key, slow, ttl=TTL)
    assert caught.value.kind == "loader_timeout"
    assert time.monotonic() - began < 0.6
    assert not client.exists(lease_key(data_key(key, version)))
    assert metric(readers.registry, "cache_fill_errors_total", cache=name) == 1
    await asyncio.sleep(0.9)
    assert client.get(data_key(key, version)) is None, "the late value was never written"


async def test_loader_error_releases_the_lease(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str
) -> None:
    cache = readers(name := unique("error"))
    key = f"{unique('product')}:10"
    with pytest.raises(LoaderError) as caught:
        await cache.get(key, Loads(fail=True), ttl=TTL)
    assert caught.value.kind == "loader"
    assert "database down" in str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)
    began = time.monotonic()
    assert (await cache.get(key, Loads(b"ok"), ttl=TTL)).value == b"ok"
    assert time.monotonic() - began < 0.2, "no lease was left behind"
    assert metric(readers.registry, "cache_fill_errors_total", cache=name) == 1


async def test_epoch(readers: Readers, client: redis.Redis | RedisCluster, prefix: str) -> None:
    """An epoch move (a Redis loss recovery) names new data keys for every
    value, and is never rolled back by stale-while-revalidate."""
    cache = readers(unique("epoch"), wait_timeout=0.3)
    key = f"{unique('product')}:11"
    version = bump(client, prefix, key, 1)
    assert (await cache.get(key, Loads(b"before"), ttl=TTL)).data_key == data_key(key, version)
    epoch = time.time_ns() // 1000 + 1_000_000
    client.hset(f"{prefix}epoch", "e", str(epoch))
    moved = data_key(key, version, epoch)
    # Another holder loads: an eventual get has no previous value to serve
    # (the epoch moved last) and waits, then times out.
    client.set(lease_key(moved), "someone", px=5000)
    with pytest.raises(LeaseTimeoutError):
        await cache.get(key, Loads(b"x"), ttl=TTL, consistency="eventual", max_stale=60)
    client.delete(lease_key(moved))
    got = await cache.get(key, Loads(b"after"), ttl=TTL)
    assert (got.value, got.hit, got.data_key) == (b"after", False, moved)


async def test_stale_while_revalidate_bounds(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str
) -> None:
    """The previous value is served at once only while the bump is younger
    than max_stale; past it the get waits, and at wait_timeout serves the
    previous value whatever its age (eventual) or fails (strong)."""
    cache = readers(name := unique("swr"), wait_timeout=0.4)
    key = f"{unique('product')}:12"
    v1 = bump(client, prefix, key, 1)
    await cache.get(key, Loads(b"v1"), ttl=TTL)
    v2 = bump(client, prefix, key, 2)
    client.set(lease_key(data_key(key, v2)), "another holder", px=10_000)
    unused = Loads(b"unused")

    got = await cache.get(key, unused, ttl=TTL, consistency="eventual", max_stale=30)
    assert (got.value, got.hit, got.stale, got.data_key) == (b"v1", True, True, data_key(key, v1))

    await asyncio.sleep(0.3)
    began = time.monotonic()
    got = await cache.get(key, unused, ttl=TTL, consistency="eventual", max_stale=0.1)
    waited = time.monotonic() - began
    assert got.stale
    assert got.value == b"v1"
    assert 0.35 <= waited <= 0.4 + 0.1 + 0.3, f"waited {waited:.3f} s"

    began = time.monotonic()
    with pytest.raises(LeaseTimeoutError) as caught:
        await cache.get(key, unused, ttl=TTL)
    assert caught.value.data_key == data_key(key, v2)
    assert 0.35 <= time.monotonic() - began <= 0.8
    assert unused.calls == 0, "no get loads without the lease"
    assert metric(readers.registry, "cache_stale_served_total", cache=name) == 2
    assert metric(readers.registry, PREVENTED, cache=name) == 3


async def test_two_records_bumped_together_have_no_usable_stale_key(
    readers: Readers, client: redis.Redis | RedisCluster, prefix: str
) -> None:
    """A value of two records bumped at one time: the key before the last
    bump was never filled, so the get waits as under strong."""
    cache = readers(unique("pair"), wait_timeout=0.3)
    tag = unique("page")
    deps = [f"{tag}:product", f"{tag}:category"]
    key = f"{tag}:page"
    bump(client, prefix, deps[0], 1)
    bump(client, prefix, deps[1], 1)
    await cache.get(key, Loads(b"old"), ttl=TTL, deps=deps)
    bump(client, prefix, deps[0], 2)
    bump(client, prefix, deps[1], 2)
    options: dict[str, Any] = {"ttl": TTL, "deps": deps, "consistency": "eventual", "max_stale": 30}
    # Take the lease through a get of another instance that loads slowly.
    holder = readers(unique("pair_holder"))
    slow = Loads(b"new", delay=0.6)
    held = asyncio.ensure_future(holder.get(key, slow, **options))
    await until("the holder's load", lambda: slow.calls)
    with pytest.raises(LeaseTimeoutError):
        await cache.get(key, Loads(b"x"), **options)
    assert (await held).value == b"new"
