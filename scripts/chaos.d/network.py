"""Network faults, topology faults and their figures for scripts/chaos
(docs/reliability.md, "Network faults"). The mechanisms are in netfaults.py;
chaos.py's Faults class takes the fault methods from NetworkFaults.

Each fault here lasts a bounded time and records when it healed, so the
figures can be taken from the heal: how soon readiness turned 503, which
errors were counted, how soon every replica applied again, how soon the
lag was back under 100, the longest stall and whether any stall was silent
(no readiness change, no error counted), and the memory it took.
"""

import contextlib
import random
import time
from urllib.parse import urlsplit, urlunsplit

import redis
from confluent_kafka.admin import AdminClient
from netfaults import LoopbackFilter, Toxiproxy, toxiproxy_binary

# Fault kinds that need the proxies and the loopback filters.
NEEDS_NETWORK = {"redis-partition", "kafka-partition", "postgres-partition", "redis-latency", "redis-loss",
                 "redis-silent", "sentinel-failover-lagging"}
# How long each kind holds by default (low, high seconds; uniform), unless --hold.
HOLD = {
    "redis-partition": (30, 60),
    "kafka-partition": (30, 60),
    "postgres-partition": (30, 60),
    "redis-latency": (30, 30),
    "redis-loss": (30, 30),
    "redis-silent": (30, 30),
}
# Seconds left after a fault heals before the next one, to measure recovery.
SETTLE = 30
# A stretch this long without a bump applied, while the writer runs, is a stall.
STALL_S = 5.0
# The source address a lagging replica's replication link is moved to, so a
# filter can cut that link alone (all of 127/8 is loopback).
REPLICATION_SOURCE = "127.0.0.2"


def hold_bounds(kind, args):
    if args.hold:
        return args.hold, args.hold
    return HOLD.get(kind, (0, 0))


def planned_duration(faults, args):
    """Seconds of writing that leave every fault its hold and SETTLE."""
    first = 20
    per_fault = [hold_bounds(k, args)[1] + SETTLE + (10 if k not in HOLD else 0) for k in faults]
    return int(first + max(per_fault) * len(faults) + 15)


class NetworkSetup:
    """Toxiproxy in front of Redis (standalone only) and PostgreSQL, the
    loopback filter, and the addresses the daemons get: the proxies and
    the brokers' fault-suite listener."""

    def __init__(self, stack, args, out_dir, cache, log):
        self.stack = stack
        self.log = log
        self.filter = LoopbackFilter(log)
        base = args.admin_base
        self.toxiproxy = Toxiproxy(toxiproxy_binary(cache, log), base + 8, out_dir)
        self.redis_proxy_port = base + 11
        self.pg_proxy_port = base + 12
        if not stack.faults_brokers:
            raise RuntimeError("the stack exports no CDC_KAFKA_FAULTS_BROKERS (an older scripts/stack?): "
                               "restart it with scripts/stack down && scripts/stack up")
        self.kafka_ports = [int(a.rsplit(":", 1)[1]) for a in stack.faults_brokers.split(",")]

    def start(self):
        self.filter.prepare()
        self.toxiproxy.start()
        pg = urlsplit(self.stack.pg_url)
        self.toxiproxy.proxy("postgres", self.pg_proxy_port, f"{pg.hostname}:{pg.port}")
        if not self.stack.sentinels:
            self.toxiproxy.proxy("redis", self.redis_proxy_port, f"127.0.0.1:{self.stack.redis_port}")

    def daemon_addresses(self):
        pg = urlsplit(self.stack.pg_url)
        netloc = pg.netloc.rsplit("@", 1)
        via_proxy = urlunsplit(pg._replace(netloc=f"{netloc[0]}@127.0.0.1:{self.pg_proxy_port}"))
        out = {"CDC_KAFKA_BROKERS": self.stack.faults_brokers, "CDC_LOOKUP_URL": via_proxy,
               "CDC_DEAD_LETTERS_URL": via_proxy}
        if not self.stack.sentinels:
            out["CDC_REDIS_URL"] = f"redis://127.0.0.1:{self.redis_proxy_port}"
        return out

    def cleanup(self):
        with contextlib.suppress(Exception):
            self.filter.cleanup()
        with contextlib.suppress(Exception):
            self.toxiproxy.stop()


