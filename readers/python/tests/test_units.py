"""Tests without Redis: key rendering beyond the vectors, refused options,
the two L1s' state, and the flight generator driven by a scripted Redis
(the lease rule's decisions, effect by effect)."""

from __future__ import annotations

import datetime as dt
import math
import random
import struct
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry
from support import metric

from cdc_cache import (
    AsyncCache,
    Cache,
    Float32,
    InvalidOptionsError,
    KeyTemplateError,
    LeaseTimeoutError,
    LoaderError,
    Template,
    key,
)
from cdc_cache.flow import (
    Checks,
    Context,
    FlightState,
    Get,
    Load,
    Outcome,
    Poll,
    Read,
    Sleep,
    Snapshot,
    TryLease,
    Write,
    decode,
    encode,
    flight,
    xfetch_due,
)
from cdc_cache.l1 import BoundedL1, ExactL1
from cdc_cache.metrics import CacheMetrics
from cdc_cache.naming import Fields, Layout
from cdc_cache.options import Request, Settings

# -- key rendering -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1E+3"), "1000"),
        (Decimal("1.5E-2"), "0.015"),
        (Decimal("12.50"), "12.50"),
        (Decimal("-0.00"), "0.00"),
        (Decimal("-0"), "0"),
        (Decimal("-12345678901234567890.000001"), "-12345678901234567890.000001"),
        (Float32(0.1), "0.1"),
        (Float32(1 / 3), "0.33333334"),
        (Float32(16777217.0), "16777216"),
        (Float32(-2.5), "-2.5"),
        (Float32(3.4028234663852886e38), "340282350000000000000000000000000000000"),
        (Float32(1e-45), "0." + "0" * 44 + "1"),
        (Float32(math.nan), "NaN"),
        (Float32(-math.inf), "-Infinity"),
        (Float32(-0.0), "0"),
        (5e-324, "0." + "0" * 323 + "5"),
        (1.7976931348623157e308, "17976931348623157" + "0" * 292),
        (1e-7, "0.0000001"),
        (-1.5, "-1.5"),
        (math.inf, "Infinity"),
        (2**100, "1267650600228229401496703205376"),
        (-(2**70), "-1180591620717411303424"),
        (False, "false"),
        (uuid.UUID("F47AC10B-58CC-4372-A567-0E02B2C3D479"), "f47ac10b-58cc-4372-a567-0e02b2c3d479"),
        (
            dt.datetime(2024, 2, 18, 18, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2024-02-18T16%3A00%3A00.000000Z",
        ),
        (dt.datetime(1969, 12, 31, 23, 59, 59, 999999), "-1"),
        (dt.date(1969, 12, 31), "-1"),
        (dt.time(1, 2, 3, 4), "3723000004"),
        ("50%{x}\n\x7fé", "50%25%7Bx%7D%0A%7Fé"),
    ],
)
def test_values_render_like_the_daemon(value: Any, text: str) -> None:
    assert key("k:{v}", v=value) == f"k:{text}"


def test_float32_texts_are_the_shortest_that_read_back() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        bits = rng.getrandbits(32) & 0x7FFFFFFF
        if bits >= 0x7F800000:
            continue
        f = struct.unpack(">f", bits.to_bytes(4, "big"))[0]
        text = key("{v}", v=Float32(f))
        assert text is not None
        assert struct.unpack(">f", struct.pack(">f", float(Decimal(text))))[0] == f, (bits, text)
        digits = len(text.replace("-", "").replace(".", "").strip("0"))
        shortest = next(
            p
            for p in range(1, 10)
            if struct.unpack(">f", struct.pack(">f", float(f"{f:.{p}g}")))[0] == f
        )
        assert digits <= shortest, (bits, text, shortest)


@pytest.mark.parametrize(
    "value",
    [Decimal("NaN"), Decimal("Infinity"), Decimal("1E-1001"), Decimal(2**1024), [1], {"a": 1}],
)
def test_values_without_a_key_form_are_refused(value: Any) -> None:
    with pytest.raises(KeyTemplateError):
        key("k:{v}", v=value)


