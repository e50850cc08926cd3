"""The fault suite behind scripts/chaos (see docs/reliability.md).

Three daemon replicas in one fresh consumer group, a writer committing shop
row changes at a steady rate, a reader caching rows under the key protocol,
faults spread over the run, then an oracle that reads the topics itself and
checks every (key, change) pair in Redis, and a check that no reachable data
key is stale. Everything is bounded in time and cleaned up on exit.
"""

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import tomllib
import traceback
import urllib.request
from typing import ClassVar

import psycopg
import redis
import redis.sentinel
from confluent_kafka import Consumer, TopicPartition
from network import NEEDS_NETWORK, NetworkFaults, NetworkSetup, network_figures, planned_duration, report_network

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(os.path.dirname(HERE))
STACK = os.path.join(PROJECT, "scripts", "stack")
CONFIG = os.path.join(PROJECT, "examples", "shop", "config.toml")
SCHEMA = os.path.join(PROJECT, "examples", "shop", "schema.sql")
# scripts/chaos builds it and names it (CHAOS_PROFILE picks release or debug).
BINARY = os.environ.get("CHAOS_BINARY") or os.path.join(PROJECT, "target", "release", "cdc-invalidator")

ALL_FAULTS = ["kill9", "term", "redis-snapshot", "kafka", "kill9", "connect", "postgres", "redis-failover", "kill9"]
SHORT_FAULTS = ["kill9", "redis-snapshot", "term"]
# Every network fault kind, in the order --network runs them (docs/reliability.md, "Network faults").
NETWORK_FAULTS = ["redis-partition", "kafka-partition", "postgres-partition", "redis-latency", "redis-loss",
                  "redis-silent"]
NETWORK_SHORT_FAULTS = ["redis-partition", "kafka-partition", "redis-silent"]
LAG_OK = 100
N_CATEGORIES = 20
N_SEED_PRODUCTS = 300
N_USERS = 50


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    # Ctrl-C reaches the wrapper too, which forwards a SIGTERM: the second
    # signal must not interrupt the cleanup the first one started.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(f"signal {signum}")


def wait_for(what, predicate, timeout, interval=0.5):
    """Polls predicate until it is true; raises after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except Interrupted:
            raise
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(interval)


# ------------------------------------------------------------------ the stack


class Stack:
    def __init__(self, out_dir):
        self.env = dict(os.environ)
        text = subprocess.run([STACK, "env"], check=True, capture_output=True, text=True, timeout=30).stdout
        for line in text.splitlines():
            m = re.match(r"export (\w+)=(.*)", line)
            if m:
                self.env[m.group(1)] = m.group(2)
        self.dir = os.environ.get("CDC_STACK_DIR", os.path.join(PROJECT, ".stack"))
        self.redis_port = int(self.env["CDC_REDIS_URL"].rsplit(":", 1)[1])
        self.pg_url = self.env["CDC_PG_URL"]
        self.brokers = self.env["CDC_KAFKA_BROKERS"]
        self.broker_count = len(self.brokers.split(","))
        # The brokers' fault-suite listener (scripts/stack): only the suite's daemons use it.
        self.faults_brokers = self.env.get("CDC_KAFKA_FAULTS_BROKERS")
        # With `scripts/stack up --redis sentinel`: the primary moves on a failover.
        self.sentinels = [tuple(a.rsplit(":", 1)) for a in self.env.get("CDC_REDIS_SENTINELS", "").split(",") if a]
        self.sentinels = [(h, int(p)) for h, p in self.sentinels]
        self.sentinel_master = self.env.get("CDC_REDIS_SENTINEL_MASTER")
        self.connect_url = self.env["CDC_CONNECT_URL"]
        self.prefix = self.env["CDC_TOPIC_PREFIX"]
        self.out_dir = out_dir

    def pid(self, part):
        try:
            with open(os.path.join(self.dir, "pids", f"{part}.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def up(self, why):
        """scripts/stack up starts what is down and waits for it (bounded by
        CDC_STACK_TIMEOUT per part); a connector task a fault failed is
        restarted through the REST API."""
        with open(os.path.join(self.out_dir, "stack.log"), "a") as logf:
            logf.write(f"--- stack up ({why}) at {time.time():.3f}\n")
            logf.flush()
            rc = subprocess.run([STACK, "up"], stdout=logf, stderr=logf, timeout=600).returncode
        if rc != 0:
            log(f"scripts/stack up exited {rc} ({why}); restarting failed connector tasks")
        self.ensure_connector(timeout=180)

    def status_ok(self):
        return subprocess.run([STACK, "status"], capture_output=True, timeout=60).returncode == 0

    def connector_status(self):
        with urllib.request.urlopen(f"{self.connect_url}/connectors/shop-postgres/status", timeout=5) as r:
            return json.load(r)

    def ensure_connector(self, timeout):
        deadline = time.monotonic() + timeout
        last_restart = 0.0
        while True:
            try:
                st = self.connector_status()
                states = [st["connector"]["state"]] + [t["state"] for t in st.get("tasks", [])]
                if st.get("tasks") and all(s == "RUNNING" for s in states):
                    return
                if "FAILED" in states and time.monotonic() - last_restart > 10:
                    log(f"connector states {states}: restarting failed parts")
                    req = urllib.request.Request(
                        f"{self.connect_url}/connectors/shop-postgres/restart?includeTasks=true&onlyFailed=true",
                        method="POST",
                    )
                    urllib.request.urlopen(req, timeout=10).close()
                    last_restart = time.monotonic()
            except Interrupted:
                raise
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"connector not RUNNING within {timeout}s")
            time.sleep(1)

    def redis_client(self, port=None):
        """A client of the stack's Redis, or of the server on `port`. Behind
        Sentinel, the primary the Sentinels name at each connection, so the
        suite's writer, reader and oracle follow a failover."""
        if port is None and self.sentinels:
            sentinel = redis.sentinel.Sentinel(self.sentinels, socket_timeout=2, socket_connect_timeout=2)
            return sentinel.master_for(self.sentinel_master, socket_timeout=2, socket_connect_timeout=2,
                                       decode_responses=True)
        return redis.Redis(
            host="127.0.0.1", port=port or self.redis_port, socket_timeout=2, socket_connect_timeout=2,
            decode_responses=True,
        )

    def redis_primary_port(self):
        """The port of the primary now (the Sentinels' answer, or the one server)."""
        if not self.sentinels:
            return self.redis_port
        for host, port in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                addr = redis.Redis(host=host, port=port, socket_timeout=2).sentinel_get_master_addr_by_name(
                    self.sentinel_master)
                if addr:
                    return int(addr[1])
        raise RuntimeError("no Sentinel names the primary")

    def pg_home(self):
        for home in (self.dir, None):
            if home and os.path.exists(os.path.join(home, "postgres", "PG_VERSION")):
                return os.path.join(home, "postgres")
        import hashlib

        digest = hashlib.md5(self.dir.encode()).hexdigest()[:12]
        return f"/var/tmp/cdc-invalidator-{digest}/postgres"


