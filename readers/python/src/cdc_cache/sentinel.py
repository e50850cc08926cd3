"""Redis Sentinel (readers/spec.md section 14): the daemon's
``[redis.sentinel]`` settings, redis-py's own Sentinel clients for them, and
a watch of the Sentinels' ``+switch-master`` so a cache leaves the old
primary as soon as a failover is announced.

redis-py alone asks the Sentinels at every new connection and turns a
``READONLY`` answer into a reconnection, but keeps reading from a primary
that a failover replaced until Sentinel demotes it (several seconds, its
clients killed then): reads there miss every bump the daemon writes to the
new primary meanwhile. The watch closes the pool's connections at the
announcement instead."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from .errors import InvalidOptionsError

log = logging.getLogger("cdc_cache")

# How long one look at a Sentinel may take; a silent one is left for the next.
_SENTINEL_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class SentinelSettings:
    """The daemon's ``[redis.sentinel]``, same names and meaning. Its
    ``repr`` and ``str`` never show a password."""

    master_name: str
    """The name the Sentinels monitor (``sentinel monitor <name> ...``)."""
    addresses: Sequence[str]
    """The Sentinels, ``"host:port"`` each; three or more in production."""
    username: str | None = None
    """The primary's and replicas' ACL user and password."""
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    """The Sentinels' own."""
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False
    """TLS to the Sentinels and to the data nodes (certificates verified)."""
    db: int = 0
    """The database the version records live in."""

    def __post_init__(self) -> None:
        if not self.master_name:
            raise InvalidOptionsError("sentinel: master_name is empty")
        if isinstance(self.addresses, str) or not self.addresses:
            raise InvalidOptionsError('sentinel: addresses must be a non-empty list of "host:port"')
        self.endpoints()  # refuses a malformed address now
        if self.db < 0:
            raise InvalidOptionsError(f"sentinel: db {self.db} is negative")

    def __repr__(self) -> str:
        def hidden(password: str | None) -> str | None:
            return None if password is None else "<redacted>"

        return (
            f"SentinelSettings(master_name={self.master_name!r}, "
            f"addresses={list(self.addresses)!r}, username={self.username!r}, "
            f"password={hidden(self.password)!r}, "
            f"sentinel_username={self.sentinel_username!r}, "
            f"sentinel_password={hidden(self.sentinel_password)!r}, "
            f"tls={self.tls!r}, db={self.db!r})"
        )

    __str__ = __repr__

    def endpoints(self) -> list[tuple[str, int]]:
        out = []
        for address in self.addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidOptionsError(f'sentinel: address {address!r} is not "host:port"')
            out.append((host.strip("[]"), int(port)))
        return out

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection settings for the Sentinels themselves."""
        kwargs: dict[str, Any] = {"socket_timeout": _SENTINEL_TIMEOUT_S}
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        if self.tls:
            kwargs["ssl"] = True
        return kwargs

    def node_kwargs(self) -> dict[str, Any]:
        """Connection settings for the primary (and the L1's connections)."""
        kwargs: dict[str, Any] = {"db": self.db}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls:
            kwargs["ssl"] = True
        return kwargs

    def sentinel(self) -> redis.sentinel.Sentinel:
        return redis.sentinel.Sentinel(
            self.endpoints(), sentinel_kwargs=self.sentinel_kwargs(), **self.node_kwargs()
        )

    def client(self) -> redis.Redis:
        """A ``redis.Redis`` of the primary (never a replica: replicas lag,
        and a get's version check must see the newest version)."""
        client: redis.Redis = self.sentinel().master_for(self.master_name)
        return client

    def async_client(self) -> redis.asyncio.Redis:
        """The asyncio twin of ``client()``."""
        manager = redis.asyncio.sentinel.Sentinel(
            self.endpoints(), sentinel_kwargs=self.sentinel_kwargs(), **self.node_kwargs()
        )
        client: redis.asyncio.Redis = manager.master_for(self.master_name)
        return client

    def primary(self) -> tuple[str, int]:
        """The primary's address, as the Sentinels name it now."""
        host, port = self.sentinel().discover_master(self.master_name)
        return str(host), int(port)


class SwitchWatch:
    """A daemon thread subscribed to one Sentinel's ``+switch-master`` at a
    time (the next one when it fails); ``switched()`` is true once after an
    announcement for the master name, and ``on_switch`` (the L1's
    subscription moving) runs on this thread at the announcement."""

    def __init__(
        self, settings: SentinelSettings, on_switch: Callable[[], None] | None = None
    ) -> None:
        self._settings = settings
        self._on_switch = on_switch
        self._stop = threading.Event()
        self._flag = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"cdc-cache-sentinel-{settings.master_name}", daemon=True
        )
        self._thread.start()

    def switched(self) -> bool:
        if not self._flag.is_set():
            return False
        self._flag.clear()
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * _SENTINEL_TIMEOUT_S)

    def _run(self) -> None:
        endpoints = self._settings.endpoints()
        turn = 0
        while not self._stop.is_set():
            host, port = endpoints[turn % len(endpoints)]
            turn += 1
            try:
                self._listen(host, port)
            except Exception as e:  # any failure: the next Sentinel
                log.warning("sentinel %s:%d: +switch-master watch failed: %s", host, port, e)
                self._stop.wait(1.0)

    def _listen(self, host: str, port: int) -> None:
        conn = redis.Redis(
            host=host,
            port=port,
            socket_connect_timeout=_SENTINEL_TIMEOUT_S,
            # PINGs on the subscribed connection: a silent Sentinel fails it.
            health_check_interval=5,
            **self._settings.sentinel_kwargs(),
        )
        pubsub = conn.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe("+switch-master")
            name = self._settings.master_name.encode()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                data = message.get("data")
                if isinstance(data, bytes) and data.split(b" ", 1)[0] == name:
                    log.info("sentinel: %s switched primary: %s", host, data.decode())
                    self._flag.set()
                    if self._on_switch is not None:
                        self._on_switch()
        finally:
            pubsub.close()
            conn.close()
