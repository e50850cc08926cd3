"""The Python reader with the real daemon: a writer changes a row in
PostgreSQL (Debezium -> Kafka -> cdc-invalidator -> Redis) while readers
loop; strong readers never serve a value older than the last bump, those
with the exact TrackingL1 never one older than the last bump plus the
delivery of Redis's report, eventual ones (bounded L1 with notices,
stale-while-revalidate) never one older than the last bump plus their bound.
Standalone and Cluster, like tests/integration/readers.rs and
readers/node/test/daemon.test.ts.

Needs the stack (scripts/stack up; CDC_PG_URL, CDC_KAFKA_BROKERS and
CDC_TOPIC_PREFIX from scripts/stack env) and the daemon built
(target/debug/cdc-invalidator, or CDC_INVALIDATOR_BIN); skipped without them.
The daemon writes to this package's own test Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.cluster import RedisCluster
from support import ROOT, admin, cluster_url, metric, redis_url, unique

from cdc_cache import L1, AsyncCache, Cache, CacheResult, TrackingL1

T = TypeVar("T")

# The exact L1 (TrackingL1) serves no value whose change Redis reported to
# this process, and Redis reports a bump before it answers the daemon. A
# bump's version is Redis's clock when its script began, so a get that
# starts a few microseconds later, while the script still runs or its report
# is on the way, may serve the previous value (seen: 5 µs after). 5 ms
# covers the script and the report on a busy machine.
REPORT_US = 5_000


@dataclass(frozen=True)
class Read:
    started_us: int
    value: int
    bound_us: int
    reader: str


def violations(bumps: list[tuple[int, int]], reads: list[Read]) -> list[tuple[Read, int]]:
    """Reads that served a value older than the last bump before them plus
    their bound. ``bumps``: (value written, version = server time of its bump)."""
    out = []
    for r in reads:
        due = [n for n, at in bumps if at + r.bound_us < r.started_us]
        if due and r.value < max(due):
            out.append((r, max(due)))
    return out


def test_the_staleness_check_can_fail() -> None:
    bumps = [(1, 1_000_000), (2, 2_000_000)]
    ok = Read(2_000_100, 2, 0, "strong")
    assert violations(bumps, [ok, Read(2_000_100, 1, 500, "eventual")]) == []
    assert len(violations(bumps, [Read(2_000_100, 1, 0, "strong")])) == 1


def daemon_bin() -> Path:
    return Path(
        os.environ.get("CDC_INVALIDATOR_BIN", ROOT / "target" / "debug" / "cdc-invalidator")
    )


def pg_url() -> str:
    return os.environ.get("CDC_PG_URL", "postgres://cdc:cdc@127.0.0.1:5432/shop")


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url if "//" in url else f"tcp://{url}")
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def stack_or_skip() -> None:
    if not daemon_bin().is_file():
        pytest.skip(f"no daemon binary at {daemon_bin()} (cargo build --bin cdc-invalidator)")
    brokers = os.environ.get("CDC_KAFKA_BROKERS", "127.0.0.1:9092").split(",")[0]
    if not reachable(pg_url(), 5432) or not reachable(brokers, 9092):
        pytest.skip("the stack is not up (PostgreSQL, Kafka: scripts/stack up)")


async def eventually(what: str, seconds: float, check: Callable[[], Awaitable[T | None]]) -> T:
    deadline = time.monotonic() + seconds
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.1)


def config_text(table: str, url: str, cluster: bool, prefix: str, channel: str) -> str:
    brokers = os.environ.get("CDC_KAFKA_BROKERS", "127.0.0.1:9092")
    topics = os.environ.get("CDC_TOPIC_PREFIX", "shop")
    # topic_regex: the daemon picks the topic up once Debezium creates it.
    return f"""[source]
