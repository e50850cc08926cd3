"""What the caches need to know about a redis-py client: that it returns
bytes, whether it is a Cluster, and how to open dedicated connections to its
nodes (for the notice subscription and the tracking connections)."""

from __future__ import annotations

import json
import logging
from typing import Any

from .errors import InvalidOptionsError

log = logging.getLogger("cdc_cache")

TRACKING_CHANNEL = b"__redis__:invalidate"


def refuse_decoding(kwargs: dict[str, Any]) -> None:
    if kwargs.get("decode_responses"):
        raise InvalidOptionsError(
            "the client decodes responses (decode_responses=True): a cache needs the "
            "values' bytes unchanged; pass a client made without decode_responses"
        )


def notice_record(payload: Any) -> tuple[str, int | None] | None:
    """A daemon notice's ``record_key`` and ``commit_time_us``; ``None`` for
    a message that is not one (ignored)."""
    try:
        notice = json.loads(payload)
        record = notice["record_key"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(record, str):
        return None
    commit = notice.get("commit_time_us")
    if isinstance(commit, int) and not isinstance(commit, bool) and commit > 0:
        return record, commit
    return record, None


def tracked_keys(payload: Any) -> list[str] | None:
    """The keys of a tracking invalidation; ``None``: the whole database was
    flushed."""
    if payload is None:
        return None
    if isinstance(payload, list):
        return [
            k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else str(k)
            for k in payload
        ]
    return [
        payload.decode("utf-8", "surrogateescape") if isinstance(payload, bytes) else str(payload)
    ]
