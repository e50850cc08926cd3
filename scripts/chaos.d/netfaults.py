"""Network faults for scripts/chaos (docs/reliability.md, "Network faults").

Two mechanisms, both aimed at the connections of the daemons the suite
starts and nothing else:

- LoopbackFilter drops TCP packets to and from chosen ports on the loopback
  interface, every packet (a silent partition: no reset, no ICMP, the
  sockets only see their retransmissions go unanswered) or a random share
  of them (packet loss). It is a `tc` clsact qdisc on `lo` whose ingress
  runs classic BPF programs in direct-action mode: the program itself
  answers "drop" (TC_ACT_SHOT), so no tc action module is needed (kernels
  without netem, and without act_gact, as on the machine the figures come
  from), only cls_bpf. Loopback traffic passes lo's ingress once per
  packet, so one filter per direction cuts both ends.
- Toxiproxy (github.com/Shopify/toxiproxy, built pinned with `go install`)
  proxies Redis and PostgreSQL for the daemons: latency with jitter, and a
  connection that goes silent (the `timeout` toxic with timeout 0: data is
  dropped inside the proxy while both TCP connections stay up, so the
  kernel acknowledges everything and only an application timeout can
  notice), applied to connections already open.

The filters go on `lo` of the network namespace the suite runs in; on a
machine shared with other loopback services, run the stack and the suite in
a namespace of their own (`ip netns exec`), as the figures were made.
"""

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

TOXIPROXY_VERSION = "v2.12.0"
TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"

# Classic BPF opcodes (linux/filter.h).
LD_H_ABS, LD_B_ABS, LD_W_ABS, LD_H_IND, LDX_B_MSH = 0x28, 0x30, 0x20, 0x48, 0xB1
JEQ_K, JGE_K, RET_K = 0x15, 0x35, 0x06
SKF_AD_RANDOM = 0xFFFFF000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM: a random u32
TC_ACT_SHOT = 2
TC_ACT_UNSPEC = 0xFFFFFFFF  # -1: not this filter's business, go on
ETH_HLEN = 14  # lo carries an Ethernet header, and cls_bpf sees it on ingress too


