"""The L1's subscription (readers/spec.md section 8), one background thread
per connection, for both caches: the daemon's notice channel for the bounded
L1, or Redis client tracking for the exact one.

Tracking uses broadcasting mode on the version prefix with the reports
redirected to the tracking connection itself, subscribed (RESP2) to
``__redis__:invalidate``: every change of a version record on a node is
reported, whoever read it. On a Cluster there is one tracking connection per
primary (found with CLUSTER NODES at every (re)connect).

The connections are redis-py's synchronous ones, in threads, for the asyncio
cache too: an exact L1 lookup first drains whatever reports already arrived
(``drain``), without waiting and without the event loop, so a get never
serves a value whose change Redis had already reported to this process."""

from __future__ import annotations

import contextlib
import inspect
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.connection

from ._clients import TRACKING_CHANNEL, log
from .errors import ProtocolError
from .options import L1, Settings, TrackingL1, seconds

__all__ = ["Listener", "NodeSpec"]

# What a dedicated connection keeps of the client's settings: where, who,
# and TLS. (Pools, retries, push handlers and the like stay the client's.)
_KEPT = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "client_name",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
    }
)


@dataclass(frozen=True)
class NodeSpec:
    """How to open one dedicated synchronous connection to a node."""

    connection_class: Any
    kwargs: dict[str, Any]

    @classmethod
    def like(cls, connection_class: Any, kwargs: dict[str, Any]) -> NodeSpec:
        """The synchronous twin of a client's connection class (asyncio or
        not) with the settings that matter for a dedicated connection."""
        name = getattr(connection_class, "__name__", "Connection")
        sync_class = getattr(redis.connection, name, None)
        if not (
            inspect.isclass(sync_class)
            and issubclass(sync_class, redis.connection.AbstractConnection)
        ):
            sync_class = redis.connection.Connection
        kept = {k: v for k, v in kwargs.items() if k in _KEPT or k.startswith("ssl_")}
        return cls(sync_class, kept)

    def at(self, host: str, port: int) -> NodeSpec:
        return NodeSpec(self.connection_class, {**self.kwargs, "host": host, "port": port})

    @property
    def address(self) -> tuple[str, int]:
        return str(self.kwargs.get("host")), int(self.kwargs.get("port", 6379))

    def open(self) -> Any:
        # RESP2: reports arrive as Pub/Sub messages on the subscribed
        # connection itself. No socket timeout: reads are bounded here.
        conn = self.connection_class(**self.kwargs, protocol=2, socket_timeout=None)
        conn.connect()
        return conn


@dataclass(frozen=True)
class Subscription:
    """What to subscribe to: the tracking reports of ``prefix``, or the
    daemon's notices on ``channel``."""

    channel: bytes
    tracking_prefix: str | None = None

    @classmethod
    def tracking(cls, prefix: str) -> Subscription:
        return cls(TRACKING_CHANNEL, prefix)

    @classmethod
    def notices(cls, channel: str) -> Subscription:
        return cls(channel.encode())


def cluster_primaries(seed: NodeSpec) -> list[tuple[str, int]]:
    """The primaries a node knows, from CLUSTER NODES."""
    conn = seed.open()
    try:
        conn.send_command("CLUSTER", "NODES")
        text = conn.read_response()
    finally:
        conn.disconnect()
    if isinstance(text, bytes):
        text = text.decode()
    primaries = []
    for line in str(text).splitlines():
        fields = line.split()
        if len(fields) < 8 or "master" not in fields[2].split(",") or "fail" in fields[2]:
            continue
        address = fields[1].split("@")[0]
        host, _, port = address.rpartition(":")
        if fields[7] == "connected" and port.isdigit():
            primaries.append((host or seed.address[0], int(port)))
    if not primaries:
        raise ProtocolError(f"CLUSTER NODES named no primary: {text!r}")
    return primaries


class _Followed:
    """One subscribed connection and the lock its reads take."""

    def __init__(self, conn: Any, address: tuple[str, int]) -> None:
        self.conn = conn
        self.address = address
        self.lock = threading.Lock()
        # When a reply was last read, by the listener or by a drain (a PING's
        # answer may be read by either).
        self.heard = time.monotonic()
        self.pinged = False

    def read_ready(self, handle: Callable[[Any], None]) -> None:
        """Handles every reply already received (the lock held)."""
        while self.conn.can_read(timeout=0):
            handle(self.conn.read_response())
            self.heard = time.monotonic()
            self.pinged = False


