"""``AsyncCache``: the asyncio reader on ``redis.asyncio`` (standalone
``Redis`` or ``RedisCluster``). It runs the flights of ``flow.py``, shares a
flight among concurrent gets of one key (section 5, rule 2), and keeps the
L1's subscription alive in a background task."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import redis.asyncio as aredis
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster
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

__all__ = ["AsyncCache", "AsyncLoader"]

#: A get's loader: returns the value's bytes (``str`` is encoded as UTF-8).
AsyncLoader = Callable[[], Awaitable[bytes | str]]

AsyncClient = aredis.Redis | RedisCluster


class _Flight:
    __slots__ = ("done", "state")

    def __init__(self) -> None:
        self.state = FlightState()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class AsyncCache(CacheBase):
    """A reader of one Redis (standalone or Cluster) for asyncio code.

    ``AsyncCache(client, ...)`` wraps an existing ``redis.asyncio`` client
    (made without ``decode_responses``); ``AsyncCache.from_url`` makes one.
    Use it as an async context manager, or call ``aclose()``: the cache
    stops its background subscription (the client is closed only if the
    cache made it)."""

    def __init__(
        self,
        client: AsyncClient,
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
            _clients.refuse_decoding(client.get_connection_kwargs())
        elif isinstance(client, aredis.Redis):
            self._cluster = False
            _clients.refuse_decoding(client.get_connection_kwargs())
        else:
            raise InvalidOptionsError(
                "client must be a redis.asyncio Redis or RedisCluster, not "
                f"{type(client).__name__} (the threaded cdc_cache.Cache takes redis.Redis)"
            )
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
        self._read_only = True  # EVALSHA_RO until a server refuses it (before 7.0)

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **options: Any) -> AsyncCache:
        """A cache on a client of its own (``redis://`` or ``rediss://``),
        closed with the cache."""
        client: AsyncClient = RedisCluster.from_url(url) if cluster else aredis.Redis.from_url(url)
        cache = cls(client, **options)
        cache._owns_client = True
        return cache

    # -- lifecycle -------------------------------------------------------------

    async def start(self, timeout: float = 5.0) -> bool:
        """Waits up to ``timeout`` seconds for the L1's subscription (which
        starts with the cache); ``True`` once it is live (always ``True``
        without a subscribed L1)."""
        if self._listener is None:
            return True
        return await asyncio.to_thread(self._listener.wait_live, timeout)

    async def aclose(self) -> None:
        if self._listener is not None:
            await asyncio.to_thread(self._listener.close)
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncCache:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def client(self) -> AsyncClient:
        return self._client

    # -- the call -----------------------------------------------------------------

    async def get(
        self,
        key: str,
        loader: AsyncLoader,
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
                await self._sample(held.value, loader)
            return held
        after_hung = False
        while True:
            current = self._flights.get(req.flight)
            if current is None:
                return await self._lead(req, loader, started, after_hung=after_hung)
            if not await self._follow(req, current):
                # Its leader kept loading past a lease: start over (section
                # 5, rule 2), so a hung loader delays this process's gets no
                # longer than other processes'.
                after_hung = True
                continue
            state = current.state
            if state.restart:
                continue
            return joined(self._m, state)

    async def _follow(self, req: Request, current: _Flight) -> bool:
        """Waits for the flight's end; ``False`` when its leader is still
        loading a lease after this get joined (checked every lease), and the
        flight is then closed to newcomers."""
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(current.done), self._s.lease)
            except asyncio.TimeoutError:
                if current.state.loading:
                    if self._flights.get(req.flight) is current:
                        del self._flights[req.flight]
                    return False
            else:
                return True

    async def _lead(
        self, req: Request, loader: AsyncLoader, started: float, *, after_hung: bool
    ) -> CacheResult:
        me = _Flight()
        self._flights[req.flight] = me
        try:
            gen = flight(self._ctx, req, started, me.state, after_hung=after_hung)
            outcome = await self._run(gen, req, loader, me.state)
        except Exception as error:
            me.state.error = error
            raise
        except BaseException:
            # Cancelled (or interrupted): the joiners start again, one leads.
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
            if self._flights.get(req.flight) is me:
                del self._flights[req.flight]
            me.done.set_result(None)

    # -- the driver -------------------------------------------------------------

    async def _run(
        self, gen: Any, req: Request, loader: AsyncLoader, state: FlightState
    ) -> Outcome:
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
                    reply = await self._execute(effect, req, loader)
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
                # An error or a cancellation while holding the lease: release
                # it now (rule 6), even while this task is being cancelled.
                release = asyncio.ensure_future(self._release(*held))
                with contextlib.suppress(BaseException):
                    await asyncio.shield(release)

    async def _execute(self, effect: Effect, req: Request, loader: AsyncLoader) -> Any:
        c = self._client
        if isinstance(effect, Read):
            return await self._read(req.layout)
        if isinstance(effect, Get):
            return await c.get(effect.key)
        if isinstance(effect, Poll):
            if self._cluster:
                value, pttl = await asyncio.gather(
                    c.get(effect.data_key), c.pttl(lease_key(effect.data_key))
                )
            else:
                async with c.pipeline(transaction=False) as p:
                    p.get(effect.data_key)
                    p.pttl(lease_key(effect.data_key))
                    value, pttl = await p.execute()
            return value, int(pttl)
        if isinstance(effect, TryLease):
            token = secrets.token_hex(16)
            taken = await c.set(lease_key(effect.data_key), token, nx=True, px=self._s.lease_ms)
            return token if taken else None
        if isinstance(effect, Release):
            await self._release(effect.data_key, effect.token)
            return None
        if isinstance(effect, Load):
            return await self._load(loader)
        if isinstance(effect, Check):
            try:
                return as_value(await loader())
            except Exception:
                return None
        if isinstance(effect, Write):
            await c.set(effect.data_key, effect.raw, px=effect.ttl_ms)
            return None
        if isinstance(effect, Sleep):
            await asyncio.sleep(effect.seconds)
            return None
        raise AssertionError(f"unknown effect {effect!r}")

    async def _load(self, loader: AsyncLoader) -> tuple[bytes, float]:
        began = time.monotonic()
        timeout = self._s.loader_timeout
        try:
            if timeout is None:
                produced = await loader()
            else:
                # wait_for cancels the loader when it runs out of time, so a
                # late value is never written.
                produced = await asyncio.wait_for(loader(), timeout)
        except asyncio.TimeoutError as e:
            if timeout is not None and time.monotonic() - began >= timeout:
                raise LoaderTimeoutError(
                    f"loader ran longer than loader_timeout ({timeout} s)"
                ) from e
            raise LoaderError(f"loader: {e!r}") from e
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise LoaderError(f"loader: {e}") from e
        return as_value(produced), time.monotonic() - began

    async def _release(self, data_key: str, token: str) -> None:
        lease = lease_key(data_key)
        try:
            await self._client.evalsha(RELEASE_SHA, 1, lease, token)
        except NoScriptError:
            await self._client.eval(RELEASE_LUA, 1, lease, token)

    async def _read(self, layout: Layout) -> Snapshot:
        exact = self._ctx.exact
        pending = exact.begin(layout.records) if exact is not None else None
        snap: Snapshot | None = None
        try:
            snap = await (
                self._read_cluster(layout) if self._cluster else self._read_standalone(layout)
            )
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

    async def _read_standalone(self, layout: Layout) -> Snapshot:
        args: tuple[str | int, ...] = (
            len(layout.records),
            *layout.records,
            layout.key,
            layout.deps,
        )
        c = self._client
        for _ in range(3):
            command = "EVALSHA_RO" if self._read_only else "EVALSHA"
            try:
                reply = await c.execute_command(command, READ_SHA, *args)
                break
            except NoScriptError:
                # EVAL caches the script on the server for the next EVALSHA.
                reply = await c.execute_command(
                    "EVAL_RO" if self._read_only else "EVAL", READ_LUA, *args
                )
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
            fetched, pttl = await asyncio.gather(c.get(data_key), c.pttl(data_key))
            value = as_bytes(fetched)
        return Snapshot(now_us, epoch, fields, data_key, int(pttl), value)

    async def _read_cluster(self, layout: Layout) -> Snapshot:
        c = self._client
        assert isinstance(c, RedisCluster)
        replies = await asyncio.gather(
            c.execute_command("TIME"),
            c.hget(layout.records[0], "e"),
            *(c.hmget(r, ["v", "pv"]) for r in layout.records[1:]),
        )
        texts: list[Any] = [replies[1]]
        for pair in replies[2:]:
            texts.extend(pair)
        epoch, fields = parse_fields(layout, texts)
        data_key = layout.data_key(epoch, [f.v for f in fields])
        value, pttl = await asyncio.gather(c.get(data_key), c.pttl(data_key))
        return Snapshot(time_us(replies[0]), epoch, fields, data_key, int(pttl), as_bytes(value))

    async def _sample(self, served: bytes, loader: AsyncLoader) -> None:
        if random.random() >= self._s.sample_rate:
            return
        try:
            truth = as_value(await loader())
        except Exception:
            return
        self._ctx.checks.record(served, truth)

    # -- the L1's subscription ------------------------------------------------

    def _seed(self) -> NodeSpec:
        c = self._client
        if isinstance(c, RedisCluster):
            kwargs = dict(c.get_connection_kwargs())
            node = next(iter(c.nodes_manager.startup_nodes.values()))
            return NodeSpec.like(kwargs.get("connection_class"), kwargs).at(
                node.host, int(node.port)
            )
        pool = c.connection_pool
        return NodeSpec.like(pool.connection_class, dict(pool.connection_kwargs))
