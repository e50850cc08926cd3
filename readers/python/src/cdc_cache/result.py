"""What a get returns (readers/spec.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LoaderError

__all__ = ["CacheResult"]


@dataclass(frozen=True)
class CacheResult:
    #: The value's bytes, unchanged.
    value: bytes
    #: True when the value did not come from this get's own loader: from the
    #: L1, from Redis, or from another get's load.
    hit: bool
    #: The data key the value is keyed by: it names the versions the value
    #: belongs to (``product:42@e0:v1754312399000001``).
    data_key: str
    #: True when the value may be older than the current version: the
    #: previous version's value (stale-while-revalidate), or a hit of the
    #: bounded L1. False for a value read from Redis under the current
    #: versions, loaded in this get or its flight, or held by a TrackingL1.
    stale: bool

    @property
    def text(self) -> str:
        """The value decoded as UTF-8 (raises ``UnicodeDecodeError`` if it is not)."""
        return self.value.decode("utf-8")


def as_value(produced: object) -> bytes:
    """A loader's result as bytes: ``bytes``-like as they are, ``str`` as UTF-8."""
    if isinstance(produced, bytes):
        return produced
    if isinstance(produced, (bytearray, memoryview)):
        return bytes(produced)
    if isinstance(produced, str):
        return produced.encode("utf-8")
    raise LoaderError(f"loader returned a {type(produced).__name__}, not bytes or str")
