"""One flight of a get (readers/spec.md sections 5, 6, 7 and 9) as a pure
generator: it yields effects (read, take the lease, load, sleep...) and is
sent their results; the asyncio and the threaded cache each run it with their
own Redis client. The lease rule lives here once for both.

The driver's contract: it executes each effect and sends the result back (or
throws the effect's error into the generator); it remembers the lease token a
``TryLease`` returned until the matching ``Release`` ran, and releases a
lease still held when the flight ends in any other way (an error, a
cancellation), best effort (section 5, rule 6)."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from .errors import LeaseTimeoutError, LoaderError, LoaderTimeoutError, ProtocolError
from .l1 import BoundedL1, ExactL1
from .metrics import CacheMetrics
from .naming import Fields, Layout, lease_key, parse_version
from .options import Request, Settings

__all__ = ["Outcome", "Snapshot", "decode", "encode", "xfetch_due"]

#: The last N freshness checks make ``cache_stale_ratio`` (section 9).
RATIO_WINDOW = 100


# -- the envelope (section 7) --------------------------------------------------


def encode(delta_ms: int, value: bytes) -> bytes:
    """``c1:<loader duration in ms>:<bytes>``."""
    return b"c1:%d:" % max(0, delta_ms) + value


def decode(raw: bytes) -> tuple[int, bytes]:
    """The loader's duration and the value; a value without the envelope (a
    data key filled by hand) is returned whole with duration 0."""
    if raw.startswith(b"c1:"):
        colon = raw.find(b":", 3)
        digits = raw[3:colon] if colon > 3 else b""
        if 0 < len(digits) <= 19 and digits.isdigit() and digits.isascii():
            return int(digits), raw[colon + 1 :]
    return 0, raw


def xfetch_due(delta_ms: int, beta: float, pttl_ms: int) -> bool:
    """XFetch: refresh when ``delta * beta * -ln(u) >= ttl left``, u in (0, 1]."""
    u = 1.0 - random.random()
    return delta_ms * beta * -math.log(u) >= pttl_ms


# -- what a read found ---------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The read of section 5: server time, the versions, the data key built
    from them, the data key's value and PTTL."""

    now_us: int
    epoch: int
    fields: tuple[Fields, ...]
    data_key: str
    pttl_ms: int
    value: bytes | None

    @property
    def versions(self) -> list[int]:
        """The epoch's ``e`` then each record's ``v``, in the layout's order."""
        return [self.epoch, *(f.v for f in self.fields)]


def parse_fields(layout: Layout, texts: list[Any]) -> tuple[int, tuple[Fields, ...]]:
    """``texts``: ``e``, then ``v`` and ``pv`` of each record after the epoch
    (``None`` for a missing field). Every version is checked (section 3)."""
    if len(texts) != 1 + 2 * (len(layout.records) - 1):
        raise ProtocolError(f"{len(texts)} version fields for {len(layout.records)} records")
    epoch = parse_version(layout.records[0], "e", as_bytes(texts[0])) or 0
    fields = tuple(
        Fields(
            v=parse_version(record, "v", as_bytes(texts[1 + 2 * i])) or 0,
            pv=parse_version(record, "pv", as_bytes(texts[2 + 2 * i])),
        )
        for i, record in enumerate(layout.records[1:])
    )
    return epoch, fields


def as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    raise ProtocolError(f"unexpected reply {value!r}")


def time_us(reply: Any) -> int:
    try:
        seconds, micros = reply
        return int(seconds) * 1_000_000 + int(micros)
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"TIME replied {reply!r}") from e


# -- effects -----------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """The read of section 5 -> ``Snapshot``."""


@dataclass(frozen=True)
class Get:
    """``GET key`` -> ``bytes | None``."""

    key: str


@dataclass(frozen=True)
class Poll:
    """``GET`` of the data key and ``PTTL`` of its lease, pipelined ->
    ``(bytes | None, int)``."""

    data_key: str


@dataclass(frozen=True)
class TryLease:
    """``SET <lease> <token> NX PX <lease>`` -> the token, or ``None``."""

    data_key: str


@dataclass(frozen=True)
class Release:
    """The compare-and-delete of the lease -> ``None``."""

    data_key: str
    token: str


@dataclass(frozen=True)
class Load:
    """The get's loader, under ``loader_timeout`` -> ``(bytes, seconds)``;
    raises ``LoaderError`` or ``LoaderTimeoutError``."""


@dataclass(frozen=True)
class Check:
    """The loader for a freshness check -> ``bytes``, or ``None`` when it
    failed (a failure says nothing about freshness)."""


@dataclass(frozen=True)
class Write:
    """``SET <data key> <envelope> PX <ttl>`` -> ``None``."""

    data_key: str
    raw: bytes
    ttl_ms: int


@dataclass(frozen=True)
class Sleep:
    seconds: float


Effect = Read | Get | Poll | TryLease | Release | Load | Check | Write | Sleep


@dataclass(frozen=True)
class Outcome:
    """How a flight ended with a value."""

    value: bytes
    data_key: str
    stale: bool
    #: The value came from the leading get's own loader.
    loaded: bool


class FlightState:
    """What the gets joining a flight learn besides its outcome."""

    __slots__ = ("done", "error", "loading", "missed", "outcome", "restart")

    def __init__(self) -> None:
        self.missed = False
        # The leader holds the lease and its loader runs (set by the driver).
        self.loading = False
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        # The leader was cancelled: joiners start again (section 5, rule 6).
        self.restart = False
        self.done = False