def ipv4(address):
    a, b, c, d = (int(x) for x in address.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def bpf_drop_program(port, direction, probability=1.0, address=None):
    """Bytecode for `tc ... bpf bytecode`: drops IPv4 TCP packets whose
    destination port (direction "to") or source port ("from") is `port`,
    and, when `address` is given, whose source ("to") or destination
    ("from") address is it, with the given probability. Anything else
    passes to the next filter."""
    prog = []  # (code, jump-if-true label, jump-if-false label, k)

    def op(code, k, jt=None, jf=None):
        prog.append([code, jt, jf, k])

    op(LD_H_ABS, 12)
    op(JEQ_K, 0x0800, jf="pass")
    op(LD_B_ABS, ETH_HLEN + 9)
    op(JEQ_K, 6, jf="pass")
    if address is not None:
        op(LD_W_ABS, ETH_HLEN + (12 if direction == "to" else 16))
        op(JEQ_K, ipv4(address), jf="pass")
    op(LDX_B_MSH, ETH_HLEN)
    op(LD_H_IND, ETH_HLEN + (2 if direction == "to" else 0))
    op(JEQ_K, port, jf="pass")
    if probability < 1.0:
        op(LD_W_ABS, SKF_AD_RANDOM)
        op(JGE_K, int(probability * 2**32), jt="pass")
    op(RET_K, TC_ACT_SHOT)
    pass_at = len(prog)
    op(RET_K, TC_ACT_UNSPEC)
    out = []
    for i, (code, jt, jf, k) in enumerate(prog):
        # A jump is relative to the next instruction; "pass" is the only label.
        jump_t = 0 if jt is None else pass_at - (i + 1)
        jump_f = 0 if jf is None else pass_at - (i + 1)
        out.append(f"{code} {jump_t} {jump_f} {k}")
    return f"{len(out)}," + ",".join(out)


class LoopbackFilter:
    """tc filters on lo's ingress, each under a preference of our own range so
    that cleanup (and the next run, after a crash) removes only ours."""

    PREF_FIRST = 4900
    PREF_LAST = 4999

    def __init__(self, log):
        self.log = log
        self.next_pref = self.PREF_FIRST
        self.active = {}  # pref -> description
        self.added_qdisc = False

    def tc(self, *args, check=True):
        return subprocess.run(["tc", *args], capture_output=True, text=True, timeout=10, check=check)

    def prepare(self):
        if "clsact" not in self.tc("qdisc", "show", "dev", "lo").stdout:
            self.tc("qdisc", "add", "dev", "lo", "clsact")
            self.added_qdisc = True
        self.remove_stale()

    def remove_stale(self):
        for line in self.tc("filter", "show", "dev", "lo", "ingress").stdout.splitlines():
            parts = line.split()
            if "pref" in parts:
                pref = int(parts[parts.index("pref") + 1])
                if self.PREF_FIRST <= pref <= self.PREF_LAST:
                    self.tc("filter", "del", "dev", "lo", "ingress", "pref", str(pref), check=False)

    def drop(self, ports, probability=1.0, address=None, what=""):
        """Drops packets to and from every port in `ports`; returns the
        preferences to hand to restore()."""
        prefs = []
        for port in ports:
            for direction in ("to", "from"):
                pref = self.next_pref
                self.next_pref = self.PREF_FIRST + (self.next_pref + 1 - self.PREF_FIRST) % 100
                self.tc("filter", "add", "dev", "lo", "ingress", "pref", str(pref), "bpf", "da", "bytecode",
                        bpf_drop_program(port, direction, probability, address))
                self.active[pref] = f"{what} port {port} {direction} p={probability}"
                prefs.append(pref)
        return prefs

    def restore(self, prefs):
        for pref in prefs:
            self.tc("filter", "del", "dev", "lo", "ingress", "pref", str(pref), check=False)
            self.active.pop(pref, None)

    def cleanup(self):
        self.restore(list(self.active))
        if self.added_qdisc:
            self.tc("qdisc", "del", "dev", "lo", "clsact", check=False)
            self.added_qdisc = False


def toxiproxy_binary(cache, log):
    """The pinned Toxiproxy server, built once into the cache with `go install`."""
    out_dir = os.path.join(cache, f"toxiproxy-{TOXIPROXY_VERSION.lstrip('v')}")
    binary = os.path.join(out_dir, "server")
    if os.access(binary, os.X_OK):
        return binary
    log(f"building Toxiproxy {TOXIPROXY_VERSION} into {out_dir} (go install, once)")
    os.makedirs(out_dir, exist_ok=True)
    try:
        subprocess.run(["go", "install", f"{TOXIPROXY_MODULE}@{TOXIPROXY_VERSION}"], check=True, timeout=900,
                       env=dict(os.environ, GOBIN=out_dir), capture_output=True)
    except FileNotFoundError as e:
        raise RuntimeError("network faults need Go to build Toxiproxy (go is not installed)") from e
    return binary


class Toxiproxy:
    """A Toxiproxy server of the suite's own and its HTTP API."""

    def __init__(self, binary, api_port, out_dir):
        self.binary = binary
        self.api = f"http://127.0.0.1:{api_port}"
        self.api_port = api_port
        self.out_dir = out_dir
        self.proc = None

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            text = r.read()
        return json.loads(text) if text else None

    def start(self):
        logf = open(os.path.join(self.out_dir, "toxiproxy.log"), "a")  # noqa: SIM115
        # Its default level traces every connection: info keeps the log small.
        self.proc = subprocess.Popen([self.binary, "-host", "127.0.0.1", "-port", str(self.api_port)],
                                     stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, LOG_LEVEL="info"))
        logf.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                self.request("GET", "/version")
                return
            except (urllib.error.URLError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"toxiproxy did not start on port {self.api_port} (see toxiproxy.log)") from None
                time.sleep(0.2)

    def proxy(self, name, listen_port, upstream):
        self.request("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{listen_port}",
                                          "upstream": upstream, "enabled": True})

    def add_toxic(self, proxy, name, kind, stream, attributes):
        self.request("POST", f"/proxies/{proxy}/toxics",
                     {"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes})

    def remove_toxic(self, proxy, name):
        with contextlib.suppress(urllib.error.HTTPError):
            self.request("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
