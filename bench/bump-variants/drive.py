#!/usr/bin/env python3
"""Bumps per second and Redis main-thread CPU per bump: the shipped
src/sink/bump.lua and the scripts named on the command line against the
bare writes (HSET v/pv/p:S + PEXPIRE per key, no guard), same keys, same
pipelines, interleaved repetitions.

    drive.py [ROUNDS] [REPS] [SCRIPT...]      # REDIS_PORT, default 16950

By default the bumps update 10,000 records over and over (the daemon's
case: hot keys, a `pv` to keep); FRESH_KEYS=1 gives every bump a record of
its own, created by it (the harness's redis-benchmark case).

With CALLGRIND_PID (a redis-server run under valgrind --tool=callgrind
--callgrind-out-file=DIR/cg.out.%p) and CALLGRIND_DIR, each run also counts
the server's instructions per bump (callgrind_control zeroes the counters
before it and dumps them after): the column to trust on a loaded machine.

Every bump is applied (each round writes a higher position), so every
variant takes its applied path. A script's reply is counted in CRLFs, as
many per call as one calibration call with fresh keys answered."""

import glob
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

PORT = int(os.environ.get("REDIS_PORT", "16950"))
# 32 keys per call: the daemon's sink::BUMPS_PER_CALL.
CALLS, PER_CALL, KEYS = 20, 32, 10000
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 150
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
SCRIPTS = sys.argv[3:]
FRESH_KEYS = os.environ.get("FRESH_KEYS") == "1"
CALLGRIND_PID = os.environ.get("CALLGRIND_PID")
CALLGRIND_DIR = os.environ.get("CALLGRIND_DIR", ".")
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


def script_args(keys, pos):
    args = [TTL]
    for _key in keys:
        args += [GUARD, pos]
    return args


def calibrate(ctl, sha):
    """CRLFs in one call's reply, every bump applied (fresh keys)."""
    keys = [b"bench:calibrate:%d:%d" % (time.time_ns(), i) for i in range(PER_CALL)]
    s = conn()
    s.sendall(enc(b"EVALSHA", sha, len(keys), *keys, *script_args(keys, b"%020d" % 1)))
    time.sleep(0.2)
    data = s.recv(1 << 20)
    s.close()
    if data.startswith(b"-"):
        raise SystemExit(f"calibration: {data!r}")
    return data.count(b"\r\n")


def callgrind(action):
    """Zeroes the server's counters ("-z") or dumps them ("-d"): then the
    instructions counted since the zero."""
    if not CALLGRIND_PID:
        return 0
    before = set(glob.glob(os.path.join(CALLGRIND_DIR, "cg.out.*")))
    subprocess.run(["callgrind_control", action, CALLGRIND_PID], check=True, capture_output=True)
    if action != "-d":
        return 0
    (dump,) = set(glob.glob(os.path.join(CALLGRIND_DIR, "cg.out.*"))) - before
    with open(dump) as f:
        totals = [line for line in f if line.startswith("totals:") or line.startswith("summary:")]
    if not os.environ.get("CALLGRIND_KEEP"):
        os.remove(dump)
    return int(totals[0].split()[1])


runs = [0]


def rounds(sha):
    out = []
    key_i = 0
    runs[0] += 1
    for _round in range(ROUNDS):
        position[0] += 1
        pos = b"%020d" % position[0]
        parts = []
        for _call in range(CALLS):
            keys = []
            for _key in range(PER_CALL):
                if FRESH_KEYS:
                    keys.append(b"bench:%d:%d:k:%d" % (os.getpid(), runs[0], key_i))
                else:
                    keys.append(b"bench:k:%d" % (key_i % KEYS))
                key_i += 1
            if sha is None:
                for k in keys:
                    parts.append(enc(b"HSET", k, b"v", b"1795697046074000", b"pv", b"1795697046073000", GUARD, pos))
                    parts.append(enc(b"PEXPIRE", k, TTL))
            else:
                parts.append(enc(b"EVALSHA", sha, len(keys), *keys, *script_args(keys, pos)))
        out.append(b"".join(parts))
    return out


def run(sha, lines_per_call):
    data = rounds(sha)
    expect = lines_per_call * CALLS * ROUNDS
    ctl = conn()
    s = conn()
    cpu0 = info_cpu(ctl)
    callgrind("-z")
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
        if b"-ERR" in buf or b"-NOSCRIPT" in buf or b"-WRONG" in buf:
            errors = True
        seen += buf.count(b"\r\n") + (1 if tail.endswith(b"\r") and buf.startswith(b"\n") else 0)
        tail = buf[-1:]
    t1 = time.perf_counter()
    th.join()
    instructions = callgrind("-d")
    cpu1 = info_cpu(ctl)
    bumps = ROUNDS * CALLS * PER_CALL
    if errors:
        raise SystemExit("error replies")
    return bumps / (t1 - t0), (cpu1 - cpu0) / bumps * 1e6, instructions / bumps


ctl = conn()
# bare: two one-line replies (HSET's and PEXPIRE's integers) per key.
variants = [("bare", None, 2 * PER_CALL)]
# "shipped" is the script itself, not a copy that could drift.
for path in [os.path.join(os.path.dirname(__file__), "../../src/sink/bump.lua"), *SCRIPTS]:
    with open(path, "rb") as f:
        src = f.read()
    sha = call(ctl, "SCRIPT", "LOAD", src).split(b"\r\n")[1]
    assert sha == hashlib.sha1(src).hexdigest().encode(), sha
    name = "shipped" if path.endswith("src/sink/bump.lua") else os.path.basename(path).removesuffix(".lua")
    variants.append((name, sha, calibrate(ctl, sha)))
results = {v[0]: [] for v in variants}
for _rep in range(REPS):
    for name, sha, lines in variants:
        results[name].append(run(sha, lines))
print(f"{ROUNDS * CALLS * PER_CALL} bumps per run, {CALLS} calls x {PER_CALL} keys per pipeline round, medians of {REPS}")
bare_rate = statistics.median(r[0] for r in results["bare"])
bare_cpu = statistics.median(r[1] for r in results["bare"])
bare_instructions = statistics.median(r[2] for r in results["bare"])
for name, rs in results.items():
    rate = statistics.median(r[0] for r in rs)
    cpu = statistics.median(r[1] for r in rs)
    if CALLGRIND_PID:
        instructions = statistics.median(r[2] for r in rs)
        print(f"{name:10s} {instructions:7.0f} redis instructions/bump ({bare_instructions / instructions:4.0%} of bare's rate)")
        continue
    print(
        f"{name:10s} {rate:9.0f} bumps/s ({rate / bare_rate:4.0%} of bare)  {cpu:5.2f} us redis cpu/bump"
        f" (bare/this {bare_cpu / cpu:4.0%})   runs: " + ", ".join(f"{r[0]:.0f}/{r[1]:.2f}" for r in rs)
    )