class Checks:
    """The freshness check's window (section 9), shared by a cache's gets."""

    def __init__(self, metrics: CacheMetrics) -> None:
        self._m = metrics
        self._lock = threading.Lock()
        self._window: deque[bool] = deque(maxlen=RATIO_WINDOW)

    def record(self, served: bytes, truth: bytes) -> None:
        mismatch = served != truth
        self._m.freshness_checks.inc()
        if mismatch:
            self._m.freshness_mismatches.inc()
        with self._lock:
            self._window.append(mismatch)
            ratio = sum(self._window) / len(self._window)
        self._m.stale_ratio.set(ratio)


@dataclass
class Context:
    """A cache's shared parts that a flight uses."""

    settings: Settings
    metrics: CacheMetrics
    checks: Checks
    bounded: BoundedL1 | None
    exact: ExactL1 | None


Flow = Generator[Effect, Any, Outcome]


def flight(
    ctx: Context, req: Request, started: float, state: FlightState, *, after_hung: bool = False
) -> Flow:
    """One flight, led by a get that started at ``started`` (monotonic).
    ``after_hung``: its get left a flight whose leader kept loading past a
    lease; taking the lease at this read is then a takeover."""
    s, m, layout = ctx.settings, ctx.metrics, req.layout
    read_at = time.monotonic()
    snap: Snapshot = yield Read()
    key = snap.data_key

    if snap.value is not None:
        m.hits_redis.inc()
        delta_ms, value = decode(snap.value)
        if (
            delta_ms > 0
            and snap.pttl_ms > 0
            and s.beta > 0
            and xfetch_due(delta_ms, s.beta, snap.pttl_ms)
        ):
            token = yield TryLease(key)
            if token is not None:
                m.early_refreshes.inc()
                return (yield from _load_and_fill(ctx, req, key, token))
        _remember(ctx, req, key, value, verified=read_at, ttl_ms=snap.pttl_ms)
        if s.sample_rate > 0 and random.random() < s.sample_rate:
            truth = yield Check()
            if truth is not None:
                ctx.checks.record(value, truth)
        return Outcome(value, key, stale=False, loaded=False)

    m.misses.inc()
    state.missed = True
    token = yield TryLease(key)
    if token is not None:
        if after_hung:
            m.lease_takeovers.inc()
        return (yield from _hold(ctx, req, key, token))

    # Someone else holds the lease (rule 3).
    stale = layout.stale_key(snap.epoch, snap.fields, snap.now_us) if req.eventual else None
    if stale is not None and stale[1] <= req.max_stale_us:
        raw = yield Get(stale[0])
        if raw is not None:
            m.stale_served.inc()
            m.stampede_prevented()
            return Outcome(decode(raw)[1], stale[0], stale=True, loaded=False)

    interval = s.poll
    deadline = started + s.wait_timeout
    while (remaining := deadline - time.monotonic()) > 0:
        yield Sleep(min(interval, remaining))
        interval = min(2 * interval, s.max_poll)
        raw, lease_pttl = yield Poll(key)
        if raw is not None:
            value = decode(raw)[1]
            m.stampede_prevented()
            if ctx.bounded is not None and req.eventual:
                ctx.bounded.put(BoundedL1.entry_id(layout), key, value, read_at)
            return Outcome(value, key, stale=False, loaded=False)
        if lease_pttl == -2:
            # The lease is gone without a value: its holder crashed, hung past
            # its lease, or failed. One SET NX: the winner loads (a takeover),
            # the others keep waiting for it.
            token = yield TryLease(key)
            if token is not None:
                m.lease_takeovers.inc()
                return (yield from _hold(ctx, req, key, token))

    # Rule 4: the wait is over. Never a load.
    if stale is not None:
        raw = yield Get(stale[0])
        if raw is not None:
            m.stale_served.inc()
            m.stampede_prevented()
            return Outcome(decode(raw)[1], stale[0], stale=True, loaded=False)
    m.stampede_prevented()
    raise LeaseTimeoutError(key, time.monotonic() - started)


def _hold(ctx: Context, req: Request, key: str, token: str) -> Flow:
    """The holder (rule 5): re-read, then load, fill, release."""
    raw = yield Get(key)
    if raw is not None:
        # Filled since this get's read: no load.
        yield Release(key, token)
        value = decode(raw)[1]
        if ctx.bounded is not None and req.eventual:
            ctx.bounded.put(BoundedL1.entry_id(req.layout), key, value, time.monotonic())
        return Outcome(value, key, stale=False, loaded=False)
    return (yield from _load_and_fill(ctx, req, key, token))


def _load_and_fill(ctx: Context, req: Request, key: str, token: str) -> Flow:
    m = ctx.metrics
    loaded_at = time.monotonic()
    try:
        value, took = yield Load()
    except (LoaderError, LoaderTimeoutError):
        m.fill_errors.inc()
        m.fill_latency.observe((time.monotonic() - loaded_at) * 1000)
        yield Release(key, token)
        raise
    m.fill_latency.observe(took * 1000)
    # The value first, then the lease: a waiter that sees the lease gone
    # finds the value and does not take over.
    yield Write(key, encode(int(took * 1000), value), req.ttl_ms)
    yield Release(key, token)
    m.fills.inc()
    _remember(ctx, req, key, value, verified=loaded_at, ttl_ms=req.ttl_ms)
    return Outcome(value, key, stale=False, loaded=True)


def _remember(
    ctx: Context, req: Request, key: str, value: bytes, *, verified: float, ttl_ms: int
) -> None:
    """Puts a value read or loaded under the current versions into the L1."""
    if ctx.bounded is not None and req.eventual:
        ctx.bounded.put(BoundedL1.entry_id(req.layout), key, value, verified)
    if ctx.exact is not None:
        expires = None if ttl_ms < 0 else verified + ttl_ms / 1000
        ctx.exact.put_value(key, value, req.layout.records, expires)


def lease_key_of(effect: TryLease | Release | Poll) -> str:
    return lease_key(effect.data_key)