brokers = "{brokers}"
group_id = "{unique("group_py")}"
topic_regex = "{topics}\\\\.public\\\\.{table}"
[source.librdkafka]
"topic.metadata.refresh.interval.ms" = "1000"
[redis]
url = "{url}"
cluster = {"true" if cluster else "false"}
version_prefix = "{prefix}"
version_ttl = "1h"
max_retry_backoff = "500ms"
[admin]
listen = "127.0.0.1:0"
[notices]
redis_channel = "{channel}"
[[entity]]
table = "public.{table}"
namespace = "{table}"
consistency = "strong"
keys = ["{table}:{{id}}"]
"""


def start_daemon(config: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(daemon_bin()), "run", "--config", str(config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
async def test_readers_never_serve_older_than_the_last_bump_plus_their_bound(topology: str) -> None:
    stack_or_skip()

    table = unique("reader_rows_py")
    prefix = f"{unique('ver')}:"
    channel = unique("notices")
    url = cluster_url() if topology == "cluster" else redis_url()
    client: redis.Redis | RedisCluster = admin(topology)
    pg = await psycopg.AsyncConnection.connect(pg_url(), autocommit=True)
    work = Path(tempfile.mkdtemp(prefix="cdc-cache-daemon-"))
    config = work / "config.toml"
    config.write_text(config_text(table, url, topology == "cluster", prefix, channel))
    log = work / "daemon.log"
    # The stack's variables override the file: this test's file must win.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_") or k == "CDC_LOG"}
    env["CDC_LOG"] = "info"
    caches: list[AsyncCache | Cache] = []
    daemon: subprocess.Popen[bytes] | None = None
    try:
        await pg.execute(
            f"CREATE TABLE {table} (id integer PRIMARY KEY, price bigint NOT NULL); "
            f"INSERT INTO {table} VALUES (1, 0)"
        )
        daemon = start_daemon(config, log, env)

        key = f"{table}:1"

        async def version() -> int | None:
            v = client.hget(f"{prefix}{key}", "v")
            return None if v is None else int(v)

        try:
            last = await eventually("the seed row's bump", 90, version)
        except AssertionError as e:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise AssertionError(f"{e}\n{tail}") from None

        bound = 0.3
        registry = CollectorRegistry()

        def make(name: str, **options: object) -> AsyncCache:
            c = AsyncCache.from_url(
                url,
                cluster=topology == "cluster",
                name=name,
                prefix=prefix,
                registry=registry,
                **options,
            )
            caches.append(c)
            return c

        strong = make("strong")
        eventual = make("eventual", l1=L1(max_stale=bound, max_entries=100, channel=channel))
        tracking = make("tracking", l1=TrackingL1())
        threaded = Cache.from_url(
            url,
            cluster=topology == "cluster",
            name="threaded",
            prefix=prefix,
            registry=registry,
            l1=TrackingL1(),
        )
        caches.append(threaded)
        assert await eventual.start()
        assert await tracking.start()
        assert threaded.wait_live()

        async def load() -> bytes:
            cursor = await pg.execute(f"SELECT price FROM {table} WHERE id = 1")
            row = await cursor.fetchone()
            assert row is not None
            return str(row[0]).encode()

        stop = False
        reads: list[Read] = []

        async def loop(kind: str) -> None:
            while not stop:
                started_us = time.time_ns() // 1000
                got: CacheResult
                if kind == "eventual":
                    got = await eventual.get(
                        key, load, ttl=60, consistency="eventual", max_stale=bound
                    )
                else:
                    got = await (strong if kind == "strong" else tracking).get(key, load, ttl=60)
                allowed = {"eventual": round(bound * 1e6), "tracking": REPORT_US}.get(kind, 0)
                reads.append(Read(started_us, int(got.value), allowed, kind))
                await asyncio.sleep(0.002)

        threaded_reads: list[Read] = []

        def threaded_loop() -> None:
            db = psycopg.connect(pg_url(), autocommit=True)

            def load_sync() -> bytes:
                row = db.execute(f"SELECT price FROM {table} WHERE id = 1").fetchone()
                assert row is not None
                return str(row[0]).encode()

            while not stop:
                started_us = time.time_ns() // 1000
                got = threaded.get(key, load_sync, ttl=60)
                threaded_reads.append(Read(started_us, int(got.value), REPORT_US, "threaded"))
                time.sleep(0.002)
            db.close()

        thread = threading.Thread(target=threaded_loop)
        thread.start()
        kinds = ["strong", "eventual", "tracking"] * 2
        readers = [asyncio.ensure_future(loop(k)) for k in kinds]

        bumps: list[tuple[int, int]] = []
        for n in range(1, 13):
            await pg.execute(f"UPDATE {table} SET price = {n} WHERE id = 1")
            previous = last

            async def moved(previous: int = previous) -> int | None:
                v = await version()
                return v if v is not None and v > previous else None

            last = await eventually(f"the bump of price {n}", 30, moved)
            bumps.append((n, last))
            await asyncio.sleep(0.05 + (n * 37 % 150) / 1000)
        await asyncio.sleep(bound * 2)
        stop = True
        await asyncio.gather(*readers)
        thread.join()

        every = reads + threaded_reads
        bad = violations(bumps, every)
        assert not bad, f"{len(bad)} of {len(every)} reads too old, e.g. {bad[:5]}; bumps {bumps}"
        newest = [r for r in every if r.started_us > last + round(bound * 1e6)]
        assert newest
        assert all(r.value == 12 for r in newest)
        for kind in ("strong", "eventual", "tracking", "threaded"):
            assert sum(r.reader == kind for r in every) > 50, f"only a few {kind} reads"
        assert (
            metric(registry, "cache_l1_invalidations_total", cache="eventual", reason="notice") > 0
        )
        assert (
            metric(registry, "cache_l1_invalidations_total", cache="tracking", reason="tracking")
            > 0
        )
        assert metric(registry, "cache_hits_total", cache="tracking", layer="l1") > 0
        assert metric(registry, "cache_hits_total", cache="threaded", layer="l1") > 0
    finally:
        for c in caches:
            if isinstance(c, AsyncCache):
                await c.aclose()
            else:
                c.close()
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
        await pg.execute(f"DROP TABLE IF EXISTS {table}")
        await pg.close()
        client.close()
