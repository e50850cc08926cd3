"""``Cache``: the threaded (synchronous) reader on ``redis`` (standalone
``Redis`` or ``RedisCluster``), the twin of ``AsyncCache``: the same flights
(``flow.py``), shared among the threads getting one key at once (section 5,
rule 2), and the L1's subscription kept alive in a daemon thread."""

from __future__ import annotations

import concurrent.futures
import contextlib
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import redis
from prometheus_client import CollectorRegistry
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import RedisError as RedisPyError

from . import _clients
from ._base import CacheBase, joined
from ._listen import NodeSpec
from ._scripts import READ_LUA, READ_SHA, RELEASE_LUA, RELEASE_SHA
from .errors import (
    CacheError,
    InvalidOptionsError,
    LoaderError,
    LoaderTimeoutError,
    ProtocolError,
    RedisError,
)
from .flow import (
    Check,
    Effect,
    FlightState,
    Get,
    Load,
    Outcome,
    Poll,
    Read,
    Release,
    Sleep,
    Snapshot,
    TryLease,
    Write,
    as_bytes,
    flight,
    parse_fields,
    time_us,
)
from .naming import Layout, lease_key
from .options import L1, Consistency, Duration, Request, Settings, TrackingL1
from .result import CacheResult, as_value

__all__ = ["Cache", "Loader"]

#: A get's loader: returns the value's bytes (``str`` is encoded as UTF-8).
Loader = Callable[[], bytes | str]

SyncClient = redis.Redis | RedisCluster


class _Flight:
    __slots__ = ("done", "state")

    def __init__(self) -> None:
        self.state = FlightState()
        self.done = threading.Event()


