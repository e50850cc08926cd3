"""What the caches need to know about a redis-py client: that it returns
bytes, whether it is a Cluster, and how to open dedicated connections to its
nodes (for the notice subscription and the tracking connections)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from .errors import InvalidOptionsError

log = logging.getLogger("cdc_cache")

TRACKING_CHANNEL = b"__redis__:invalidate"


@dataclass(frozen=True)
class NodeSpec:
    """How to open one dedicated connection: the client's own connection
    class and settings (TLS, credentials...) for one node."""

    connection_class: Any
    kwargs: dict[str, Any]

    def open_kwargs(self) -> dict[str, Any]:
        # RESP2: invalidations then arrive as Pub/Sub messages of the
        # tracking channel on the subscribed connection itself (a RESP3
        # connection would get them as push frames redis-py hides).
        # No socket timeout: the listener bounds its own reads.
        kwargs = {**self.kwargs, "protocol": 2, "socket_timeout": None}
        for name in ("cache", "cache_config", "event_dispatcher", "maint_notifications_config"):
            kwargs.pop(name, None)
        return kwargs


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


def pubsub_message(reply: Any) -> tuple[bytes, Any] | None:
    """``(channel, payload)`` of a RESP2 Pub/Sub message; ``None`` for the
    other replies a subscribed connection sees (confirmations, pongs)."""
    if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
        channel = reply[1]
        if isinstance(channel, bytes):
            return channel, reply[2]
    return None


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