# ------------------------------------------------------------------ config model (read from config.toml)


class Model:
    """The shop config as the oracle and the reader need it: per table its
    templates, namespace, replica identity and fan-outs."""

    def __init__(self, path, prefix):
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
        self.version_prefix = cfg["redis"].get("version_prefix", "ver:")
        self.entities = {}
        for e in cfg["entity"]:
            schema, table = e["table"].split(".")
            fanouts = []
            for fo in e.get("fanout", []):
                m = re.fullmatch(
                    r"\s*SELECT\s+(\w+)\s+FROM\s+(\w+)\s+WHERE\s+(\w+)\s*=\s*\$1\s*", fo["query"], re.IGNORECASE
                )
                if not m or len(fo["bind"]) != 1:
                    raise SystemExit(f"the oracle cannot model the fan-out query {fo['query']!r}")
                fanouts.append(
                    {
                        "child_table": m.group(2),
                        "child_id": m.group(1),
                        "filter": m.group(3),
                        "bind": fo["bind"][0],
                        "keys": fo["keys"],
                        "namespace": fo.get("namespace"),
                    }
                )
            self.entities[f"{prefix}.{schema}.{table}"] = {
                "table": table,
                "keys": e["keys"],
                "namespace": e.get("namespace"),
                "full": e.get("replica_identity") == "full",
                "fanouts": fanouts,
            }
        self.topics = sorted(self.entities)
        # Every namespace whose bump covers keys of a template.
        self.template_ns = {}
        for ent in self.entities.values():
            for t in ent["keys"]:
                self.template_ns.setdefault(t, set()).add(ent["namespace"])
            for fo in ent["fanouts"]:
                for t in fo["keys"]:
                    self.template_ns.setdefault(t, set()).add(fo["namespace"])
        self.namespaces = sorted({n for s in self.template_ns.values() for n in s if n})


def escape_text(text):
    out = []
    for ch in text:
        if ch in "%:{}" or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("".join(f"%{b:02X}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out)


def render_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return escape_text(v)
    raise ValueError(f"no canonical form for {v!r}")


TEMPLATE_COL = re.compile(r"\{(\w+)\}")


def render(template, row):
    """The key of one image, or None when a column is NULL (no key)."""
    values = {}
    for col in TEMPLATE_COL.findall(template):
        if row.get(col) is None:
            return None
        values[col] = render_value(row[col])
    return TEMPLATE_COL.sub(lambda m: values[m.group(1)], template)


# ------------------------------------------------------------------ daemons


class Replicas:
    def __init__(self, stack, out_dir, group, args, config=CONFIG, addresses=None):
        self.stack = stack
        self.out_dir = out_dir
        self.group = group
        self.args = args
        self.config = config
        # The daemons' own addresses when they differ from the stack's
        # (network faults: the proxies and the brokers' fault listener).
        self.addresses = addresses or {}
        self.procs = {}
        self.expected_exit = set()
        self.unexpected = []
        self.hwm_kb = {}
        self.lock = threading.Lock()

    def port(self, n):
        return self.args.admin_base + n

    def start(self, n):
        env = dict(self.stack.env)
        env.update(
            CDC_KAFKA_BROKERS=self.stack.brokers,
            CDC_REDIS_URL=self.stack.env["CDC_REDIS_URL"],
            CDC_ADMIN_LISTEN=f"127.0.0.1:{self.port(n)}",
            CDC_LOOKUP_URL=self.stack.pg_url,
            CDC_DEAD_LETTERS_URL=self.stack.pg_url,
            CDC_KAFKA_GROUP=self.group,
            CDC_GROUP_PROTOCOL=self.args.protocol,
        )
        env.update(self.addresses)
        # Static membership with an id per replica (the example config's
        # "auto" would do the same here), or off with --dynamic.
        env["CDC_INSTANCE_ID"] = "" if self.args.dynamic else f"{self.group}-r{n}"
        # The replica's stdout and stderr for its whole life, not one block.
        logf = open(os.path.join(self.out_dir, f"daemon-{n}.log"), "a")  # noqa: SIM115
        proc = subprocess.Popen(
            [BINARY, "--log-format", "json", "run", "--config", self.config], env=env, stdout=logf, stderr=logf,
            stdin=subprocess.DEVNULL,
        )
        logf.close()
        with self.lock:
            self.procs[n] = proc
            self.expected_exit.discard(n)

    def kill(self, n, sig):
        with self.lock:
            proc = self.procs.get(n)
            self.expected_exit.add(n)
        if proc and proc.poll() is None:
            proc.send_signal(sig)
        return proc

    def watch(self):
        """Records peak RSS and exits the suite did not cause (and restarts them)."""
        with self.lock:
            items = list(self.procs.items())
        for n, proc in items:
            rc = proc.poll()
            if rc is None:
                try:
                    with open(f"/proc/{proc.pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                kb = int(line.split()[1])
                                self.hwm_kb[n] = max(self.hwm_kb.get(n, 0), kb)
                except OSError:
                    pass
            elif n not in self.expected_exit:
                tail = ""
                try:
                    with open(os.path.join(self.out_dir, f"daemon-{n}.log")) as f:
                        tail = "".join(f.readlines()[-5:])
                except OSError:
                    pass
                self.unexpected.append({"replica": n, "code": rc, "at": time.time(), "log_tail": tail})
                log(f"replica {n} exited with {rc} (not caused by the suite); restarting it")
                self.start(n)

    def ready(self, n):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port(n)}/readyz", timeout=1) as r:
                return r.status == 200
        except Exception:
            return False

    def observe(self):
        """Per live replica: readiness, the counters of METRIC_SUMS (each
        summed over its labels; None when /metrics did not answer) and RSS."""
        with self.lock:
            alive = {n: p for n, p in self.procs.items() if p.poll() is None}
        out = {}
        for n, proc in alive.items():
            sums = None
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port(n)}/metrics", timeout=1) as r:
                    sums = metric_sums(r.read().decode())
            except Exception:
                pass
            rss_kb = None
            with contextlib.suppress(OSError, ValueError, StopIteration), open(f"/proc/{proc.pid}/status") as f:
                rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            out[n] = {"ready": self.ready(n), "metrics": sums, "rss_kb": rss_kb}
        return out

    def all_ready(self):
        with self.lock:
            alive = [n for n, p in self.procs.items() if p.poll() is None]
        return len(alive) == self.args.replicas and all(self.ready(n) for n in alive)

    def stop_all(self):
        for n in list(self.procs):
            self.kill(n, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for n, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"replica {n} did not stop within 30s of SIGTERM; killing it")
                proc.kill()
                proc.wait(timeout=10)


# ------------------------------------------------------------------ lag and readiness sampling

# Counters each replica's /metrics is sampled for (every label summed):
# "applied" moves whenever a bump reaches Redis, "errors" whenever a
# dependency fails (any *_errors_total), so a stall with neither is silent.
METRIC_SUMS = {
    "applied": ("cdc_invalidator_targets_bumped_total", "cdc_invalidator_guard_noops_total"),
    "redis_errors": ("cdc_invalidator_redis_errors_total",),
    "escalations": ("cdc_invalidator_escalations_total",),
    "dead_letters": ("cdc_invalidator_dead_letters_total",),
}


def metric_sums(text):
    sums = {k: 0.0 for k in METRIC_SUMS}
    sums["errors"] = 0.0
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        for key, names in METRIC_SUMS.items():
            if name in names:
                sums[key] += value
        if name.endswith("_errors_total"):
            sums["errors"] += value
    return sums


class Monitor(threading.Thread):
    def __init__(self, stack, model, group, replicas):
        super().__init__(daemon=True)
        self.stack = stack
        self.model = model
        self.group = group
        self.replicas = replicas
        self.samples = []  # (time, total lag or None, all ready)
        self.replica_samples = []  # (time, {replica: Replicas.observe()'s entry})
        self.stop = threading.Event()
        self.partitions = None

    def consumer(self):
        return Consumer(
            {
                "bootstrap.servers": self.stack.brokers,
                "group.id": self.group,
                "enable.auto.commit": False,
                "socket.timeout.ms": 2000,
                "log_level": 0,
            }
        )

    def lag(self, c):
        if self.partitions is None:
            md = c.list_topics(timeout=3)
            self.partitions = [
                TopicPartition(t, p) for t in self.model.topics if t in md.topics for p in md.topics[t].partitions
            ]
        committed = c.committed(self.partitions, timeout=3)
        total = 0
        for tp in committed:
            lo, hi = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=3, cached=False)
            total += hi - (tp.offset if tp.offset >= 0 else lo)
        return total

    def run(self):
        c = self.consumer()
        while not self.stop.is_set():
            t = time.time()
            try:
                lag = self.lag(c)
            except Exception:
                lag = None
            seen = self.replicas.observe()
            ready = len(seen) == self.replicas.args.replicas and all(o["ready"] for o in seen.values())
            self.replicas.watch()
            self.samples.append((t, lag, ready))
            self.replica_samples.append((t, seen))
            self.stop.wait(max(0.0, 0.5 - (time.time() - t)))
        c.close()

    def last_lag(self):
        for _, lag, _ in reversed(self.samples):
            return lag
        return None


