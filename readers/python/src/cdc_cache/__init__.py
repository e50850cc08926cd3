"""cdc-cache: the reader half of cdc-invalidator's key protocol, for Python.
The specification every reader library follows is readers/spec.md; section
numbers in this package refer to it.

- ``Cache`` (threads, ``redis.Redis``) and ``AsyncCache`` (asyncio,
  ``redis.asyncio``): ``get(key, loader, ttl=...)``, leases, single flight,
  stale-while-revalidate, XFetch, the freshness check, the L1
- ``key``/``Template``: cache keys rendered exactly as the daemon renders them
- ``L1`` (bounded, spec section 8) and ``TrackingL1`` (exact, Redis client
  tracking): the in-process caches
- ``errors``: one class per error kind of spec section 11
- ``metrics``: every metric name (prometheus_client)

::

    import redis
    from cdc_cache import Cache

    cache = Cache(redis.Redis())
    got = cache.get("product:42", lambda: load_product(42), ttl=60)
    got.value, got.hit, got.data_key, got.stale
"""

from .aio import AsyncCache, AsyncLoader
from .errors import (
    BadVersionError,
    CacheError,
    InvalidOptionsError,
    KeyTemplateError,
    LeaseTimeoutError,
    LoaderError,
    LoaderTimeoutError,
    ProtocolError,
    RedisError,
)
from .keys import Float32, KeyValue, Template, escape, key, render_value
from .metrics import NAMES as METRIC_NAMES
from .naming import Fields, Layout, lease_key, parse_version
from .options import L1, Consistency, Duration, TrackingL1
from .result import CacheResult
from .sync import Cache, Loader

__all__ = [
    "L1",
    "METRIC_NAMES",
    "AsyncCache",
    "AsyncLoader",
    "BadVersionError",
    "Cache",
    "CacheError",
    "CacheResult",
    "Consistency",
    "Duration",
    "Fields",
    "Float32",
    "InvalidOptionsError",
    "KeyTemplateError",
    "KeyValue",
    "Layout",
    "LeaseTimeoutError",
    "Loader",
    "LoaderError",
    "LoaderTimeoutError",
    "ProtocolError",
    "RedisError",
    "Template",
    "TrackingL1",
    "escape",
    "key",
    "lease_key",
    "parse_version",
    "render_value",
]
