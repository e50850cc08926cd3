"""Cache and get options (readers/spec.md section 1): one place that turns
what the caller passed into checked runtime values, refusing every option the
spec refuses with an ``invalid_options`` error that names it."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import InvalidOptionsError
from .naming import Layout

__all__ = ["L1", "Consistency", "Duration", "TrackingL1"]

#: Seconds (int or float) or a ``datetime.timedelta``.
Duration = float | int | dt.timedelta
Consistency = Literal["strong", "eventual"]

_CONSISTENCIES = ("strong", "eventual")


def seconds(name: str, value: Duration, *, zero: bool = False) -> float:
    """A duration in seconds; refused when negative, not finite, or zero
    unless ``zero``."""
    if isinstance(value, dt.timedelta):
        out = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out = float(value)
    else:
        raise InvalidOptionsError(f"{name} must be seconds or a timedelta, not {value!r}")
    if math.isnan(out) or math.isinf(out):
        raise InvalidOptionsError(f"{name} must be a finite duration, not {value!r}")
    if out < 0:
        raise InvalidOptionsError(f"{name} must be at least 0, not {value!r}")
    if out == 0 and not zero:
        raise InvalidOptionsError(f"{name} must be above zero, not {value!r}")
    return out


@dataclass(frozen=True)
class L1:
    """The bounded in-process cache of spec section 8, for ``eventual`` gets
    only: an entry is served while it was verified against Redis within
    ``min(max_stale, the get's max_stale)``, dropped early by the daemon's
    notices on ``channel`` (its ``[notices] redis_channel``), and the whole L1
    cleared whenever that subscription drops or restarts. Its hits are
    ``stale=True``: nothing guarantees they are current, only within the bound."""

    #: The longest an entry is served after it was last verified (seconds).
    max_stale: Duration = 1.0
    max_entries: int = 10_000
    #: The daemon's notice channel; ``None`` serves entries for the bound alone.
    channel: str | None = None


@dataclass(frozen=True)
class TrackingL1:
    """The exact in-process cache: version records and values held in
    process and dropped the moment Redis reports a change of a version record
    (Redis client-side caching in broadcasting mode on the version prefix,
    one tracking connection per primary). Used by ``strong`` and ``eventual``
    gets alike; its hits are ``stale=False``. The whole L1 is cleared when a
    tracking connection drops or reconnects, and is not used until tracking
    is back. A value is held at most until its Redis time to live ends."""

    #: Values held at most (the least recently used is evicted beyond); the
    #: version records held are bounded by the same number.
    max_entries: int = 10_000
    #: Bytes of values held at most.
    max_bytes: int = 64 * 1024 * 1024
    #: A tracking connection silent this long is pinged; silent for twice
    #: this long, it is taken as dead (the L1 is cleared, then reconnected).
    health_interval: Duration = 1.0


@dataclass(frozen=True)
class Settings:
    """A cache's checked options (spec section 1's table)."""

    name: str
    prefix: str
    lease: float
    poll: float
    max_poll: float
    wait_timeout: float
    loader_timeout: float | None
    beta: float
    sample_rate: float
    l1: L1 | TrackingL1 | None
    l1_max_stale: float
    notice_retry: float = 1.0

    @property
    def lease_ms(self) -> int:
        return max(1, round(self.lease * 1000))

    @classmethod
    def build(
        cls,
        *,
        name: str,
        prefix: str,
        lease: Duration,
        poll: Duration,
        max_poll: Duration,
        wait_timeout: Duration | None,
        loader_timeout: Duration | None,
        beta: float,
        sample_rate: float,
        l1: L1 | TrackingL1 | None,
    ) -> Settings:
        if not isinstance(name, str) or not name:
            raise InvalidOptionsError(f"name must be a non-empty string, not {name!r}")
        if not isinstance(prefix, str):
            raise InvalidOptionsError(f"prefix must be a string, not {prefix!r}")
        lease_s = seconds("lease", lease)
        poll_s = seconds("poll", poll)
        max_poll_s = seconds("max_poll", max_poll)
        if max_poll_s < poll_s:
            raise InvalidOptionsError(
                f"max_poll ({max_poll_s} s) must be at least poll ({poll_s} s)"
            )
        wait_s = 2 * lease_s if wait_timeout is None else seconds("wait_timeout", wait_timeout)
        loader_s = None if loader_timeout is None else seconds("loader_timeout", loader_timeout)
        if not isinstance(sample_rate, (int, float)) or not 0 <= sample_rate <= 1:
            raise InvalidOptionsError(f"sample_rate must be within 0 to 1, not {sample_rate!r}")
        if not isinstance(beta, (int, float)) or math.isnan(beta) or beta < 0:
            raise InvalidOptionsError(f"beta must be at least 0, not {beta!r}")
        l1_max_stale = 0.0
        if isinstance(l1, L1):
            l1_max_stale = seconds("l1.max_stale", l1.max_stale, zero=True)
            if l1.max_entries < 1:
                raise InvalidOptionsError(
                    f"l1.max_entries must be at least 1, not {l1.max_entries}"
                )
            if l1.channel is not None and not l1.channel:
                raise InvalidOptionsError("l1.channel must be a channel name or None, not ''")
        elif isinstance(l1, TrackingL1):
            if l1.max_entries < 1 or l1.max_bytes < 1:
                raise InvalidOptionsError(
                    f"l1.max_entries and l1.max_bytes must be at least 1, not "
                    f"{l1.max_entries} and {l1.max_bytes}"
                )
            seconds("l1.health_interval", l1.health_interval)
        elif l1 is not None:
            raise InvalidOptionsError(f"l1 must be an L1, a TrackingL1 or None, not {l1!r}")
        return cls(
            name=name,
            prefix=prefix,
            lease=lease_s,
            poll=poll_s,
            max_poll=max_poll_s,
            wait_timeout=wait_s,
            loader_timeout=loader_s,
            beta=float(beta),
            sample_rate=float(sample_rate),
            l1=l1,
            l1_max_stale=l1_max_stale,
        )


@dataclass(frozen=True)
class Request:
    """One get's checked options. Gets with equal ``flight`` in one cache
    share one flight (spec section 5, rule 2)."""

    layout: Layout
    ttl_ms: int
    eventual: bool
    max_stale_us: int

    @property
    def flight(self) -> tuple[object, ...]:
        return (self.layout, self.eventual, self.max_stale_us)

    @classmethod
    def build(
        cls,
        prefix: str,
        key: str,
        *,
        deps: Sequence[str] | None,
        namespaces: Sequence[str],
        ttl: Duration,
        consistency: str,
        max_stale: Duration | None,
    ) -> Request:
        layout = Layout.build(prefix, key, deps, namespaces)
        ttl_s = seconds("ttl", ttl)
        if consistency not in _CONSISTENCIES:
            raise InvalidOptionsError(
                f"consistency must be 'strong' or 'eventual', not {consistency!r}"
            )
        if consistency == "strong":
            if max_stale is not None:
                raise InvalidOptionsError(
                    "max_stale is for consistency='eventual'; a strong get serves no stale value"
                )
            return cls(layout, max(1, round(ttl_s * 1000)), False, 0)
        if max_stale is None:
            raise InvalidOptionsError("consistency='eventual' needs max_stale (seconds)")
        stale_s = seconds("max_stale", max_stale, zero=True)
        return cls(layout, max(1, round(ttl_s * 1000)), True, round(stale_s * 1_000_000))