class Cache(CacheBase):
    """A reader of one Redis (standalone or Cluster) for threaded code.

    ``Cache(client, ...)`` wraps an existing ``redis.Redis`` or
    ``redis.cluster.RedisCluster`` (made without ``decode_responses``);
    ``Cache.from_url`` makes one. Use it as a context manager, or call
    ``close()``: the cache stops its subscription thread (the client is
    closed only if the cache made it)."""

    def __init__(
        self,
        client: SyncClient,
        *,
        name: str = "default",
        prefix: str = "ver:",
        lease: Duration = 5.0,
        poll: Duration = 0.01,
        max_poll: Duration = 0.1,
        wait_timeout: Duration | None = None,
        loader_timeout: Duration | None = None,
        beta: float = 1.0,
        sample_rate: float = 0.0,
        l1: L1 | TrackingL1 | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if isinstance(client, RedisCluster):
            self._cluster = True
        elif isinstance(client, redis.Redis):
            self._cluster = False
        else:
            raise InvalidOptionsError(
                f"client must be a redis.Redis or redis.cluster.RedisCluster, not "
                f"{type(client).__name__} (cdc_cache.AsyncCache takes redis.asyncio clients)"
            )
        _clients.refuse_decoding(client.get_connection_kwargs())
        self._client = client
        self._owns_client = False
        settings = Settings.build(
            name=name,
            prefix=prefix,
            lease=lease,
            poll=poll,
            max_poll=max_poll,
            wait_timeout=wait_timeout,
            loader_timeout=loader_timeout,
            beta=beta,
            sample_rate=sample_rate,
            l1=l1,
        )
        self._setup(settings, registry)
        self._flights: dict[tuple[object, ...], _Flight] = {}
        self._flights_lock = threading.Lock()
        self._read_only = True  # EVALSHA_RO until a server refuses it (before 7.0)
        # Loaders under loader_timeout run here, so the get can stop waiting.
        self._loaders = (
            concurrent.futures.ThreadPoolExecutor(thread_name_prefix=f"cdc-cache-{name}-loader")
            if self._s.loader_timeout is not None
            else None
        )

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **options: Any) -> Cache:
        """A cache on a client of its own (``redis://`` or ``rediss://``),
        closed with the cache."""
        client: SyncClient = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
        cache = cls(client, **options)
        cache._owns_client = True
        return cache

    # -- lifecycle -------------------------------------------------------------

    def wait_live(self, timeout: float = 5.0) -> bool:
        """Waits up to ``timeout`` seconds for the L1's subscription; ``True``
        once it is live (always ``True`` without a subscribed L1)."""
        return self._listener is None or self._listener.wait_live(timeout)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._loaders is not None:
            self._loaders.shutdown(wait=False, cancel_futures=True)
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def client(self) -> SyncClient:
        return self._client

    # -- the call -----------------------------------------------------------------

    def get(
        self,
        key: str,
        loader: Loader,
        *,
        ttl: Duration,
        deps: Sequence[str] | None = None,
        namespaces: Sequence[str] = (),
        consistency: Consistency = "strong",
        max_stale: Duration | None = None,
    ) -> CacheResult:
        """The value of ``key`` (spec section 1): from the L1, from Redis, or
        from ``loader`` (called only by the get that holds the lease)."""
        req = Request.build(
            self._s.prefix,
            key,
            deps=deps,
            namespaces=namespaces,
            ttl=ttl,
            consistency=consistency,
            max_stale=max_stale,
        )
        started = time.monotonic()
        held = self._from_l1(req)
        if held is not None:
            if self._s.sample_rate > 0:
                self._sample(held.value, loader)
            return held
        after_hung = False
        while True:
            with self._flights_lock:
                current = self._flights.get(req.flight)
                if current is None:
                    me = self._flights[req.flight] = _Flight()
            if current is None:
                return self._lead(me, req, loader, started, after_hung=after_hung)
            if not self._follow(req, current):
                # Its leader kept loading past a lease: start over (section
                # 5, rule 2), so a hung loader delays this process's gets no
                # longer than other processes'.
                after_hung = True
                continue
            state = current.state
            if state.restart:
                continue
            return joined(self._m, state)

    def _follow(self, req: Request, current: _Flight) -> bool:
        """Waits for the flight's end; ``False`` when its leader is still
        loading a lease after this get joined (checked every lease), and the
        flight is then closed to newcomers."""
        while not current.done.wait(self._s.lease):
            if current.state.loading:
                with self._flights_lock:
                    if self._flights.get(req.flight) is current:
                        del self._flights[req.flight]
                return False
        return True

    def _lead(
        self, me: _Flight, req: Request, loader: Loader, started: float, *, after_hung: bool
    ) -> CacheResult:
        try:
            gen = flight(self._ctx, req, started, me.state, after_hung=after_hung)
            outcome = self._run(gen, req, loader, me.state)
        except Exception as error:
            me.state.error = error
            raise
        except BaseException:
            # Interrupted: the joiners start again, one leads.
            me.state.restart = True
            raise
        else:
            me.state.outcome = outcome
            return CacheResult(
                outcome.value,
                hit=not outcome.loaded,
                data_key=outcome.data_key,
                stale=outcome.stale,
            )
        finally:
            with self._flights_lock:
                if self._flights.get(req.flight) is me:
                    del self._flights[req.flight]
            me.done.set()

    # -- the driver -------------------------------------------------------------

    def _run(self, gen: Any, req: Request, loader: Loader, state: FlightState) -> Outcome:
        held: tuple[str, str] | None = None
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect: Effect = gen.throw(error) if error is not None else gen.send(reply)
                except StopIteration as done:
                    result: Outcome = done.value
                    return result
                reply, error = None, None
                state.loading = isinstance(effect, Load)
                try:
                    reply = self._execute(effect, req, loader)
                except CacheError as e:
                    error = e
                except RedisPyError as e:
                    error = RedisError(f"redis: {e}")
                    error.__cause__ = e
                state.loading = False
                if isinstance(effect, TryLease) and reply is not None:
                    held = (effect.data_key, reply)
                elif isinstance(effect, Release):
                    held = None
        finally:
            gen.close()
            if held is not None:
                # An error or an interruption while holding the lease:
                # release it now (rule 6), best effort.
                with contextlib.suppress(Exception):
                    self._release(*held)

    def _execute(self, effect: Effect, req: Request, loader: Loader) -> Any:
        c = self._client
        if isinstance(effect, Read):
            return self._read(req.layout)
        if isinstance(effect, Get):
            return c.get(effect.key)
        if isinstance(effect, Poll):
            p = c.pipeline(transaction=False) if not self._cluster else c.pipeline()
            p.get(effect.data_key)
            p.pttl(lease_key(effect.data_key))
            value, pttl = p.execute()
            return value, int(pttl)
        if isinstance(effect, TryLease):
            token = secrets.token_hex(16)
            taken = c.set(lease_key(effect.data_key), token, nx=True, px=self._s.lease_ms)
            return token if taken else None
        if isinstance(effect, Release):
            self._release(effect.data_key, effect.token)
            return None
        if isinstance(effect, Load):
            return self._load(loader)
        if isinstance(effect, Check):
            try:
                return as_value(loader())
            except Exception:
                return None
        if isinstance(effect, Write):
            c.set(effect.data_key, effect.raw, px=effect.ttl_ms)
            return None
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
            return None
        raise AssertionError(f"unknown effect {effect!r}")

    def _load(self, loader: Loader) -> tuple[bytes, float]:
        began = time.monotonic()
        timeout = self._s.loader_timeout
        try:
            if self._loaders is None or timeout is None:
                produced = loader()
            else:
                running = self._loaders.submit(loader)
                try:
                    produced = running.result(timeout)
                except concurrent.futures.TimeoutError as e:
                    # A thread cannot be stopped: the loader runs on, its late
                    # value is dropped (never written).
                    running.cancel()
                    raise LoaderTimeoutError(
                        f"loader ran longer than loader_timeout ({timeout} s)"
                    ) from e
        except CacheError:
            raise
        except Exception as e:
            raise LoaderError(f"loader: {e}") from e
        return as_value(produced), time.monotonic() - began

    def _release(self, data_key: str, token: str) -> None:
        lease = lease_key(data_key)
        try:
            self._client.evalsha(RELEASE_SHA, 1, lease, token)
        except NoScriptError:
            self._client.eval(RELEASE_LUA, 1, lease, token)

    def _read(self, layout: Layout) -> Snapshot:
        exact = self._ctx.exact
        pending = exact.begin(layout.records) if exact is not None else None
        snap: Snapshot | None = None
        try:
            snap = self._read_cluster(layout) if self._cluster else self._read_standalone(layout)
            return snap
        finally:
            if exact is not None:
                exact.commit(
                    pending,
                    None if snap is None else snap.versions,
                    self._covered if self._cluster else None,
                )

    def _covered(self, record: str) -> bool:
        """The record's node is one a tracking connection follows."""
        assert isinstance(self._client, RedisCluster)
        node = self._client.get_node_from_key(record)
        return node is not None and self._tracked(node.host, int(node.port))

    def _read_standalone(self, layout: Layout) -> Snapshot:
        args: tuple[str | int, ...] = (
            len(layout.records),
            *layout.records,
            layout.key,
            layout.deps,
        )
        c: Any = self._client
        for _ in range(3):
            command = "EVALSHA_RO" if self._read_only else "EVALSHA"
            try:
                reply = c.execute_command(command, READ_SHA, *args)
                break
            except NoScriptError:
                # EVAL caches the script on the server for the next EVALSHA.
                reply = c.execute_command("EVAL_RO" if self._read_only else "EVAL", READ_LUA, *args)
                break
            except ResponseError as e:
                if self._read_only and "unknown command" in str(e).lower():
                    self._read_only = False
                    continue
                raise
        else:  # pragma: no cover - the loop breaks or raises
            raise ProtocolError("the read script could not run")
        if not isinstance(reply, list) or len(reply) != 2 + 2 * len(layout.records) + 2:
            raise ProtocolError(f"the read script replied {reply!r}")
        now_us = time_us(reply[:2])
        epoch, fields = parse_fields(layout, reply[2:-3])
        data_key = layout.data_key(epoch, [f.v for f in fields])
        script_key, pttl, value = as_bytes(reply[-3]), reply[-2], as_bytes(reply[-1])
        if script_key != data_key.encode():
            # Valid versions are canonical, so this never happens; if it
            # does, trust the key built here.
            p = c.pipeline(transaction=False)
            p.get(data_key)
            p.pttl(data_key)
            value, pttl = p.execute()
        return Snapshot(now_us, epoch, fields, data_key, int(pttl), value)

    def _read_cluster(self, layout: Layout) -> Snapshot:
        c = self._client
        assert isinstance(c, RedisCluster)
        # One pipeline: the cluster client sends each node its commands at once.
        p = c.pipeline()
        p.hget(layout.records[0], "e")
        for record in layout.records[1:]:
            p.hmget(record, ["v", "pv"])
        replies = p.execute()
        now = c.time()
        texts: list[Any] = [replies[0]]
        for pair in replies[1:]:
            texts.extend(pair)
        epoch, fields = parse_fields(layout, texts)
        data_key = layout.data_key(epoch, [f.v for f in fields])
        p = c.pipeline()
        p.get(data_key)
        p.pttl(data_key)
        value, pttl = p.execute()
        return Snapshot(time_us(now), epoch, fields, data_key, int(pttl), value)

    def _sample(self, served: bytes, loader: Loader) -> None:
        if random.random() >= self._s.sample_rate:
            return
        try:
            truth = as_value(loader())
        except Exception:
            return
        self._ctx.checks.record(served, truth)

    # -- the L1's subscription ------------------------------------------------

    def _seed(self) -> NodeSpec:
        c = self._client
        if isinstance(c, RedisCluster):
            node = c.get_default_node()
            pool = node.redis_connection.connection_pool
            spec = NodeSpec.like(pool.connection_class, dict(pool.connection_kwargs))
            return spec.at(node.host, int(node.port))
        pool = c.connection_pool
        return NodeSpec.like(pool.connection_class, dict(pool.connection_kwargs))
