"""Redis Sentinel (readers/spec.md section 14): both caches connected
through a private primary, replica and three Sentinels
(readers/testing/sentinel-topology.sh; ports from CDC_CACHE_SENTINEL_PORT,
default 26520, up to +4) follow a failover without a new client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from prometheus_client import CollectorRegistry
from support import BUMP_LUA, ROOT, bump, unique

from cdc_cache import (
    AsyncCache,
    Cache,
    CacheResult,
    InvalidOptionsError,
    SentinelSettings,
    TrackingL1,
)

SCRIPT = ROOT / "readers" / "testing" / "sentinel-topology.sh"
BASE = int(os.environ.get("CDC_CACHE_SENTINEL_PORT", "26520"))
# A failover is followed within this long after the Sentinels name the new
# primary. A Sentinel demotes the old primary, killing its clients (which would
# move any client), only about 8 s after the switch: this bound tells the two apart.
FAILOVER_BOUND_S = 6.0
TTL = 60.0

T = TypeVar("T")


def topology(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=90, check=False
    )


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[list[str]]:
    started = topology("start", str(BASE), str(tmp_path / "sentinel"))
    try:
        if started.returncode == 3:
            pytest.skip("redis-sentinel is not installed: the Sentinel failover test needs it")
        assert started.returncode == 0, f"sentinel-topology.sh start: {started.stderr}"
        yield started.stdout.strip().split(",")
    finally:
        topology("stop", str(BASE), str(tmp_path / "sentinel"))


def until(get: Callable[[], T], done: Callable[[T], bool] = lambda _: True) -> T:
    """Retries ``get`` every 100 ms until it succeeds with a result ``done``
    accepts, or the bound passes (then the last result or error)."""
    deadline = time.monotonic() + FAILOVER_BOUND_S
    while True:
        try:
            got = get()
            if done(got) or time.monotonic() > deadline:
                return got
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


async def until_async(
    get: Callable[[], Awaitable[T]], done: Callable[[T], bool] = lambda _: True
) -> T:
    deadline = time.monotonic() + FAILOVER_BOUND_S
    while True:
        try:
            got = await get()
            if done(got) or time.monotonic() > deadline:
                return got
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


def value_on(client: redis.Redis, key: str) -> bytes:
    value = client.get(key)
    return value if isinstance(value, bytes) else b""


def const(text: str) -> Callable[[], bytes]:
    return text.encode


def aconst(text: str) -> Callable[[], Awaitable[bytes]]:
    async def load() -> bytes:
        return text.encode()

    return load


def test_settings_hide_passwords_and_refuse_bad_addresses() -> None:
    s = SentinelSettings("m", ["h:1"], password="data-secret", sentinel_password="sentinel-secret")
    for text in (repr(s), str(s), f"{s}", f"{s!r}"):
        assert "secret" not in text, text
        assert "<redacted>" in text, text
    with pytest.raises(InvalidOptionsError):
        SentinelSettings("m", ["h"])
    with pytest.raises(InvalidOptionsError):
        SentinelSettings("", ["h:1"])
    with pytest.raises(InvalidOptionsError):
        SentinelSettings("m", "h:1")


async def test_both_caches_follow_a_failover(sentinels: list[str]) -> None:
    settings = SentinelSettings("cdc-readers", sentinels)
    prefix = f"{unique('ver')}:"
    key = f"{unique('product')}:1"
    sync_cache = Cache.from_sentinel(
        settings, name="sync", prefix=prefix, registry=CollectorRegistry()
    )
    async_cache = AsyncCache.from_sentinel(
        settings, name="async", prefix=prefix, registry=CollectorRegistry()
    )
    # With the tracking L1, whose subscription must follow the primary too.
    tracked = Cache.from_sentinel(
        settings, name="tracked", prefix=prefix, registry=CollectorRegistry(), l1=TrackingL1()
    )
    assert tracked.wait_live(5.0), "the tracking L1's subscription"
    old, new = (redis.Redis(port=p) for p in (BASE, BASE + 1))
    try:
        # A version the replica acknowledged (WAIT 1, same connection) before the failover.
        with old.pipeline(transaction=False) as pipe:
            pipe.eval(BUMP_LUA, 1, f"{prefix}{key}", 600_000, "p:test", "1".rjust(20, "0"))
            pipe.execute_command("WAIT", 1, 5000)
            (reply, acked) = pipe.execute()
        assert acked >= 1, "WAIT 1"
        # Per record the new version (a string) when applied, 0 when not.
        assert isinstance(reply[0], (bytes, str)), f"bump not applied: {reply}"
        v1 = int(reply[0])
        first = sync_cache.get(key, const("before"), ttl=TTL)
        assert not first.hit
        assert first.data_key.endswith(f":v{v1}")
        assert (await async_cache.get(key, aconst("unused"), ttl=TTL)).hit
        for _ in range(2):
            assert tracked.get(key, const("unused"), ttl=TTL).data_key == first.data_key
        deadline = time.monotonic() + 5
        while not value_on(new, first.data_key).endswith(b":before"):
            assert time.monotonic() < deadline, "the replica never received the fill"
            await asyncio.sleep(0.02)

        failover = topology("failover", str(BASE))
        assert failover.returncode == 0, f"failover: {failover.stderr}"
        assert failover.stdout.strip() == str(BASE + 1)

        # The version written before the failover, read from the new primary.
        read: CacheResult = until(lambda: sync_cache.get(key, const("unused"), ttl=TTL))
        assert (read.hit, read.data_key, read.value) == (True, first.data_key, b"before")
        aread = await until_async(lambda: async_cache.get(key, aconst("unused"), ttl=TTL))
        assert (aread.hit, aread.data_key) == (True, first.data_key)

        # A bump written straight to the new primary: a cache still reading
        # the old one (not yet demoted) would not see it.
        v2 = bump(new, prefix, key, 2)
        got = until(
            lambda: sync_cache.get(key, const("sync"), ttl=TTL),
            lambda r: r.data_key.endswith(f":v{v2}"),
        )
        assert (got.hit, got.value) == (False, b"sync")
        assert got.data_key.endswith(f":v{v2}"), got
        v3 = bump(new, prefix, key, 3)
        agot = await until_async(
            lambda: async_cache.get(key, aconst("async"), ttl=TTL),
            lambda r: r.data_key.endswith(f":v{v3}"),
        )
        assert (agot.hit, agot.value) == (False, b"async")
        assert agot.data_key.endswith(f":v{v3}")
        # The tracking L1 let go of the old primary's entries.
        seen = until(
            lambda: tracked.get(key, const("unused"), ttl=TTL),
            lambda r: r.data_key.endswith(f":v{v3}"),
        )
        assert (seen.data_key, seen.value) == (agot.data_key, b"async")
        for filled, text in ((got, b"sync"), (agot, b"async")):
            assert value_on(new, filled.data_key).endswith(text), "filled on the new primary"
            assert not new.exists(f"{filled.data_key}:lease"), "no lease left behind"
    finally:
        tracked.close()
        sync_cache.close()
        await async_cache.aclose()
        old.close()
        new.close()
