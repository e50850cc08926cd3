"""Every metric of the package (readers/spec.md section 10), the names of the
Rust crate and the Node package. Made once per prometheus_client registry (a
registry refuses a second metric of one name); caches share them through the
``cache`` label. No key ever becomes a label."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

__all__ = ["NAMES", "CacheMetrics"]

NAMES = {
    "hits": "cache_hits_total",
    "misses": "cache_misses_total",
    "fills": "cache_fills_total",
    "fill_errors": "cache_fill_errors_total",
    "fill_latency": "cache_fill_latency_ms",
    "stampede_prevented": "stampede_prevented_count",
    "stale_served": "cache_stale_served_total",
    "lease_takeovers": "cache_lease_takeovers_total",
    "early_refreshes": "cache_early_refreshes_total",
    "freshness_checks": "cache_freshness_checks_total",
    "freshness_mismatches": "cache_freshness_mismatches_total",
    "stale_ratio": "cache_stale_ratio",
    "l1_invalidations": "cache_l1_invalidations_total",
    "propagation": "invalidation_propagation_ms",
}

_MS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


class _PlainCounter:
    """A counter exposed under its exact name. prometheus_client appends
    ``_total`` to every ``Counter``; the design's ``stampede_prevented_count``
    keeps its name, as in the Rust and Node libraries."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        registry.register(self)

    def inc(self, cache: str, amount: float = 1) -> None:
        with self._lock:
            self._values[cache] = self._values.get(cache, 0) + amount

    def describe(self) -> list[Metric]:
        return [Metric(self._name, self._documentation, "counter")]

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self._name, self._documentation, "counter")
        with self._lock:
            values = dict(self._values)
        for cache, value in values.items():
            metric.add_sample(self._name, {"cache": cache}, value)
        yield metric


class _Family:
    """The metric objects of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(key: str, doc: str, labels: tuple[str, ...] = ("cache",)) -> Counter:
            return Counter(NAMES[key], doc, labels, registry=registry)

        def histogram(key: str, doc: str) -> Histogram:
            return Histogram(NAMES[key], doc, ("cache",), registry=registry, buckets=_MS_BUCKETS)

        self.hits = counter(
            "hits",
            "Gets whose first look found the value, by layer (l1, redis)",
            ("cache", "layer"),
        )
        self.misses = counter("misses", "Gets whose first read found no value")
        self.fills = counter("fills", "Values loaded and written by this process")
        self.fill_errors = counter(
            "fill_errors", "Loader failures and loader timeouts (the lease is released)"
        )
        self.fill_latency = histogram("fill_latency", "The loader's duration in milliseconds")
        self.stampede_prevented = _PlainCounter(
            NAMES["stampede_prevented"],
            "Gets that missed, did not take the lease and ended without calling their loader",
            registry,
        )
        self.stale_served = counter(
            "stale_served", "Previous versions' values served (stale-while-revalidate)"
        )
        self.lease_takeovers = counter(
            "lease_takeovers", "Leases taken over after their holder vanished"
        )
        self.early_refreshes = counter("early_refreshes", "XFetch refreshes before the TTL")
        self.freshness_checks = counter("freshness_checks", "Sampled hits compared with the loader")
        self.freshness_mismatches = counter(
            "freshness_mismatches", "Sampled hits that differed from the loader"
        )
        self.stale_ratio = Gauge(
            NAMES["stale_ratio"],
            "Share of mismatches among the last 100 freshness checks",
            ("cache",),
            registry=registry,
        )
        self.l1_invalidations = counter(
            "l1_invalidations",
            "L1 entries dropped, by reason (notice, tracking, reset)",
            ("cache", "reason"),
        )
        self.propagation = histogram(
            "propagation",
            "Source commit to the daemon's notice received by this process, in milliseconds",
        )


_families: weakref.WeakKeyDictionary[CollectorRegistry, _Family] = weakref.WeakKeyDictionary()
_families_lock = threading.Lock()


def _family(registry: CollectorRegistry) -> _Family:
    with _families_lock:
        family = _families.get(registry)
        if family is None:
            family = _families[registry] = _Family(registry)
        return family


class CacheMetrics:
    """One cache's series: every metric's children for its ``cache`` label."""

    def __init__(self, cache: str, registry: CollectorRegistry | None = None) -> None:
        f = _family(REGISTRY if registry is None else registry)
        self._cache = cache
        self._prevented = f.stampede_prevented
        self.hits_l1 = f.hits.labels(cache=cache, layer="l1")
        self.hits_redis = f.hits.labels(cache=cache, layer="redis")
        self.misses = f.misses.labels(cache=cache)
        self.fills = f.fills.labels(cache=cache)
        self.fill_errors = f.fill_errors.labels(cache=cache)
        self.fill_latency = f.fill_latency.labels(cache=cache)
        self.stale_served = f.stale_served.labels(cache=cache)
        self.lease_takeovers = f.lease_takeovers.labels(cache=cache)
        self.early_refreshes = f.early_refreshes.labels(cache=cache)
        self.freshness_checks = f.freshness_checks.labels(cache=cache)
        self.freshness_mismatches = f.freshness_mismatches.labels(cache=cache)
        self.stale_ratio = f.stale_ratio.labels(cache=cache)
        self.l1_notice = f.l1_invalidations.labels(cache=cache, reason="notice")
        self.l1_tracking = f.l1_invalidations.labels(cache=cache, reason="tracking")
        self.l1_reset = f.l1_invalidations.labels(cache=cache, reason="reset")
        self.propagation = f.propagation.labels(cache=cache)
        # Every series exists from the start (at 0), as dashboards expect.
        self._prevented.inc(cache, 0)

    def stampede_prevented(self, amount: int = 1) -> None:
        self._prevented.inc(self._cache, amount)