def test_templates_parse_like_the_daemons() -> None:
    assert key("category:{id}:products", {"id": 3}) == "category:3:products"
    assert key("{{tag}}:{id}", id="a") == "{tag}:a"
    assert key("pair:{a}:{b}", a="1", b="2:3") == "pair:1:2%3A3"
    assert key("pair:{a}:{b}", a="1:2", b="3") == "pair:1%3A2:3"
    assert key("größe:{ id }", id=1) == "größe:1"
    assert key("c:{p}", p=None) is None
    assert Template("a:{x}:{y}").columns == ("x", "y")
    for template, message in [
        ("p:{id", "unclosed `{` at byte 2"),
        ("p:{}", "empty `{}` at byte 2"),
        ("p:}", "unmatched `}` at byte 2"),
        ("é:{a{b}", "unclosed `{` at byte 3"),
    ]:
        with pytest.raises(KeyTemplateError, match=message):
            Template(template)
    with pytest.raises(KeyTemplateError, match="no value for column 'id'"):
        key("p:{id}")


# -- refused options -------------------------------------------------------


def _refused_gets() -> list[tuple[str, dict[str, Any]]]:
    ok: dict[str, Any] = {"ttl": 60}
    return [
        ("", ok),
        ("epoch", ok),
        ("ns:product", ok),
        ("k", {**ok, "deps": []}),
        ("k", {**ok, "deps": ["epoch"]}),
        ("k", {**ok, "deps": ["ns:product"]}),
        ("k", {**ok, "deps": [""]}),
        ("k", {**ok, "deps": "k"}),
        ("k", {**ok, "namespaces": [""]}),
        ("k", {"ttl": 0}),
        ("k", {"ttl": -1}),
        ("k", {"ttl": math.nan}),
        ("k", {**ok, "consistency": "Strong"}),
        ("k", {**ok, "consistency": "eventul", "max_stale": 1}),
        ("k", {**ok, "consistency": "eventual"}),
        ("k", {**ok, "max_stale": 1}),
        ("k", {**ok, "consistency": "eventual", "max_stale": -0.5}),
    ]


@pytest.mark.parametrize(("key_", "options"), _refused_gets())
def test_refused_get_options(key_: str, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidOptionsError) as caught:
        Request.build(
            "ver:",
            key_,
            deps=options.get("deps"),
            namespaces=options.get("namespaces", ()),
            ttl=options["ttl"],
            consistency=options.get("consistency", "strong"),
            max_stale=options.get("max_stale"),
        )
    assert caught.value.kind == "invalid_options"


async def test_refused_get_options_reach_both_caches() -> None:
    sync_cache = Cache(redis.Redis(port=1), registry=CollectorRegistry())
    async_cache = AsyncCache(aredis.Redis(port=1), registry=CollectorRegistry())
    with pytest.raises(InvalidOptionsError, match="deps=\\[\\] is refused"):
        sync_cache.get("k", lambda: b"", ttl=60, deps=[])
    with pytest.raises(InvalidOptionsError, match="consistency must be"):
        await async_cache.get("k", _never, ttl=60, consistency="eventualy")  # type: ignore[arg-type]
    sync_cache.close()
    await async_cache.aclose()


async def _never() -> bytes:
    raise AssertionError("not called")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"lease": 0}, "lease"),
        ({"poll": 0}, "poll"),
        ({"max_poll": 0}, "max_poll"),
        ({"poll": 0.2, "max_poll": 0.1}, "max_poll"),
        ({"wait_timeout": 0}, "wait_timeout"),
        ({"loader_timeout": 0}, "loader_timeout"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sample_rate": -0.1}, "sample_rate"),
        ({"beta": -1}, "beta"),
        ({"beta": math.nan}, "beta"),
        ({"name": ""}, "name"),
    ],
)
def test_refused_cache_options(options: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidOptionsError, match=named):
        Cache(redis.Redis(port=1), registry=CollectorRegistry(), **options)
    with pytest.raises(InvalidOptionsError, match=named):
        AsyncCache(aredis.Redis(port=1), registry=CollectorRegistry(), **options)


