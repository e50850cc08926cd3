"""What the asyncio and the threaded cache share besides the flight
(``flow.py``): their L1s and the subscription that feeds them, and what a
get that joined another's flight returns."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry

from . import _clients
from ._clients import TRACKING_CHANNEL
from ._listen import Listener, NodeSpec, listener_for
from .flow import Checks, Context, FlightState
from .l1 import BoundedL1, ExactL1
from .metrics import CacheMetrics
from .options import L1, Request, Settings, TrackingL1
from .result import CacheResult


class CacheBase:
    """The L1 half of a cache: built by ``_setup`` once the subclass knows
    its client (``_seed`` says where the subscription connects)."""

    _s: Settings
    _m: CacheMetrics
    _ctx: Context
    _cluster: bool
    _listener: Listener | None

    def _setup(self, settings: Settings, registry: CollectorRegistry | None) -> None:
        self._s = settings
        self._m = CacheMetrics(settings.name, registry)
        l1 = settings.l1
        bounded = BoundedL1(l1.max_entries, settings.prefix) if isinstance(l1, L1) else None
        exact = ExactL1(l1.max_entries, l1.max_bytes) if isinstance(l1, TrackingL1) else None
        self._ctx = Context(settings, self._m, Checks(self._m), bounded, exact)
        self._listener = listener_for(
            settings,
            self._seed(),
            cluster=self._cluster,
            on_message=self._message,
            on_live=self._went_live,
            on_dark=self._went_dark,
        )

    def _seed(self) -> NodeSpec:
        raise NotImplementedError

    def _from_l1(self, req: Request) -> CacheResult | None:
        ctx = self._ctx
        # Reports already received are handled first: no value whose change
        # Redis reported to this process is served.
        if ctx.exact is not None and self._listener is not None and self._listener.drain():
            found = ctx.exact.lookup(req.layout, time.monotonic())
            if found is not None:
                self._m.hits_l1.inc()
                return CacheResult(found[1], hit=True, data_key=found[0], stale=False)
        if ctx.bounded is not None and req.eventual:
            bound = min(self._s.l1_max_stale, req.max_stale_us / 1_000_000)
            fresh = ctx.bounded.fresh(BoundedL1.entry_id(req.layout), bound)
            if fresh is not None:
                self._m.hits_l1.inc()
                return CacheResult(fresh[0], hit=True, data_key=fresh[1], stale=True)
        return None

    def _tracked(self, host: str, port: int) -> bool:
        """A tracking connection follows this node now."""
        return self._listener is not None and (host, port) in self._listener.addresses

    def _message(self, channel: bytes, payload: Any) -> None:
        ctx = self._ctx
        if ctx.exact is not None and channel == TRACKING_CHANNEL:
            keys = _clients.tracked_keys(payload)
            dropped = ctx.exact.invalidate(keys)
            (self._m.l1_reset if keys is None else self._m.l1_tracking).inc(dropped)
        elif ctx.bounded is not None:
            notice = _clients.notice_record(payload)
            if notice is None:
                return
            record, commit_us = notice
            self._m.l1_notice.inc(ctx.bounded.invalidate(record))
            if commit_us is not None:
                self._m.propagation.observe(max(0.0, time.time() * 1000 - commit_us / 1000))

    def _went_live(self) -> None:
        ctx = self._ctx
        if ctx.exact is not None:
            self._m.l1_reset.inc(ctx.exact.go_live())
        elif ctx.bounded is not None:
            self._m.l1_reset.inc(ctx.bounded.clear())

    def _went_dark(self) -> None:
        ctx = self._ctx
        if ctx.exact is not None:
            self._m.l1_reset.inc(ctx.exact.go_dark())
        elif ctx.bounded is not None:
            self._m.l1_reset.inc(ctx.bounded.clear())


def joined(m: CacheMetrics, state: FlightState) -> CacheResult:
    """A get that joined another's flight: its outcome, never its loader;
    it counts its own hit or miss, and rule 8 of section 5."""
    if state.missed:
        m.misses.inc()
        m.stampede_prevented()
    else:
        m.hits_redis.inc()
    if state.error is not None:
        raise state.error
    outcome = state.outcome
    assert outcome is not None
    if outcome.stale:
        m.stale_served.inc()
    return CacheResult(outcome.value, hit=True, data_key=outcome.data_key, stale=outcome.stale)