class NetworkFaults:
    """Fault methods (mixed into chaos.py's Faults, which provides stack,
    replicas, args and net). Each returns (injection time, detail, extra);
    extra holds healed_at and the mechanism."""

    def hold(self, kind):
        low, high = hold_bounds(kind, self.args)
        return random.uniform(low, high)

    def require_net(self, kind):
        if self.net is None:
            raise RuntimeError(f"{kind} needs the network setup")

    def partition(self, kind, ports, what):
        self.require_net(kind)
        hold = self.hold(kind)
        t = time.time()
        prefs = self.net.filter.drop(ports, what=what)
        try:
            time.sleep(hold)
        finally:
            self.net.filter.restore(prefs)
        healed = time.time()
        mech = f"tc clsact ingress on lo, classic BPF drop of every packet to and from port(s) {ports} ({what})"
        return t, f"{what} partitioned for {healed - t:.1f}s (silent: no reset)", {
            "healed_at": healed, "hold_s": round(healed - t, 1), "mechanism": mech}

    def f_redis_partition(self):
        if self.stack.sentinels:
            raise RuntimeError("redis-partition cuts the Redis proxy, which a Sentinel deployment bypasses")
        return self.partition("redis-partition", [self.net.redis_proxy_port], "Redis (through its proxy)")

    def f_kafka_partition(self):
        return self.partition("kafka-partition", self.net.kafka_ports, "every broker's fault-suite listener")

    def f_postgres_partition(self):
        return self.partition("postgres-partition", [self.net.pg_proxy_port], "PostgreSQL (through its proxy)")

    def f_redis_loss(self):
        self.require_net("redis-loss")
        if self.stack.sentinels:
            raise RuntimeError("redis-loss filters the Redis proxy, which a Sentinel deployment bypasses")
        hold = self.hold("redis-loss")
        loss = self.args.packet_loss if self.args.packet_loss else random.uniform(0.10, 0.30)
        t = time.time()
        prefs = self.net.filter.drop([self.net.redis_proxy_port], probability=loss, what="Redis proxy")
        try:
            time.sleep(hold)
        finally:
            self.net.filter.restore(prefs)
        healed = time.time()
        mech = (f"tc clsact ingress on lo, classic BPF drop of {loss:.0%} of the packets (random, per packet) "
                f"to and from port {self.net.redis_proxy_port}")
        return t, f"{loss:.0%} packet loss to and from Redis for {healed - t:.1f}s", {
            "healed_at": healed, "hold_s": round(healed - t, 1), "mechanism": mech, "loss": round(loss, 3)}

    def toxic(self, kind, toxic_type, stream, attributes, what):
        self.require_net(kind)
        if self.stack.sentinels:
            raise RuntimeError(f"{kind} goes through the Redis proxy, which a Sentinel deployment bypasses")
        hold = self.hold(kind)
        t = time.time()
        self.net.toxiproxy.add_toxic("redis", kind, toxic_type, stream, attributes)
        try:
            time.sleep(hold)
        finally:
            self.net.toxiproxy.remove_toxic("redis", kind)
        healed = time.time()
        mech = f"Toxiproxy {toxic_type} toxic on the {stream} stream of the Redis proxy {attributes}"
        return t, f"{what} for {healed - t:.1f}s", {"healed_at": healed, "hold_s": round(healed - t, 1),
                                                     "mechanism": mech}

    def f_redis_latency(self):
        latency = random.randint(200, 500)
        jitter = min(latency // 3, 150)
        return self.toxic("redis-latency", "latency", "downstream", {"latency": latency, "jitter": jitter},
                          f"Redis replies {latency}±{jitter} ms late")

    def f_redis_silent(self):
        # Replies from Redis vanish inside the proxy while both TCP
        # connections stay up (the kernel acknowledges every byte): a batch
        # the daemon sent is applied by Redis and never acknowledged to it.
        # Removing the toxic closes the connections it held (Toxiproxy).
        return self.toxic("redis-silent", "timeout", "downstream", {"timeout": 0},
                          "Redis connections silent (replies dropped, no close)")

    # -------------------------------------------------------------- topology faults

    def sentinel_client(self):
        host, port = self.stack.sentinels[0]
        return redis.Redis(host=host, port=port, socket_timeout=5, decode_responses=True)

    def failover(self):
        """SENTINEL FAILOVER; returns (old port, new port, seconds until the
        Sentinels named the new primary)."""
        old = self.stack.redis_primary_port()
        t = time.time()
        self.sentinel_client().execute_command("SENTINEL", "FAILOVER", self.stack.sentinel_master)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception):
                new = self.stack.redis_primary_port()
                if new != old:
                    return old, new, time.time() - t
            if time.monotonic() > deadline:
                raise TimeoutError("the Sentinels named no new primary within 60s of SENTINEL FAILOVER")
            time.sleep(0.2)

    def f_sentinel_failover(self):
        if not self.stack.sentinels:
            raise RuntimeError("sentinel-failover needs scripts/stack up --redis sentinel")
        t = time.time()
        old, new, took = self.failover()
        return t, f"SENTINEL FAILOVER under load: primary {old} -> {new} in {took:.1f}s", {
            "healed_at": t + took, "mechanism": "SENTINEL FAILOVER (a replica in sync is promoted)"}

    def f_sentinel_failover_lagging(self):
        """The replica's replication link is cut (silently) for --loss-window
        seconds, so it misses acknowledged bumps; then SENTINEL FAILOVER
        promotes it, and the old primary resyncs from it, losing them."""
        if not self.stack.sentinels:
            raise RuntimeError("sentinel-failover-lagging needs scripts/stack up --redis sentinel")
        self.require_net("sentinel-failover-lagging")
        primary = self.stack.redis_primary_port()
        replicas = self.sentinel_client().sentinel_slaves(self.stack.sentinel_master)
        ports = [int(r["port"]) for r in replicas]
        if not ports:
            raise RuntimeError("the Sentinels know no replica")
        replica = redis.Redis(host="127.0.0.1", port=ports[0], socket_timeout=5, decode_responses=True)
        replica.config_set("bind-source-addr", REPLICATION_SOURCE)
        replica.execute_command("CLIENT", "KILL", "TYPE", "master")  # reconnects from the new source
        time.sleep(1)
        t = time.time()
        prefs = self.net.filter.drop([primary], address=REPLICATION_SOURCE, what="replication link")
        try:
            time.sleep(self.args.loss_window)
            old, new, took = self.failover()
        finally:
            self.net.filter.restore(prefs)
            with contextlib.suppress(redis.RedisError):
                replica.config_set("bind-source-addr", "")
        return t, (f"replication to {ports[0]} cut for {self.args.loss_window}s, then SENTINEL FAILOVER: "
                   f"primary {old} -> {new} in {took:.1f}s"), {
            "healed_at": time.time(), "mechanism": "tc BPF drop of the replica's link (source "
            f"{REPLICATION_SOURCE}), then SENTINEL FAILOVER"}

    def f_kill9_leader(self):
        """kill -9 of the broker leading the most shop partitions, restarted 2-5 s later."""
        if self.stack.broker_count < 3:
            raise RuntimeError("kill9-leader needs scripts/stack up --brokers 3")
        admin = AdminClient({"bootstrap.servers": self.stack.brokers})
        md = admin.list_topics(timeout=10)
        leads = {}
        for name, topic in md.topics.items():
            if name.startswith(f"{self.stack.prefix}."):
                for p in topic.partitions.values():
                    leads[p.leader] = leads.get(p.leader, 0) + 1
        top = max(leads.values())
        node = random.choice(sorted(b for b, c in leads.items() if c == top))
        part = "kafka" if node == 1 else f"kafka-{node}"
        t = time.time()
        self.kill_part(part, 9)
        down = random.uniform(2, 5)
        time.sleep(down)
        self.stack.up("leader kill")
        return t, (f"broker {node} ({part}, leader of {top} shop partitions) SIGKILL, scripts/stack up after "
                   f"{down:.1f}s (back after {time.time() - t:.1f}s)"), {
            "healed_at": t, "mechanism": "SIGKILL of the partition leader; the other two elect new leaders"}


