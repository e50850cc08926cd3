"""Records, data keys, lease keys and stale keys (readers/spec.md sections 2,
3 and 6). Pure functions: the conformance vectors in readers/vectors/ test
them without Redis. Versions are Python ints, exact at any size."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import BadVersionError, InvalidOptionsError

__all__ = ["Fields", "Layout", "lease_key", "parse_version"]

# Redis's own integer range (HINCRBY): at most 2^63-1.
MAX_VERSION = 2**63 - 1
# ASCII digits only (str.isdigit() would take other scripts' digits).
_CANONICAL = re.compile(rb"0|[1-9][0-9]{0,18}")


def parse_version(record: str, field: str, text: bytes | str | None) -> int | None:
    """A version field's value; ``None`` when the field is missing (the caller
    decides what that means: ``0`` for ``v`` and ``e``, none for ``pv``)."""
    if text is None:
        return None
    raw = text.encode() if isinstance(text, str) else text
    if _CANONICAL.fullmatch(raw) is None or int(raw) > MAX_VERSION:
        raise BadVersionError(record, field, raw.decode("utf-8", "replace"))
    return int(raw)


@dataclass(frozen=True)
class Fields:
    """One record's fields as read: ``v`` (missing = 0) and ``pv``."""

    v: int
    pv: int | None


def _reserved(name: str) -> bool:
    return name == "epoch" or name.startswith("ns:")


@dataclass(frozen=True)
class Layout:
    """What one get reads and names: the cache key, its deps and namespaces
    under a version prefix."""

    key: str
    #: The version records read, in order: the epoch, the deps, the namespaces.
    records: tuple[str, ...]
    #: How many of ``records[1:]`` are deps (the rest are namespaces).
    deps: int

    @classmethod
    def build(
        cls,
        prefix: str,
        key: str,
        deps: Sequence[str] | None = None,
        namespaces: Sequence[str] = (),
    ) -> Layout:
        def invalid(why: str) -> InvalidOptionsError:
            return InvalidOptionsError(f"key {key!r}: {why}")

        if not isinstance(key, str) or not key:
            raise invalid("the cache key must be a non-empty string")
        if _reserved(key):
            raise invalid("the cache key is reserved (the epoch and namespace records)")
        if isinstance(deps, str) or isinstance(namespaces, str):
            raise invalid("deps and namespaces are lists of names, not one string")
        if deps is not None and len(deps) == 0:
            raise invalid(
                "deps=[] is refused: a value that depends on no record is never "
                "invalidated (leave deps out to mean [key])"
            )
        own = tuple(deps) if deps is not None else (key,)
        for dep in own:
            if not isinstance(dep, str) or not dep:
                raise invalid(f"dependency {dep!r} must be a non-empty string")
            if _reserved(dep):
                raise invalid(f"dependency {dep!r} is reserved (the epoch and namespace records)")
        for namespace in namespaces:
            if not isinstance(namespace, str) or not namespace:
                raise invalid(f"namespace {namespace!r} must be a non-empty string")
        records = (
            f"{prefix}epoch",
            *(f"{prefix}{d}" for d in own),
            *(f"{prefix}ns:{n}" for n in namespaces),
        )
        return cls(key=key, records=records, deps=len(own))

    def data_key(self, epoch: int, versions: Sequence[int]) -> str:
        """``K@e<e>:v<..>...:n<..>...``; ``versions`` are the records after the epoch."""
        parts = [f"{self.key}@e{epoch}"]
        parts.extend(f":v{v}" if i < self.deps else f":n{v}" for i, v in enumerate(versions))
        return "".join(parts)

    def stale_key(
        self, epoch: int, fields: Sequence[Fields], now_us: int
    ) -> tuple[str, int] | None:
        """The previous version's data key and the age of the last bump in µs
        at ``now_us``, when there is one (spec section 6)."""
        if not fields:
            return None
        highest = max(f.v for f in fields)
        if highest == 0 or epoch >= highest:
            return None
        at_highest = [i for i, f in enumerate(fields) if f.v == highest]
        if len(at_highest) != 1:
            # Two records at the same version: which one moved last is
            # unknown, so no key can be named as "the one before".
            return None
        index = at_highest[0]
        previous = fields[index].pv
        if previous is None:
            return None
        versions = [previous if i == index else f.v for i, f in enumerate(fields)]
        return self.data_key(epoch, versions), max(0, now_us - highest)


def lease_key(data_key: str) -> str:
    return f"{data_key}:lease"