class Listener:
    """Keeps the subscription until closed. Whenever it (re)starts or drops,
    ``on_live``/``on_dark`` run (the caches clear their L1 then: messages sent
    while it was down are lost)."""

    def __init__(
        self,
        *,
        name: str,
        seed: NodeSpec,
        cluster: bool,
        subscription: Subscription,
        on_message: Callable[[bytes, Any], None],
        on_live: Callable[[], None],
        on_dark: Callable[[], None],
        health_interval: float,
        retry: float,
    ) -> None:
        self._seed = seed
        self._cluster = cluster
        self._subscription = subscription
        self._on_message = on_message
        self._on_live = on_live
        self._on_dark = on_dark
        self._health_interval = health_interval
        self._retry = retry
        self._closed = threading.Event()
        self._live = threading.Event()
        self._followed: list[_Followed] = []
        self._thread = threading.Thread(target=self._run, name=f"cdc-cache-{name}-l1", daemon=True)
        self._thread.start()

    @property
    def live(self) -> bool:
        return self._live.is_set()

    @property
    def addresses(self) -> frozenset[tuple[str, int]]:
        """The nodes followed now (empty while not live)."""
        if not self._live.is_set():
            return frozenset()
        return frozenset(f.address for f in self._followed)

    def wait_live(self, timeout: float) -> bool:
        return self._live.wait(timeout)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)

    def drain(self) -> bool:
        """Handles every message already received, without waiting; ``False``
        when the subscription is not live (or just failed)."""
        if not self._live.is_set():
            return False
        try:
            for followed in self._followed:
                with followed.lock:
                    followed.read_ready(self._handle)
        except Exception:
            # The listener thread sees the same failure and starts over.
            return False
        return self._live.is_set()

    # -- the thread --------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed.is_set():
            followed: list[_Followed] = []
            try:
                seeds = [self._seed.address]
                if self._cluster:
                    seeds = cluster_primaries(self._seed)
                for host, port in seeds:
                    conn = self._seed.at(host, port).open()
                    followed.append(_Followed(conn, (host, port)))
                    self._subscribe(conn)
                self._followed = followed
                self._on_live()
                self._live.set()
                self._follow_all(followed)
            except Exception as e:
                if not self._closed.is_set():
                    log.warning("l1 subscription lost, the L1 is cleared until it is back: %s", e)
            finally:
                self._live.clear()
                self._on_dark()
                for f in followed:
                    with f.lock, contextlib.suppress(Exception):
                        f.conn.disconnect()
            self._closed.wait(self._retry)

    def _subscribe(self, conn: Any) -> None:
        prefix = self._subscription.tracking_prefix
        if prefix is not None:
            conn.send_command("CLIENT", "ID")
            client_id = conn.read_response()
            conn.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", prefix
            )
            if conn.read_response() not in (b"OK", "OK"):
                raise ProtocolError("CLIENT TRACKING was refused")
        conn.send_command("SUBSCRIBE", self._subscription.channel)
        confirmation = conn.read_response()
        if not (isinstance(confirmation, list) and confirmation[:1] == [b"subscribe"]):
            raise ProtocolError(f"SUBSCRIBE replied {confirmation!r}")

    def _follow_all(self, followed: list[_Followed]) -> None:
        """One thread per connection until one fails or the listener closes."""
        stop = threading.Event()
        failures: list[BaseException] = []

        def follow(f: _Followed) -> None:
            try:
                self._follow(f, stop)
            except BaseException as e:
                failures.append(e)
            finally:
                stop.set()

        helpers = [
            threading.Thread(target=follow, args=(f,), name=f"{self._thread.name}-{i}", daemon=True)
            for i, f in enumerate(followed[1:], 1)
        ]
        for helper in helpers:
            helper.start()
        follow(followed[0])
        for helper in helpers:
            helper.join()
        if failures and not self._closed.is_set():
            raise failures[0]

    def _follow(self, f: _Followed, stop: threading.Event) -> None:
        """Reads as messages come. A connection silent for the health
        interval is pinged; silent for another, it is taken as dead. The wait
        for data is outside the lock, so ``drain`` never waits for it, and
        wakes only for data, the health interval, or at most every second
        (to see ``stop``)."""
        interval = self._health_interval
        while not stop.is_set() and not self._closed.is_set():
            with f.lock:
                f.read_ready(self._handle)
                silent = time.monotonic() - f.heard
                if silent >= interval:
                    if f.pinged:
                        raise ConnectionError("a subscribed connection did not answer a PING")
                    f.conn.send_command("PING")
                    f.heard, f.pinged, silent = time.monotonic(), True, 0.0
            _wait_readable(f.conn, min(1.0, max(0.01, interval - silent)))

    def _handle(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            channel = reply[1]
            if isinstance(channel, bytes):
                self._on_message(channel, reply[2])


def _wait_readable(conn: Any, timeout: float) -> None:
    """Waits until the connection's socket has data, at most ``timeout``."""
    sock = getattr(conn, "_sock", None)  # redis-py keeps its socket here
    if sock is None:
        time.sleep(timeout)
        return
    with contextlib.suppress(OSError, ValueError):
        select.select([sock], [], [], timeout)


def listener_for(
    settings: Settings,
    seed: NodeSpec,
    *,
    cluster: bool,
    on_message: Callable[[bytes, Any], None],
    on_live: Callable[[], None],
    on_dark: Callable[[], None],
) -> Listener | None:
    """The subscription a cache's L1 needs, started; ``None`` when it needs
    none (no L1, or a bounded L1 without a notice channel)."""
    l1 = settings.l1
    if isinstance(l1, TrackingL1):
        subscription = Subscription.tracking(settings.prefix)
        # Every primary reports its own records' changes.
        follow_cluster = cluster
        health = seconds("l1.health_interval", l1.health_interval)
    elif isinstance(l1, L1) and l1.channel is not None:
        subscription = Subscription.notices(l1.channel)
        # Any node relays a cluster's Pub/Sub messages: one suffices.
        follow_cluster = False
        health = 5.0
    else:
        return None
    return Listener(
        name=settings.name,
        seed=seed,
        cluster=follow_cluster,
        subscription=subscription,
        on_message=on_message,
        on_live=on_live,
        on_dark=on_dark,
        health_interval=health,
        retry=settings.notice_retry,
    )