def test_refused_clients() -> None:
    with pytest.raises(InvalidOptionsError, match="decode_responses"):
        Cache(redis.Redis(port=1, decode_responses=True))
    with pytest.raises(InvalidOptionsError, match="decode_responses"):
        AsyncCache(aredis.Redis(port=1, decode_responses=True))
    with pytest.raises(InvalidOptionsError, match=r"redis\.Redis"):
        Cache(aredis.Redis(port=1))  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionsError, match=r"redis\.asyncio"):
        AsyncCache(redis.Redis(port=1))  # type: ignore[arg-type]


def test_defaults() -> None:
    s = Settings.build(
        name="d", prefix="ver:", lease=5, poll=0.01, max_poll=0.1, wait_timeout=None,
        loader_timeout=None, beta=1.0, sample_rate=0, l1=None,
    )  # fmt: skip
    assert (s.lease, s.wait_timeout, s.lease_ms) == (5.0, 10.0, 5000)
    assert Settings.build(
        name="d", prefix="ver:", lease=dt.timedelta(milliseconds=300), poll=0.01, max_poll=0.1,
        wait_timeout=None, loader_timeout=None, beta=1.0, sample_rate=0, l1=None,
    ).wait_timeout == pytest.approx(0.6)  # fmt: skip


# -- the envelope and XFetch -------------------------------------------------


def test_envelope_round_trips_and_foreign_values_pass_through() -> None:
    assert decode(encode(42, b"c1:x:y")) == (42, b"c1:x:y")
    assert decode(b"plain") == (0, b"plain")
    assert decode(b"c1:12x:v") == (0, b"c1:12x:v")
    assert decode(b"c1::v") == (0, b"c1::v")
    assert decode("c1:\u0661:v".encode()) == (0, "c1:\u0661:v".encode())


def test_xfetch_is_never_due_far_from_expiry_and_always_at_it() -> None:
    assert not any(xfetch_due(10, 1.0, 1_000_000) for _ in range(1000))
    assert all(xfetch_due(10, 1.0, 0) for _ in range(1000))
    assert not any(xfetch_due(10, 0.0, 1) for _ in range(1000))


# -- the L1s -------------------------------------------------------------------


def test_bounded_l1_drops_dependents_and_evicts_the_oldest() -> None:
    l1 = BoundedL1(2, "ver:")
    now = time.monotonic()
    a = ("a", "ver:epoch", "ver:a")
    b = ("b", "ver:epoch", "ver:b", "ver:a")
    c = ("c", "ver:epoch", "ver:c")
    l1.put(a, "a@e0:v1", b"A", now)
    l1.put(b, "b@e0:v1", b"B", now)
    assert l1.invalidate("ver:a") == 2
    assert l1.fresh(a, 5) is None
    l1.put(a, "a@e0:v2", b"A2", now)
    l1.put(b, "b@e0:v2", b"B2", now)
    l1.put(c, "c@e0:v2", b"C2", now)
    assert l1.fresh(a, 5) is None, "the oldest was evicted"
    assert l1.fresh(c, 5) == (b"C2", "c@e0:v2")
    assert l1.fresh(c, 0) is None or time.monotonic() == now
    assert l1.invalidate("ver:epoch") == 2, "an epoch notice clears everything"


LAYOUT = Layout.build("ver:", "k", None, ())


def test_exact_l1_stores_a_read_only_when_no_invalidation_raced_it() -> None:
    l1 = ExactL1(100, 1 << 20)
    assert l1.begin(LAYOUT.records) is None, "not live: nothing is stored"
    l1.go_live()
    # An invalidation processed while the read was in flight: the reply may
    # hold the old version, so it is not stored.
    raced = l1.begin(LAYOUT.records)
    l1.invalidate(["ver:k"])
    assert not l1.commit(raced, [0, 7])
    l1.put_value("k@e0:v7", b"old", LAYOUT.records, None)
    assert l1.lookup(LAYOUT, time.monotonic()) is None
    # A clean read is stored; its value is served until the record changes.
    clean = l1.begin(LAYOUT.records)
    assert l1.commit(clean, [0, 8])
    l1.put_value("k@e0:v8", b"new", LAYOUT.records, None)
    assert l1.lookup(LAYOUT, time.monotonic()) == ("k@e0:v8", b"new")
    assert l1.invalidate(["ver:other"]) == 0
    assert l1.invalidate(["ver:k"]) == 2, "the record and its value"
    assert l1.lookup(LAYOUT, time.monotonic()) is None
    # A read begun before tracking dropped is never stored, even once back.
    old_session = l1.begin(LAYOUT.records)
    l1.go_dark()
    l1.go_live()
    assert not l1.commit(old_session, [0, 9])
    # A flush of the whole database (keys None) empties it.
    assert l1.commit(l1.begin(LAYOUT.records), [0, 9])
    assert l1.invalidate(None) == 2, "both records"