# ------------------------------------------------------------------ figures


def network_figures(faults, samples, replica_samples, lagged, t_end, recovery):
    """Adds the figures of every fault that records healed_at."""
    for i, f in enumerate(faults):
        if "healed_at" not in f:
            continue
        at, healed = f["at"], f["healed_at"]
        t1 = faults[i + 1]["at"] if i + 1 < len(faults) else t_end
        window = [(t, seen) for t, seen in replica_samples if at <= t < t1]
        during = [(t, seen) for t, seen in window if t <= healed + 1]
        # Readiness: the first 503 of any replica, and when each had been 503.
        first = {}
        for t, seen in during:
            for n, o in seen.items():
                if not o["ready"] and n not in first:
                    first[n] = round(t - at, 1)
        f["ready_503_first_s"] = min(first.values()) if first else None
        f["ready_503_by_replica_s"] = first
        f["ready_after_heal_s"] = recovery(samples, healed, t1, lambda s: not s[2])
        f["lag_ok_after_heal_s"] = recovery(lagged, healed, t1, lambda s: s[1] is None or s[1] >= 100)
        f["errors_counted"] = counter_delta(window, at, healed + 5, "errors")
        f["redis_errors_counted"] = counter_delta(window, at, healed + 5, "redis_errors")
        f["escalations"] = counter_delta(window, at, healed + 5, "escalations")
        f["applying_after_heal_s"] = applying_after(window, healed)
        stalls = [st for st in stalls_in(window, min(t1, t_end)) if waited(st, lagged)]
        f["longest_stall_s"] = max((s["seconds"] for s in stalls), default=0.0)
        f["silent_stalls"] = [s for s in stalls if s["silent"]]
        rss = [o["rss_kb"] for _, seen in window for o in seen.values() if o.get("rss_kb")]
        f["peak_rss_mb"] = round(max(rss) / 1024, 1) if rss else None


