"""Fixtures for the tests against real Redis. The servers are started by
readers/python/run-tests (standalone on CDC_CACHE_REDIS_URL, a Cluster on
CDC_CACHE_CLUSTER_URL); each test uses a version prefix and keys of its own
and its own metrics registry, so tests never share state."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.cluster import RedisCluster
from support import AnyCache, Reader, admin, make_cache, unique

from cdc_cache import AsyncCache


@pytest.fixture(params=["standalone", "cluster"])
def topology(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    try:
        admin(name).ping()
    except Exception as e:
        pytest.fail(
            f"no {name} Redis for the tests ({e}); readers/python/run-tests starts them, "
            "or set CDC_CACHE_REDIS_URL / CDC_CACHE_CLUSTER_URL"
        )
    return name


@pytest.fixture(params=["async", "sync"])
def flavour(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def prefix() -> str:
    return f"{unique('ver')}:"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def client(topology: str) -> Iterator[redis.Redis | RedisCluster]:
    c = admin(topology)
    yield c
    c.close()


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=256) as threads:
        # Start every thread now: 200 gets then begin within milliseconds of
        # each other, as the tests that count waiters need.
        started = threading.Barrier(256)
        list(threads.map(lambda _: started.wait(), range(256)))
        yield threads


class Readers:
    """Makes readers (caches of the test's flavour and topology) and closes
    them at the end of the test."""

    def __init__(
        self,
        flavour: str,
        topology: str,
        prefix: str,
        registry: CollectorRegistry,
        pool: concurrent.futures.ThreadPoolExecutor,
    ) -> None:
        self.flavour = flavour
        self.topology = topology
        self.prefix = prefix
        self.registry = registry
        self._pool = pool
        self._made: list[Reader] = []

    def __call__(self, name: str = "default", **options: Any) -> Reader:
        options.setdefault("prefix", self.prefix)
        options.setdefault("registry", self.registry)
        cache: AnyCache = make_cache(self.flavour, self.topology, name=name, **options)
        reader = Reader(cache, self._pool)
        self._made.append(reader)
        return reader

    async def close(self) -> None:
        for reader in self._made:
            await reader.close()
            if isinstance(reader.cache, AsyncCache):
                await reader.cache.client.aclose()
            else:
                reader.cache.client.close()


@pytest.fixture
async def readers(
    flavour: str,
    topology: str,
    prefix: str,
    registry: CollectorRegistry,
    pool: concurrent.futures.ThreadPoolExecutor,
) -> AsyncIterator[Readers]:
    made = Readers(flavour, topology, prefix, registry, pool)
    yield made
    await made.close()