def test_exact_l1_is_bounded_and_values_expire_with_their_ttl() -> None:
    l1 = ExactL1(max_entries=2, max_bytes=10)
    l1.go_live()
    layouts = [Layout.build("ver:", f"k{i}", None, ()) for i in range(3)]
    now = time.monotonic()
    for i, layout in enumerate(layouts):
        assert l1.commit(l1.begin(layout.records[1:]), [i])
        l1.put_value(f"k{i}@e0:v{i}", b"12345", layout.records[1:], now + 60)
    stats = l1.stats()
    assert (stats.records, stats.values) == (2, 2)
    assert stats.bytes <= 10
    epoch_less = Layout.build("", "k2", None, ())
    assert l1.commit(l1.begin(["epoch"]), [0])
    assert l1.lookup(epoch_less, now) is None, "records are not named alike here"
    # Expiry: a value is never served past its Redis TTL.
    l1 = ExactL1(10, 100)
    l1.go_live()
    assert l1.commit(l1.begin(LAYOUT.records), [0, 1])
    l1.put_value("k@e0:v1", b"v", LAYOUT.records, now + 0.5)
    assert l1.lookup(LAYOUT, now) == ("k@e0:v1", b"v")
    assert l1.lookup(LAYOUT, now + 0.6) is None
    l1.put_value("k@e0:v1", b"x" * 101, LAYOUT.records, None)
    assert l1.lookup(LAYOUT, now) is None, "a value above max_bytes is not held"


# -- the flight, driven by a scripted Redis ------------------------------------


class Script:
    """Runs a flight against answers given per effect type; records the
    effects it yielded."""

    def __init__(self, settings: dict[str, Any] | None = None, **request: Any) -> None:
        self.registry = CollectorRegistry()
        self.settings = Settings.build(
            **{
                "name": "unit",
                "prefix": "ver:",
                "lease": 1.0,
                "poll": 0.01,
                "max_poll": 0.04,
                "wait_timeout": None,
                "loader_timeout": None,
                "beta": 0.0,
                "sample_rate": 0.0,
                "l1": None,
                **(settings or {}),
            }
        )
        m = CacheMetrics("unit", self.registry)
        self.ctx = Context(self.settings, m, Checks(m), None, None)
        self.req = Request.build(
            "ver:",
            "k",
            deps=None,
            namespaces=(),
            ttl=60,
            consistency=request.get("consistency", "strong"),
            max_stale=request.get("max_stale"),
        )
        self.effects: list[Any] = []

    def run(self, answer: Callable[[Any], Any]) -> Outcome:
        gen = flight(self.ctx, self.req, time.monotonic(), FlightState())
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = gen.throw(error) if error is not None else gen.send(reply)
            except StopIteration as done:
                outcome: Outcome = done.value
                return outcome
            self.effects.append(effect)
            reply, error = None, None
            try:
                reply = answer(effect)
            except Exception as e:
                error = e

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.effects]

    def prevented(self) -> float:
        return metric(self.registry, "stampede_prevented_count", cache="unit")


def miss(now_us: int = 10**15, v: int = 5, pv: int | None = 4) -> Snapshot:
    return Snapshot(now_us, 0, (Fields(v, pv),), f"k@e0:v{v}", -2, None)