def metric(o, key):
    m = o.get("metrics")
    return None if m is None else m.get(key)


def counter_delta(window, t0, t1, key):
    """Sum over replicas of how much `key` grew within [t0, t1] (restarts, which
    reset counters, count from zero)."""
    total = 0.0
    last = {}
    for t, seen in window:
        if t > t1:
            break
        for n, o in seen.items():
            v = metric(o, key)
            if v is None:
                continue
            if n in last and t >= t0:
                total += v - last[n] if v >= last[n] else v
            last[n] = v
    return int(total)


def applying_after(window, healed):
    """Per replica, seconds from the heal until its applied counter first
    grew; the slowest replica's figure first (None if one never did)."""
    out = {}
    last = {}
    for t, seen in window:
        for n, o in seen.items():
            v = metric(o, "applied")
            if v is None:
                continue
            if t >= healed and n not in out and n in last and v > last[n]:
                out[n] = round(t - healed, 1)
            last[n] = v
    replicas = {n for _, seen in window for n in seen}
    slowest = None if not out or len(out) < len(replicas) else max(out.values())
    return {"slowest": slowest, "by_replica": out}


def stalls_in(window, t_stop):
    """Stretches of STALL_S or more in which a replica applied nothing while
    the writer ran; silent when its /readyz stayed 200 and it counted no
    error all along. network_figures keeps those during which records
    waited (`waited`)."""
    out = []
    state = {}  # replica -> (since, applied, errors, always ready)
    for t, seen in window:
        if t > t_stop:
            break
        for n, o in seen.items():
            applied, errors = metric(o, "applied"), metric(o, "errors")
            if applied is None:
                continue
            since = state.get(n)
            if since is None or applied != since[1]:
                if since is not None and t - since[0] >= STALL_S:
                    out.append(stall(n, since, t))
                state[n] = (t, applied, errors, o["ready"])
            else:
                state[n] = (since[0], since[1], since[2], since[3] and o["ready"] and errors == since[2])
    for n, since in state.items():
        if window and min(window[-1][0], t_stop) - since[0] >= STALL_S:
            out.append(stall(n, since, min(window[-1][0], t_stop)))
    return out


def waited(stall_, lagged):
    """Whether records waited during the stall (the group's committed lag
    reached 100): a stall with nothing to apply (Debezium stopped producing,
    as while a partition leader is elected) is not the daemon's."""
    t0, t1 = stall_["from"], stall_["from"] + stall_["seconds"]
    return any(lag is not None and lag >= 100 for t, lag, _ in lagged if t0 <= t <= t1)


def stall(n, since, t):
    return {"replica": n, "from": since[0], "seconds": round(t - since[0], 1), "silent": bool(since[3])}


def report_network(faults, fmt):
    rows = [f for f in faults if "healed_at" in f]
    if not rows:
        return
    print("network and topology faults (seconds; 'heal' is when the fault was lifted):")
    print(f"   {'kind':<26} {'held':>5} {'503 first':>9} {'errors':>6} {'applying':>9} {'ready':>6} "
          f"{'lag<100':>7} {'stall':>6} {'silent':>6} {'RSS MB':>6}")
    for f in rows:
        applying = f.get("applying_after_heal_s") or {}
        print(f"   {f['kind']:<26} {f.get('hold_s', 0):>5} {fmt(f.get('ready_503_first_s')):>9} "
              f"{f.get('errors_counted', 0):>6} {fmt(applying.get('slowest')):>9} "
              f"{fmt(f.get('ready_after_heal_s')):>6} {fmt(f.get('lag_ok_after_heal_s')):>7} "
              f"{f.get('longest_stall_s', 0):>6} {len(f.get('silent_stalls', [])):>6} {f.get('peak_rss_mb')!s:>6}")
        print(f"      {f['mechanism']}")
