"""The errors of a get (readers/spec.md section 11): one class per kind, each
with ``kind``, the word every library uses for it."""

from __future__ import annotations


class CacheError(Exception):
    """Base of every error this package raises; ``kind`` names the spec's kind."""

    kind: str = "cache"


class BadVersionError(CacheError):
    """A version field that is not a canonical integer (spec section 3)."""

    kind = "bad_version"

    def __init__(self, record: str, field: str, text: str) -> None:
        super().__init__(
            f"version record {record!r}: field {field!r} holds {text!r}, not a version "
            "(decimal digits, 0 to 2^63-1, no leading zero)"
        )
        self.record = record
        self.field = field
        self.text = text


class RedisError(CacheError):
    """A Redis error; nothing is served from a cache the library could not read."""

    kind = "redis"


class LoaderError(CacheError):
    """The loader's own error, passed through as ``__cause__``."""

    kind = "loader"


class LoaderTimeoutError(CacheError):
    """The loader ran longer than the cache's ``loader_timeout``."""

    kind = "loader_timeout"


class LeaseTimeoutError(CacheError):
    """A get waited ``wait_timeout`` for another's load and had nothing to serve."""

    kind = "lease_timeout"

    def __init__(self, data_key: str, waited: float) -> None:
        super().__init__(
            f"data key {data_key!r}: no value after waiting {waited * 1000:.0f} ms for the "
            "lease holder's load (retry the get to wait again)"
        )
        self.data_key = data_key
        self.waited = waited


class InvalidOptionsError(CacheError, ValueError):
    """A refused option (spec section 1), at the call or when a cache is built."""

    kind = "invalid_options"


class ProtocolError(CacheError):
    """A reply the library never expects: a different script under its SHA, a proxy."""

    kind = "protocol"


class KeyTemplateError(ValueError):
    """A key template that does not parse, or values that do not render it."""