# ------------------------------------------------------------------ writer


class Limiter:
    def __init__(self, rate):
        self.rate = rate
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n):
        with self.lock:
            now = time.monotonic()
            self.next = max(self.next, now - 1.0) + n / self.rate
            wait = self.next - now
        if wait > 0:
            time.sleep(wait)


class Workers:
    """Threads running self.worker until finish()."""

    def __init__(self, n_threads):
        self.n_threads = n_threads
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = []

    def start(self):
        for _ in range(self.n_threads):
            t = threading.Thread(target=self.worker, daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


class Writer(Workers):
    def __init__(self, stack, rate, workers=4):
        super().__init__(workers)
        self.stack = stack
        self.limiter = Limiter(rate)
        self.changes = 0
        self.txns = 0
        self.errors = 0
        with psycopg.connect(stack.pg_url, autocommit=True, connect_timeout=5) as conn:
            self.next_product = max(conn.execute("SELECT coalesce(max(id), 0) FROM products").fetchone()[0], N_SEED_PRODUCTS) + 1
            self.next_review = conn.execute("SELECT coalesce(max(id), 0) FROM reviews").fetchone()[0] + 1
            self.live = set(r[0] for r in conn.execute("SELECT id FROM products").fetchall())
        self.live_list = sorted(self.live)
        self.first_review = self.next_review

    def new_id(self, kind):
        with self.lock:
            if kind == "product":
                self.next_product += 1
                return self.next_product - 1
            self.next_review += 1
            return self.next_review - 1

    def product(self):
        """A product that exists (as far as this writer knows), so most
        statements change a row and the rate holds."""
        with self.lock:
            while self.live_list:
                i = random.randrange(len(self.live_list))
                if self.live_list[i] in self.live:
                    return self.live_list[i]
                self.live_list[i] = self.live_list[-1]
                self.live_list.pop()
            return 1

    def created(self, ident):
        with self.lock:
            self.live.add(ident)
            self.live_list.append(ident)

    def deleted(self, ident):
        with self.lock:
            self.live.discard(ident)

    def plan(self):
        """One transaction: a list of (sql, params) and its row-change count."""
        r = random.random()
        pid = self.product()
        if r < 0.22:
            return [("UPDATE products SET price = %s, updated_at = now() WHERE id = %s",
                     (f"{random.randint(100, 99999) / 100:.2f}", pid))]
        if r < 0.37:
            return [("UPDATE products SET category_id = %s, updated_at = now() WHERE id = %s",
                     (random.randint(1, N_CATEGORIES), pid))]
        if r < 0.47:
            ids = sorted({self.product() for _ in range(random.randint(2, 4))})
            return [("UPDATE products SET description = %s, updated_at = now() WHERE id = %s",
                     (f"d{random.randint(0, 10**6)}", i)) for i in ids]
        if r < 0.62:
            return [("INSERT INTO reviews (id, product_id, user_id, rating, body) SELECT %s, id, %s, %s, 'ok' FROM products WHERE id = %s",
                     (self.new_id("review"), random.randint(1, N_USERS), random.randint(1, 5), pid))]
        if r < 0.70:
            return [("UPDATE reviews SET rating = %s WHERE id = %s", (random.randint(1, 5), self.review()))]
        if r < 0.77:
            return [("DELETE FROM reviews WHERE id = %s", (self.review(),))]
        if r < 0.84:
            new = self.new_id("product")
            stmts = [("INSERT INTO products (id, category_id, sku, name, price) VALUES (%s, %s, %s, %s, %s)",
                      (new, random.randint(1, N_CATEGORIES), f"sku-{new}", f"product {new}", "9.99"))]
            for _ in range(random.randint(1, 2)):
                stmts.append(("INSERT INTO reviews (id, product_id, user_id, rating, body) VALUES (%s, %s, %s, %s, 'new')",
                              (self.new_id("review"), new, random.randint(1, N_USERS), random.randint(1, 5))))
            return stmts
        if r < 0.90:
            return [("DELETE FROM reviews WHERE product_id = %s", (pid,)), ("DELETE FROM products WHERE id = %s", (pid,))]
        if r < 0.96:
            return [("UPDATE categories SET name = %s WHERE id = %s",
                     (f"category {random.randint(0, 10**6)}", random.randint(1, N_CATEGORIES)))]
        cid = random.randint(5, N_CATEGORIES)
        return [("UPDATE categories SET parent_id = %s WHERE id = %s", (random.randint(1, 4), cid))]

    def review(self):
        return random.randint(max(1, self.first_review - 200), max(1, self.next_review - 1))

    def worker(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.stack.pg_url, connect_timeout=3)
                    conn.execute("SET lock_timeout = '2s'")
                    conn.commit()
                stmts = self.plan()
                self.limiter.take(len(stmts))
                rows = 0
                with conn.transaction():
                    for i, (sql, params) in enumerate(stmts):
                        rows += conn.execute(sql, params).rowcount
                        if i == 0 and random.random() < 0.3:
                            time.sleep(random.uniform(0.02, 0.15))  # overlap with other transactions
                for sql, params in stmts:
                    if sql.startswith("INSERT INTO products"):
                        self.created(params[0])
                    elif sql.startswith("DELETE FROM products"):
                        self.deleted(params[0])
                with self.lock:
                    self.changes += max(rows, 0)
                    self.txns += 1
            except psycopg.Error:
                with self.lock:
                    self.errors += 1
                if conn is not None and (conn.closed or conn.broken):
                    conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()



# ------------------------------------------------------------------ reader


def load_value(conn, kind, ident):
    """The value a reader caches for a key, straight from PostgreSQL."""
    q = {
        "product:{id}": "SELECT row_to_json(x)::text FROM (SELECT p.id, p.category_id, p.sku, p.name, p.price::text AS price,"
        " p.description, p.updated_at::text AS updated_at, c.name AS category_name FROM products p JOIN categories c"
        " ON c.id = p.category_id WHERE p.id = %s) x",
        "product-sku:{sku}": "SELECT row_to_json(x)::text FROM (SELECT id, name, price::text AS price FROM products WHERE sku = %s) x",
        "category:{category_id}:products": "SELECT array_agg(id ORDER BY id)::text FROM products WHERE category_id = %s",
        "category:{id}": "SELECT row_to_json(x)::text FROM (SELECT id, name, parent_id FROM categories WHERE id = %s) x",
        "category:{parent_id}:children": "SELECT array_agg(id ORDER BY id)::text FROM categories WHERE parent_id = %s",
        "review:{id}": "SELECT row_to_json(x)::text FROM (SELECT id, product_id, user_id, rating, body FROM reviews WHERE id = %s) x",
        "product:{product_id}:reviews": "SELECT array_agg(id::text || '=' || rating ORDER BY id)::text FROM reviews WHERE product_id = %s",
        "user:{user_id}:reviews": "SELECT array_agg(id ORDER BY id)::text FROM reviews WHERE user_id = %s",
    }[kind]
    row = conn.execute(q, (ident,)).fetchone()
    return json.dumps(row[0] if row else None)


class Reader(Workers):
    """Cache-aside under the key protocol: read the epoch, the namespace
    versions and the key's version (one round trip), then the row, then fill
    K@e<E>:n<N...>:v<V> with a TTL within the entity's max_cache_ttl."""

    KINDS: ClassVar[dict[str, int]] = {
        "product:{id}": 600,
        "product-sku:{sku}": 600,
        "category:{category_id}:products": 600,
        "category:{id}": 1800,
        "category:{parent_id}:children": 1800,
        "review:{id}": 300,
        "product:{product_id}:reviews": 300,
        "user:{user_id}:reviews": 300,
    }

    def __init__(self, stack, model, writer, rate=40, threads=2):
        super().__init__(threads)
        self.stack = stack
        self.model = model
        self.writer = writer
        self.rate = rate
        self.keys = {}  # key -> (kind, ident)
        self.fills = 0
        self.errors = 0

    def pick(self):
        kind = random.choice(list(self.KINDS))
        if kind in ("product:{id}", "product:{product_id}:reviews"):
            ident = self.writer.product()
        elif kind == "product-sku:{sku}":
            ident = f"sku-{self.writer.product()}"
        elif kind in ("category:{category_id}:products", "category:{id}", "category:{parent_id}:children"):
            ident = random.randint(1, N_CATEGORIES)
        elif kind == "review:{id}":
            ident = self.writer.review()
        else:
            ident = random.randint(1, N_USERS)
        key = TEMPLATE_COL.sub(lambda _m: render_value(ident), kind)
        return kind, ident, key

    def versions(self, r, kind, key):
        ns = sorted(self.model.template_ns[kind])
        p = self.model.version_prefix
        pipe = r.pipeline(transaction=False)
        pipe.hget(f"{p}epoch", "e")
        for n in ns:
            pipe.hget(f"{p}ns:{n}", "v")
        pipe.hget(f"{p}{key}", "v")
        got = [v or "0" for v in pipe.execute()]
        return f"{key}@e{got[0]}:" + "".join(f"n{v}:" for v in got[1:-1]) + f"v{got[-1]}"

    def worker(self):
        r = self.stack.redis_client()
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(self.stack.pg_url, autocommit=True, connect_timeout=3)
                kind, ident, key = self.pick()
                data_key = self.versions(r, kind, key)
                value = load_value(conn, kind, ident)
                r.set(data_key, value, ex=self.KINDS[kind])
                with self.lock:
                    self.keys[key] = (kind, ident)
                    self.fills += 1
            except (redis.RedisError, psycopg.Error, OSError):
                with self.lock:
                    self.errors += 1
                time.sleep(0.2)
            time.sleep(self.n_threads / self.rate)
        if conn is not None:
            conn.close()

    def stale_keys(self):
        """Reachable data keys whose value differs from PostgreSQL now."""
        r = self.stack.redis_client()
        stale = []
        checked = 0
        with psycopg.connect(self.stack.pg_url, autocommit=True, connect_timeout=5) as conn:
            for key, (kind, ident) in sorted(self.keys.items()):
                data_key = self.versions(r, kind, key)
                cached = r.get(data_key)
                if cached is None:
                    continue
                checked += 1
                now = load_value(conn, kind, ident)
                if cached != now:
                    stale.append({"data_key": data_key, "cached": cached, "postgres": now})
        return checked, stale


# ------------------------------------------------------------------ faults


class Faults(NetworkFaults):
    def __init__(self, stack, replicas, args, out_dir, net=None):
        self.stack = stack
        self.replicas = replicas
        self.args = args
        self.out_dir = out_dir
        self.net = net  # NetworkSetup, for the network faults
        self.replica_redis = None  # (port, pidfile, dir)

    def run(self, kind):
        """Injects one fault; returns (injection time, detail, extra figures:
        the network faults' heal time and mechanism)."""
        got = getattr(self, "f_" + kind.replace("-", "_"))()
        return got if len(got) == 3 else (*got, {})

    def f_kill9(self):
        n = random.randint(1, self.args.replicas)
        t = time.time()
        proc = self.replicas.kill(n, signal.SIGKILL)
        proc.wait(timeout=10)
        down = random.uniform(1, 5)
        time.sleep(down)
        self.replicas.start(n)
        return t, f"replica {n} SIGKILL, restarted after {down:.1f}s"

    def f_term(self):
        n = random.randint(1, self.args.replicas)
        t = time.time()
        proc = self.replicas.kill(n, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
            how = f"exited {proc.returncode} after {time.time() - t:.1f}s"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            how = "did not exit within 40s of SIGTERM: killed"
        self.replicas.start(n)
        return t, f"replica {n} SIGTERM ({how}), restarted at once"

    def kill_part(self, part, sig):
        pid = self.stack.pid(part)
        if pid is None:
            raise RuntimeError(f"no pid file for {part}")
        os.kill(pid, sig)
        wait_for(f"{part} (pid {pid}) to exit", lambda: not os.path.exists(f"/proc/{pid}"), 60)

    def f_kafka(self):
        t = time.time()
        self.kill_part("kafka", signal.SIGKILL)
        down = random.uniform(2, 5)
        time.sleep(down)
        self.stack.up("kafka fault")
        return t, f"broker SIGKILL, scripts/stack up after {down:.1f}s (back after {time.time() - t:.1f}s)"

    def f_connect(self):
        t = time.time()
        self.kill_part("connect", signal.SIGTERM)
        self.stack.up("connect fault")
        return t, f"Kafka Connect SIGTERM and scripts/stack up (connector RUNNING after {time.time() - t:.1f}s)"

    def f_postgres(self):
        data = self.stack.pg_home()
        bins = sorted(d for d in os.listdir("/usr/lib/postgresql") if os.path.isdir(f"/usr/lib/postgresql/{d}/bin"))
        pg_ctl = f"/usr/lib/postgresql/{bins[-1]}/bin/pg_ctl"
        t = time.time()
        subprocess.run(["runuser", "-u", "postgres", "--", pg_ctl, "-D", data, "-m", "fast", "-w", "-t", "60", "stop"],
                       check=True, capture_output=True, timeout=90)
        time.sleep(2)
        self.stack.up("postgres fault")
        return t, f"pg_ctl stop -m fast, scripts/stack up (back after {time.time() - t:.1f}s)"

    def restart_redis_with(self, rdb_source):
        """kill -9 the stack's Redis, then start it with rdb_source as its
        dump.rdb (scripts/stack up; Redis loads the file at start)."""
        rdb = os.path.join(self.stack.dir, "redis", "dump.rdb")
        t = time.time()
        self.kill_part("redis", signal.SIGKILL)
        if rdb_source != rdb:
            shutil.copyfile(rdb_source, rdb)
        self.stack.up("redis fault")
        loaded = self.stack.redis_client().info("persistence").get("rdb_last_load_keys_loaded", "?")
        os.remove(rdb)  # the stack runs without persistence: later restarts start clean again
        return t, loaded

    def f_redis_snapshot(self):
        r = self.stack.redis_client()
        r.save()
        epoch_before = r.hget("ver:epoch", "e")
        time.sleep(self.args.loss_window)
        t, loaded = self.restart_redis_with(os.path.join(self.stack.dir, "redis", "dump.rdb"))
        return t, f"SAVE, {self.args.loss_window}s of bumps, SIGKILL, restart loading the snapshot ({loaded} keys; epoch was {epoch_before})"

    def f_redis_failover(self):
        port = self.stack.redis_port + 11
        rdir = os.path.join(self.out_dir, "replica-redis")
        os.makedirs(rdir, exist_ok=True)
        pidfile = os.path.join(rdir, "redis.pid")
        subprocess.run(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--daemonize", "yes",
                        "--pidfile", pidfile, "--logfile", os.path.join(rdir, "redis.log"), "--dir", rdir,
                        "--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(self.stack.redis_port)],
                       check=True, timeout=20)
        self.replica_redis = (port, pidfile)
        rep = self.stack.redis_client(port)
        wait_for("the replica to sync", lambda: rep.info("replication").get("master_link_status") == "up", 60)
        time.sleep(2)
        rep.execute_command("REPLICAOF", "NO", "ONE")  # detached: from here on it lags
        time.sleep(self.args.loss_window)
        rep.save()
        rep.shutdown(nosave=True)
        wait_for("the replica to stop", lambda: not os.path.exists(pidfile), 20)
        self.replica_redis = None
        t, loaded = self.restart_redis_with(os.path.join(rdir, "dump.rdb"))
        return t, (f"replica detached {self.args.loss_window}s before the fault, primary SIGKILL, "
                   f"Redis restarted on the primary's address with the replica's data ({loaded} keys)")

    def f_sabotage(self):
        """Not a fault of the stack but of the suite's own check: deletes the
        version records of every product changed in the last minute, behind
        the daemon's back (a user's DEL, which the daemon does not detect,
        docs/redis-loss.md). Products not changed again before the run ends
        then have lost pairs: a run with it must exit 1."""
        with psycopg.connect(self.stack.pg_url, autocommit=True, connect_timeout=5) as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM products WHERE updated_at > now() - interval '60 seconds'").fetchall()]
        keys = [f"ver:product:{i}" for i in ids] + [f"ver:product-sku:sku-{i}" for i in ids]
        t = time.time()
        if keys:
            self.stack.redis_client().delete(*keys)
        return t, f"deleted the version records of {len(ids)} recently changed products behind the daemon's back"

    def cleanup(self):
        if self.replica_redis:
            port, _pidfile = self.replica_redis
            with contextlib.suppress(Exception):
                self.stack.redis_client(port).shutdown(nosave=True)
        rdb = os.path.join(self.stack.dir, "redis", "dump.rdb")
        if os.path.exists(rdb) and self.stack.pid("redis") and os.path.exists(f"/proc/{self.stack.pid('redis')}"):
            os.remove(rdb)


# ------------------------------------------------------------------ oracle


def pg_position(source):
    seq = source.get("sequence")
    last, lsn = 0, source.get("lsn")
    if seq:
        pair = json.loads(seq)
        last = int(pair[0]) if pair[0] is not None else 0
        lsn = int(pair[1]) if pair[1] is not None else lsn
    return f"{last:020d}{int(lsn):020d}"


def read_changes(stack, model, start, timeout):
    """Every change record on the shop topics from the run's start offsets to
    their current end, decoded by the oracle itself."""
    c = Consumer({"bootstrap.servers": stack.brokers, "group.id": "chaos-oracle", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "log_level": 0})
    end = {}
    assign = []
    for (topic, part), off in start.items():
        _lo, hi = c.get_watermark_offsets(TopicPartition(topic, part), timeout=10, cached=False)
        end[(topic, part)] = hi
        if hi > off:
            assign.append(TopicPartition(topic, part, off))
    c.assign(assign)
    pending = {(tp.topic, tp.partition) for tp in assign}
    records = []
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"oracle: topics not read to their end within {timeout}s: {pending}")
        msgs = c.consume(1000, timeout=1)
        for m in msgs:
            if m.error():
                continue
            tp = (m.topic(), m.partition())
            if m.offset() >= end[tp]:
                pending.discard(tp)
                continue
            if m.offset() == end[tp] - 1:
                pending.discard(tp)
            if m.value() is None:
                continue  # tombstone
            value = json.loads(m.value())
            payload = value.get("payload", value) if isinstance(value, dict) and "schema" in value else value
            key = json.loads(m.key()) if m.key() else {}
            key = key.get("payload", key) if isinstance(key, dict) and "schema" in key else key
            if not payload or payload.get("op") not in ("c", "u", "d"):
                continue
            src = payload["source"]
            records.append({
                "topic": m.topic(), "partition": m.partition(), "offset": m.offset(), "op": payload["op"],
                "before": payload.get("before"), "after": payload.get("after"), "key_cols": set(key or {}),
                "source": f"pg:{src['name']}", "pos": pg_position(src),
                "ts_us": int(src.get("ts_us") or src["ts_ms"] * 1000),
            })
    c.close()
    records.sort(key=lambda r: r["pos"])
    return records


def expected_targets(model, records, membership):
    """(record, key or ns:<name>, namespaces that also cover it) for every
    change, rendered from the before and after images as the config declares,
    with fan-outs resolved against the child table as of the change."""
    out = []
    for rec in records:
        first = len(out)
        ent = model.entities[rec["topic"]]
        ns = {ent["namespace"]} if ent["namespace"] else set()
        images = []
        if rec["after"] is not None:
            images.append(("after", rec["after"]))
        if rec["op"] in ("u", "d"):
            images.append(("before", rec["before"]))
        for template in ent["keys"]:
            cols = set(TEMPLATE_COL.findall(template))
            for which, row in images:
                if which == "before" and not ent["full"]:
                    if cols <= rec["key_cols"]:
                        row = rec["after"] if row is None else row
                    else:
                        # The old non-key value cannot be known: the daemon
                        # must escalate to the namespace.
                        out.append((rec, f"ns:{ent['namespace']}", set()))
                        continue
                if row is None:
                    out.append((rec, f"ns:{ent['namespace']}", set()))
                    continue
                k = render(template, row)
                if k is not None:
                    out.append((rec, k, ns))
        for fo in ent["fanouts"]:
            child_ns = {fo["namespace"]} if fo["namespace"] else set()
            binds = {row.get(fo["bind"]) for _, row in images if row}
            for child_id, parent in membership.get(fo["child_table"], {}).items():
                if parent in binds:
                    for template in fo["keys"]:
                        k = render(template, {fo["child_id"]: child_id})
                        if k is not None:
                            out.append((rec, k, child_ns))
        # One pair per (change, key): both images often name the same key.
        merged = {}
        for _rec, key, covering in out[first:]:
            merged.setdefault(key, set()).update(covering)
        out[first:] = [(rec, key, covering) for key, covering in merged.items()]
        # Advance the child-table state past this record (membership as of the change).
        if ent["table"] in membership:
            for fo_ent in model.entities.values():
                for fo in fo_ent["fanouts"]:
                    if fo["child_table"] == ent["table"]:
                        state = membership[ent["table"]]
                        ident = (rec["after"] or rec["before"] or {}).get(fo["child_id"])
                        if rec["op"] == "d":
                            state.pop(ident, None)
                        else:
                            state[ident] = rec["after"].get(fo["filter"])
    return out


def check_pairs(stack, model, targets):
    r = stack.redis_client()
    p = model.version_prefix
    epoch = int(r.hget(f"{p}epoch", "e") or 0)
    ns_guard = {}
    for n in model.namespaces:
        rec = r.hgetall(f"{p}ns:{n}")
        ns_guard[n] = (rec.get("p:pg:shop", ""), int(rec.get("p:loss", "0") or 0))
    lost = []
    how = {"key": 0, "namespace": 0, "epoch": 0}
    for i in range(0, len(targets), 2000):
        chunk = targets[i:i + 2000]
        pipe = r.pipeline(transaction=False)
        for rec, key, _ in chunk:
            pipe.hget(f"{p}{key}", f"p:{rec['source']}")
        guards = pipe.execute()
        for (rec, key, covering), guard in zip(chunk, guards, strict=True):
            if guard is not None and guard >= rec["pos"]:
                how["key"] += 1
            elif any(ns_guard.get(n, ("", 0))[0] >= rec["pos"] for n in covering):
                how["namespace"] += 1
            elif epoch > rec["ts_us"] or any(ns_guard.get(n, ("", 0))[1] > rec["ts_us"] for n in covering):
                how["epoch"] += 1
            else:
                lost.append({"key": key, "topic": rec["topic"], "offset": rec["offset"], "op": rec["op"],
                             "position": rec["pos"], "guard": guard, "commit_ts_us": rec["ts_us"]})
    return how, lost, epoch


# ------------------------------------------------------------------ recovery figures


def smoothed_lag(samples, span=1.0):
    """The committed-offset lag, as the minimum over the last `span` seconds:
    the daemons commit stored offsets every second, so one sample can carry
    up to a second of work that is applied but not yet committed (about 60
    records at 60/s). None (Kafka unreachable) counts as bad."""
    out = []
    for i, (t, _lag, ready) in enumerate(samples):
        recent = [s[1] for s in samples[max(0, i - 10):i + 1] if t - s[0] <= span]
        out.append((t, None if None in recent else min(recent), ready))
    return out


def fault_figures(samples, faults, t_end, replica_samples=()):
    """Recovery per fault: to the end of the last bad stretch before the next
    fault; for faults that heal (network, topology), figures from the heal."""
    lagged = smoothed_lag(samples)
    for i, f in enumerate(faults):
        t1 = faults[i + 1]["at"] if i + 1 < len(faults) else t_end
        f["lag_recovery_s"] = recovery(lagged, f["at"], t1, lambda s: s[1] is None or s[1] >= LAG_OK)
        f["ready_recovery_s"] = recovery(samples, f["at"], t1, lambda s: not s[2])
        lags = [s[1] for s in samples if f["at"] <= s[0] < t1 and s[1] is not None]
        f["peak_lag"] = max(lags) if lags else None
    network_figures(faults, samples, list(replica_samples), lagged, t_end, recovery)


def recovery(samples, t0, t1, pred_bad):
    """Seconds from t0 until the end of the last bad stretch in [t0, t1);
    None if it was still bad at t1, 0.0 if never bad."""
    window = [s for s in samples if t0 <= s[0] < t1]
    last_bad = None
    for i, s in enumerate(window):
        if pred_bad(s):
            last_bad = i
    if last_bad is None:
        return 0.0
    if last_bad + 1 >= len(window):
        return None
    return round(window[last_bad + 1][0] - t0, 1)


# ------------------------------------------------------------------ main


def daemon_config(args, out_dir, stack):
    """The example config, or a copy whose [redis] section carries the
    run's settings: wait_replicas, and behind Sentinel a [redis.sentinel]
    section instead of the URL."""
    if not args.wait_replicas and not stack.sentinels:
        return CONFIG
    with open(CONFIG) as f:
        text = f.read()
    extra = f"wait_replicas = {args.wait_replicas}\n" if args.wait_replicas else ""
    text = re.sub(r"^\[redis\]\n", lambda m: m.group(0) + extra, text, count=1, flags=re.M)
    if stack.sentinels:
        text = re.sub(r"^url = \"redis://[^\"]*\"\n", "", text, count=1, flags=re.M)
        addresses = ", ".join(f'"{h}:{p}"' for h, p in stack.sentinels)
        text += (f"\n[redis.sentinel]\nmaster_name = \"{stack.sentinel_master}\"\n"
                 f"addresses = [{addresses}]\n")
    path = os.path.join(out_dir, "config.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def setup_database(stack):
    subprocess.run(["psql", stack.pg_url, "-q", "-v", "ON_ERROR_STOP=1", "-f", SCHEMA], check=True,
                   capture_output=True, timeout=60)
    with psycopg.connect(stack.pg_url, autocommit=True, connect_timeout=5) as conn:
        for cid in range(1, N_CATEGORIES + 1):
            parent = None if cid <= 4 else (cid % 4) + 1
            conn.execute("INSERT INTO categories (id, name, parent_id) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                         (cid, f"category {cid}", parent))
        conn.execute(
            "INSERT INTO products (id, category_id, sku, name, price) SELECT g, 1 + g %% %s, 'sku-' || g, 'product ' || g,"
            " 10.00 FROM generate_series(1, %s) g ON CONFLICT DO NOTHING",
            (N_CATEGORIES, N_SEED_PRODUCTS),
        )
        # One change per topic, so that Debezium has created all three.
        conn.execute("UPDATE categories SET name = name WHERE id = 1")
        conn.execute("UPDATE products SET updated_at = now() WHERE id = 1")
        conn.execute("INSERT INTO reviews (id, product_id, user_id, rating) VALUES (1, 1, 1, 5) ON CONFLICT (id) DO UPDATE SET rating = 5")


def main():
    ap = argparse.ArgumentParser(prog="scripts/chaos", description="bounded fault soak against the local stack")
    ap.add_argument("--short", action="store_true", help="CI mode: 120 s, faults kill9, redis-snapshot, term")
    ap.add_argument("--network", action="store_true", help="every network fault kind, each held 30-60 s")
    ap.add_argument("--network-short", action="store_true",
                    help="Redis and Kafka partitions and a silent Redis, 30 s each (about 5 minutes)")
    ap.add_argument("--hold", type=float, help="seconds every network fault lasts (default: per kind, 30-60)")
    ap.add_argument("--wait-replicas", type=int, default=0, help="the daemons' redis.wait_replicas (default 0)")
    ap.add_argument("--packet-loss", type=float, help="share of packets redis-loss drops (default: 0.10-0.30, uniform)")
    ap.add_argument("--duration", type=int, help="seconds of writing (default 600, 120 with --short)")
    ap.add_argument("--rate", type=float, default=60, help="row changes per second (default 60)")
    ap.add_argument("--faults", help="comma-separated fault kinds, in order (default: all kinds, kill9 three times)")
    ap.add_argument("--protocol", choices=["classic", "consumer"], default=os.environ.get("CDC_GROUP_PROTOCOL", "classic"))
    membership = ap.add_mutually_exclusive_group()
    membership.add_argument("--static", action="store_true",
                            help="static membership, CDC_INSTANCE_ID per replica (the default, as in the example config)")
    membership.add_argument("--dynamic", action="store_true", help="no static membership (CDC_INSTANCE_ID=\"\")")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--admin-base", type=int, default=int(os.environ.get("CHAOS_ADMIN_BASE", "29790")))
    ap.add_argument("--loss-window", type=int, default=8, help="seconds of bumps a Redis fault loses (default 8)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--report", metavar="RESULT_JSON", help="print the report of an earlier run again (figures recomputed)")
    args = ap.parse_args()
    if args.report:
        return reprint(args.report)
    if args.network_short and not args.hold:
        args.hold = 30
    if args.faults:
        faults = args.faults.split(",")
    elif args.network or args.network_short:
        faults = NETWORK_SHORT_FAULTS if args.network_short else NETWORK_FAULTS
    else:
        faults = SHORT_FAULTS if args.short else ALL_FAULTS
    kinds = sorted(k[2:].replace("_", "-") for k in dir(Faults) if k.startswith("f_"))
    for f in faults:
        if f not in kinds:
            ap.error(f"unknown fault {f!r} (kinds: {', '.join(kinds)})")
    if args.duration:
        duration = args.duration
    elif any(f in NEEDS_NETWORK or f.startswith(("sentinel", "kill9-leader")) for f in faults):
        duration = planned_duration(faults, args)
    else:
        duration = 120 if args.short else 600
    random.seed(args.seed)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    run_id = time.strftime("%Y%m%d-%H%M%S")
    stack_dir = os.environ.get("CDC_STACK_DIR", os.path.join(PROJECT, ".stack"))
    out_dir = os.path.join(stack_dir, "chaos", run_id)
    os.makedirs(out_dir, exist_ok=True)
    group = f"chaos-{run_id}-{random.randint(0, 9999):04d}"
    log(f"run {run_id}: {duration}s at {args.rate}/s, faults {','.join(faults)}, protocol {args.protocol}"
        f"{' dynamic' if args.dynamic else ' static'} membership, group {group}; logs in {out_dir}")

    stack = Stack(out_dir)
    if not stack.status_ok():
        log("starting the stack (scripts/stack up)")
        stack.up("initial")
    model = Model(CONFIG, stack.prefix)
    config = daemon_config(args, out_dir, stack)
    setup_database(stack)
    env = dict(stack.env, CDC_LOOKUP_URL=stack.pg_url, CDC_DEAD_LETTERS_URL=stack.pg_url)
    subprocess.run([BINARY, "migrate", "--config", CONFIG], env=env, check=True, capture_output=True, timeout=60)

    net = None
    if any(f in NEEDS_NETWORK for f in faults):
        cache = os.environ.get("CDC_STACK_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cdc-invalidator")
        net = NetworkSetup(stack, args, out_dir, cache, log)
    replicas = Replicas(stack, out_dir, group, args, config=config)
    monitor = Monitor(stack, model, group, replicas)
    faulter = Faults(stack, replicas, args, out_dir, net)
    writer = reader = None
    exit_code = 1
    result = {"run": run_id, "args": vars(args), "duration": duration, "faults": []}
    try:
        wait_for("the shop topics", lambda: all(
            t in monitor.consumer().list_topics(timeout=3).topics for t in model.topics), 60)
        if net:
            net.start()
            replicas.addresses = net.daemon_addresses()
            proxied = "PostgreSQL" if stack.sentinels else "Redis and PostgreSQL"
            log(f"network faults: the daemons reach {proxied} through Toxiproxy (API port "
                f"{net.toxiproxy.api_port}) and Kafka through the brokers' fault-suite listener: {replicas.addresses}")
        # A taken admin port would make a replica exit at once (status 2),
        # again and again: the run would silently have one replica fewer.
        for n in range(1, args.replicas + 1):
            with socket.socket() as probe:
                # As the daemon binds (Rust's listener sets SO_REUSEADDR): a
                # previous run's TIME_WAIT connections do not count.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", replicas.port(n)))
                except OSError as e:
                    raise RuntimeError(f"admin port {replicas.port(n)} for replica {n} is taken ({e}); "
                                       f"choose other ports with CHAOS_ADMIN_BASE or --admin-base "
                                       f"(below 32768, outside the kernel's ephemeral range)") from e
        for n in range(1, args.replicas + 1):
            replicas.start(n)
        monitor.start()
        t_start = time.time()
        wait_for("the group to drain the topics' history (lag 0) and every replica to be ready",
                 lambda: monitor.last_lag() == 0 and replicas.all_ready(), 300)
        log(f"replicas ready and caught up in {time.time() - t_start:.1f}s")
        c = monitor.consumer()
        start = {}
        for tp in monitor.partitions:
            start[(tp.topic, tp.partition)] = c.get_watermark_offsets(tp, timeout=5, cached=False)[1]
        c.close()
        with psycopg.connect(stack.pg_url, autocommit=True) as conn:
            membership = {"products": dict(conn.execute("SELECT id, category_id FROM products").fetchall())}

        writer = Writer(stack, args.rate)
        reader = Reader(stack, model, writer)
        writer.start()
        reader.start()
        t0 = time.time()
        first = min(20.0, duration * 0.15)
        spacing = (duration - first - 15) / max(1, len(faults))
        for i, kind in enumerate(faults):
            at = t0 + first + i * spacing
            while time.time() < at:
                time.sleep(0.2)
            log(f"fault {i + 1}/{len(faults)}: {kind}")
            t_inj, detail, extra = faulter.run(kind)
            log(f"  {detail}")
            result["faults"].append({"kind": kind, "at": t_inj, "detail": detail, **extra})
        while time.time() < t0 + duration:
            time.sleep(0.2)
        writer.finish()
        reader.finish()
        t_end = time.time()
        log(f"writer stopped: {writer.changes} row changes in {writer.txns} transactions ({writer.errors} failed attempts);"
            f" reader: {reader.fills} fills ({reader.errors} errors)")
        wait_for("the group to drain (lag 0)", lambda: monitor.last_lag() == 0, 300)
        time.sleep(3)  # eventual entities linger before they flush
        log(f"drained {time.time() - t_end:.1f}s after the writer stopped")
        monitor.stop.set()
        monitor.join(timeout=10)
        result["t0"], result["t_end"] = t0, t_end
        result["samples"] = [(round(t - t0, 2), lag, ready) for t, lag, ready in monitor.samples]
        result["replica_samples"] = [(round(t - t0, 2), seen) for t, seen in monitor.replica_samples]

        fault_figures(monitor.samples, result["faults"], t_end, monitor.replica_samples)

        log("oracle: reading the topics")
        records = read_changes(stack, model, start, timeout=180)
        targets = expected_targets(model, records, membership)
        how, lost, epoch = check_pairs(stack, model, targets)
        checked, stale = reader.stale_keys()
        result.update(
            changes=len(records), pairs=len(targets), covered=how, lost=len(lost), lost_examples=lost[:10],
            reader_keys=len(reader.keys), reachable_checked=checked, stale=len(stale), stale_examples=stale[:10],
            epoch=epoch, writer={"changes": writer.changes, "txns": writer.txns, "errors": writer.errors},
            peak_rss_mb={n: round(kb / 1024, 1) for n, kb in sorted(replicas.hwm_kb.items())},
            unexpected_exits=replicas.unexpected,
        )
        report(result)
        exit_code = verdict(result)
    except Interrupted as e:
        log(f"interrupted ({e}); cleaning up")
        exit_code = 130
    except Exception:
        log("the suite itself failed:\n" + traceback.format_exc())
        exit_code = 2
    finally:
        for part in (writer, reader):
            if part:
                part.finish()
        monitor.stop.set()
        replicas.stop_all()
        faulter.cleanup()
        if net:
            net.cleanup()
        try:
            if not stack.status_ok():
                log("a stack part is down after the run: scripts/stack up")
                stack.up("cleanup")
        except Exception as e:
            log(f"could not restore the stack: {e}")
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
        log(f"result in {out_dir}/result.json")
    return exit_code


def report(res):
    print()
    print(f"== chaos run {res['run']}: {res['changes']} change records, {res['pairs']} (key, change) pairs")
    c = res["covered"]
    print(f"covered by the key's guard: {c['key']}, by a namespace bump: {c['namespace']}, by an epoch bump: {c['epoch']}")
    print(f"LOST pairs: {res['lost']}")
    for ex in res["lost_examples"]:
        print(f"   {ex}")
    print(f"reader: {res['reader_keys']} keys, {res['reachable_checked']} reachable data keys checked, STALE: {res['stale']}")
    for ex in res["stale_examples"]:
        print(f"   {ex}")
    print("faults (recovery: seconds from the fault until lag < 100 / every replica ready, to the end of the last bad stretch):")
    for f in res["faults"]:
        print(f"   {f['kind']:<15} lag {fmt(f['lag_recovery_s']):>6}  ready {fmt(f['ready_recovery_s']):>6}"
              f"  peak lag {f['peak_lag']}  ({f['detail']})")
    by_kind = {}
    for f in res["faults"]:
        by_kind.setdefault(f["kind"], []).append(f["lag_recovery_s"])
    for kind, vals in by_kind.items():
        known = [v for v in vals if v is not None]
        if known:
            print(f"   {kind:<15} lag recovery median {statistics.median(known):.1f}s max {max(known):.1f}s"
                  f" over {len(vals)} ({len(vals) - len(known)} not recovered in its window)")
    report_network(res["faults"], fmt)
    print(f"peak RSS per replica (MB): {res['peak_rss_mb']}")
    print(f"daemon exits not caused by the suite: {len(res['unexpected_exits'])}")
    for ex in res["unexpected_exits"]:
        print(f"   replica {ex['replica']} code {ex['code']}: {ex['log_tail'][-300:]}")


def reprint(path):
    with open(path) as f:
        res = json.load(f)
    # Runs before t0 was stored: the first fault fires 0-0.3 s after t0 + its offset.
    t0 = res.get("t0") or res["faults"][0]["at"] - min(20.0, res["duration"] * 0.15)
    samples = [(t0 + t, lag, ready) for t, lag, ready in res["samples"]]
    replica_samples = [(t0 + t, {int(n): o for n, o in seen.items()}) for t, seen in res.get("replica_samples", [])]
    fault_figures(samples, res["faults"], res.get("t_end") or t0 + res["duration"], replica_samples)
    report(res)
    return verdict(res)


def verdict(res):
    """Non-zero on any lost pair, stale reachable key, or a replica that
    exited without the suite making it (a crash, or one that never ran)."""
    return 1 if (res["lost"] or res["stale"] or res.get("unexpected_exits")) else 0


def fmt(v):
    return "n/a" if v is None else f"{v:.1f}s"


if __name__ == "__main__":
    sys.exit(main())