def test_the_holder_re_reads_before_loading() -> None:
    script = Script()

    def answer(effect: Any) -> Any:
        if isinstance(effect, Read):
            return miss()
        if isinstance(effect, TryLease):
            return "token"
        if isinstance(effect, Get):
            return encode(3, b"filled meanwhile")
        if isinstance(effect, Load):
            raise AssertionError("the holder loaded although the value was there")
        return None

    outcome = script.run(answer)
    assert outcome == Outcome(b"filled meanwhile", "k@e0:v5", stale=False, loaded=False)
    assert script.kinds() == ["Read", "TryLease", "Get", "Release"]
    assert script.prevented() == 0, "the get that took the lease is never counted"


def test_the_holder_loads_fills_then_releases() -> None:
    script = Script()
    written: list[Write] = []

    def answer(effect: Any) -> Any:
        if isinstance(effect, Read):
            return miss()
        if isinstance(effect, TryLease):
            return "token"
        if isinstance(effect, Load):
            return b"loaded", 0.012
        if isinstance(effect, Write):
            written.append(effect)
        return None

    outcome = script.run(answer)
    assert (outcome.value, outcome.loaded) == (b"loaded", True)
    assert script.kinds() == ["Read", "TryLease", "Get", "Load", "Write", "Release"]
    assert written == [Write("k@e0:v5", b"c1:12:loaded", 60_000)]


def test_a_loader_error_releases_the_lease_and_is_raised() -> None:
    script = Script()

    def answer(effect: Any) -> Any:
        if isinstance(effect, Read):
            return miss()
        if isinstance(effect, TryLease):
            return "token"
        if isinstance(effect, Load):
            raise LoaderError("loader: down")
        return None

    with pytest.raises(LoaderError):
        script.run(answer)
    assert script.kinds()[-1] == "Release"
    assert metric(script.registry, "cache_fill_errors_total", cache="unit") == 1


def test_a_waiter_backs_off_takes_over_once_and_never_loads_without_the_lease() -> None:
    script = Script()
    polls = 0

    def answer(effect: Any) -> Any:
        nonlocal polls
        if isinstance(effect, Read):
            return miss()
        if isinstance(effect, TryLease):
            # Held by another until the fourth poll finds it gone.
            return "mine" if polls >= 4 else None
        if isinstance(effect, Poll):
            polls += 1
            return None, (-2 if polls >= 4 else 800)
        if isinstance(effect, Load):
            return b"v", 0.001
        return None

    outcome = script.run(answer)
    assert outcome.loaded
    sleeps = [e.seconds for e in script.effects if isinstance(e, Sleep)]
    assert sleeps == pytest.approx([0.01, 0.02, 0.04, 0.04]), "doubling up to max_poll"
    assert script.kinds().count("TryLease") == 2, (
        "the first read, then one try when the lease was gone"
    )
    assert metric(script.registry, "cache_lease_takeovers_total", cache="unit") == 1


def test_a_waiter_gives_up_at_wait_timeout_without_loading() -> None:
    script = Script({"wait_timeout": 0.15})

    def answer(effect: Any) -> Any:
        if isinstance(effect, Read):
            return miss()
        if isinstance(effect, Poll):
            return None, 500
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
        if isinstance(effect, Load):
            raise AssertionError("loaded without the lease")
        return None

    began = time.monotonic()
    with pytest.raises(LeaseTimeoutError):
        script.run(answer)
    assert 0.15 <= time.monotonic() - began < 0.15 + 0.04 + 0.05
    assert script.prevented() == 1


def test_an_eventual_waiter_serves_the_previous_value_within_its_bound() -> None:
    script = Script(consistency="eventual", max_stale=2.0)

    def answer(effect: Any) -> Any:
        if isinstance(effect, Read):
            # The last bump is 1 s old: within the 2 s bound.
            return miss(now_us=5_000_000 + 1_000_000, v=5_000_000, pv=4_000_000)
        if isinstance(effect, Get):
            assert effect.key == "k@e0:v4000000"
            return encode(1, b"previous")
        return None

    outcome = script.run(answer)
    assert outcome == Outcome(b"previous", "k@e0:v4000000", stale=True, loaded=False)
    assert script.kinds() == ["Read", "TryLease", "Get"]
