#!/usr/bin/env python3
"""Bumps per second and Redis main-thread CPU per bump: the guarded script
variants in this directory (edits of src/sink/bump.lua) against the bare writes (HSET v/pv/p:S + PEXPIRE), same keys, same
pipelines, interleaved repetitions."""

import hashlib
import socket
import statistics
import sys
import threading
import time

PORT = int(__import__("os").environ.get("REDIS_PORT", "16950"))
CALLS, PER_CALL, KEYS, ROUNDS = 20, 32, 10000, int(sys.argv[1]) if len(sys.argv) > 1 else 150
TTL = b"600000"
GUARD = b"p:kafka:bench:0"


def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def conn():
    s = socket.create_connection(("127.0.0.1", PORT))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def call(s, *args):
    s.sendall(enc(*args))
    data = b""
    while not data.endswith(b"\r\n"):
        data += s.recv(1 << 20)
    return data


def info_cpu(s):
    data = call(s, "INFO", "cpu").decode()
    fields = dict(line.split(":") for line in data.splitlines() if ":" in line)
    return float(fields["used_cpu_user_main_thread"]) + float(fields["used_cpu_sys_main_thread"])


position = [10**6]


def rounds(kind, sha):
    """Pre-encoded rounds and the CRLF count of each round's replies."""
    out = []
    key_i = 0
    for _round in range(ROUNDS):
        position[0] += 1
        pos = b"%020d" % position[0]
        parts = []
        for _call in range(CALLS):
            keys = []
            for _key in range(PER_CALL):
                keys.append(b"bench:k:%d" % (key_i % KEYS))
                key_i += 1
            if kind == "bare":
                for k in keys:
                    parts.append(enc(b"HSET", k, b"v", b"1795697046074000", b"pv", b"1795697046073000", GUARD, pos))
                    parts.append(enc(b"PEXPIRE", k, TTL))
            else:
                args = [TTL]
                for _key in keys:
                    args += [GUARD, pos]
                parts.append(enc(b"EVALSHA", sha, len(keys), *keys, *args))
        out.append(b"".join(parts))
    lines = {"bare": 2 * CALLS * PER_CALL, "nested": CALLS * (1 + PER_CALL * 4), "flat": CALLS * (1 + PER_CALL * 3)}
    return out, lines


def run(kind, sha, shape):
    data, lines = rounds(kind, sha)
    expect = lines[shape] * ROUNDS
    ctl = conn()
    s = conn()
    cpu0 = info_cpu(ctl)
    t0 = time.perf_counter()

    def send():
        for chunk in data:
            s.sendall(chunk)

    th = threading.Thread(target=send)
    th.start()
    seen = 0
    errors = False
    tail = b""
    while seen < expect:
        buf = s.recv(1 << 20)
        if not buf:
            raise SystemExit("closed")
        if b"-" in buf and (b"-ERR" in buf or b"-NOSCRIPT" in buf or b"-WRONG" in buf):
            errors = True
        seen += buf.count(b"\r\n") + (1 if tail.endswith(b"\r") and buf.startswith(b"\n") else 0)
        tail = buf[-1:]
    t1 = time.perf_counter()
    th.join()
    cpu1 = info_cpu(ctl)
    bumps = ROUNDS * CALLS * PER_CALL
    if errors:
        raise SystemExit(f"{kind}: error replies")
    return bumps / (t1 - t0), (cpu1 - cpu0) / bumps * 1e6


variants = [("bare", None, "bare")]
ctl = conn()
for name, shape in [("current", "nested"), ("flat", "flat"), ("hmget", "nested"), ("hmget_flat", "flat")]:
    # "current" is the shipped script itself, not a copy that could drift.
    path = "../../src/sink/bump.lua" if name == "current" else f"{name}.lua"
    with open(path, "rb") as f:
        src = f.read()
    sha = call(ctl, "SCRIPT", "LOAD", src).split(b"\r\n")[1]
    assert sha == hashlib.sha1(src).hexdigest().encode(), sha
    variants.append((name, sha, shape))
results = {v[0]: [] for v in variants}
for _rep in range(3):
    for name, sha, shape in variants:
        results[name].append(run("bare" if name == "bare" else "script", sha, shape))
print(f"{ROUNDS * CALLS * PER_CALL} bumps per run, {CALLS} calls x {PER_CALL} keys per pipeline round, medians of 3")
for name, rs in results.items():
    rate = statistics.median(r[0] for r in rs)
    cpu = statistics.median(r[1] for r in rs)
    print(
        f"{name:11s} {rate:10.0f} bumps/s  {cpu:6.3f} us redis cpu/bump   runs: "
        + ", ".join(f"{r[0]:.0f}/{r[1]:.3f}" for r in rs)
    )
