"""Cache keys rendered exactly as the daemon renders its templates
(docs/key-rendering.md; vectors in tests/vectors/keys.json; the daemon's code
is src/graph/template.rs). A reader that renders ``product:{id}`` differently
from the daemon reads a version record nobody bumps.

Python values map to the SQL types the daemon sees:

========================  ==========================================
``int``                   ``smallint``/``integer``/``bigint`` (exact)
``float``                 ``double precision`` (shortest digits)
``Float32(x)``            ``real`` (shortest float32 digits)
``decimal.Decimal``       ``numeric`` (``BigDecimal.toPlainString``)
``bool``                  ``boolean``
``str``                   ``text``, ``varchar``... (escaped)
``uuid.UUID``             ``uuid`` (lowercase, hyphenated)
``datetime.date``         ``date`` (days since 1970-01-01)
``datetime.time``         ``time`` (microseconds since midnight)
``datetime.datetime``     naive: ``timestamp`` (µs since the epoch);
                          aware: ``timestamptz`` (UTC text, escaped)
``None``                  SQL NULL: the template names no key
========================  ==========================================
"""

from __future__ import annotations

import datetime as dt
import math
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, localcontext

from .errors import KeyTemplateError

__all__ = ["Float32", "KeyValue", "Template", "escape", "key", "render_value"]

# The daemon's bounds on decimals (src/decode/avro.rs): beyond them a change
# is a dead letter, so no key is ever bumped for such a value.
_MAX_DECIMAL_SCALE = 1000
_MAX_DECIMAL_UNSCALED_BITS = 128 * 8 - 1  # 128 bytes of two's complement

_EPOCH_DATE = dt.date(1970, 1, 1)
_EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True)
class Float32:
    """A ``real`` column's value: rendered with its shortest float32 digits
    (``Float32(0.1)`` is ``0.1``, never ``0.10000000149011612``)."""

    value: float


KeyValue = (
    int
    | float
    | Float32
    | Decimal
    | bool
    | str
    | uuid.UUID
    | dt.date
    | dt.time
    | dt.datetime
    | None
)

_RESERVED = frozenset("%:{}")


def escape(text: str) -> str:
    """``%``, ``:``, ``{``, ``}`` and control characters as ``%XX``: text can
    never be mistaken for key structure."""
    if not any(c in _RESERVED or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return text
    return "".join(
        f"%{ord(c):02X}" if c in _RESERVED or ord(c) < 0x20 or ord(c) == 0x7F else c for c in text
    )


def _plain(digits: str) -> str:
    """Plain notation of a finite float's shortest digits (``repr``), integral
    values without a fraction, as Rust's ``Display`` prints them."""
    with localcontext() as ctx:
        ctx.prec = 1000
        text = format(Decimal(digits), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "0", "") else text


def _special(x: float) -> str | None:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    return None


def _float64_text(x: float) -> str:
    return _special(x) or _plain(repr(x))


def _f32_bits(x: float) -> int:
    return int.from_bytes(struct.pack(">f", x), "big")


def _f32_from_bits(bits: int) -> float:
    value: float = struct.unpack(">f", bits.to_bytes(4, "big"))[0]
    return value


def _float32_text(x: float) -> str:
    """The shortest decimal that reads back as the same float32, the closest
    one among those of that length (what Rust prints for an ``f32``). Exact:
    candidates are compared with the float's rounding interval in decimal
    arithmetic, never through a double (which could round twice)."""
    try:
        f = _f32_from_bits(_f32_bits(x))
    except OverflowError:
        f = math.copysign(math.inf, x)
    special = _special(f)
    if special is not None:
        return special
    negative = f < 0
    bits = _f32_bits(abs(f))
    below = _f32_from_bits(bits - 1)
    above_bits = bits + 1
    with localcontext() as ctx:
        ctx.prec = 400
        exact = Decimal(abs(f))
        low = (exact + Decimal(below)) / 2
        if above_bits < 0x7F800000:
            high = (exact + Decimal(_f32_from_bits(above_bits))) / 2
        else:
            # Above the largest float32: the interval ends half an ulp up.
            high = exact + (exact - Decimal(below)) / 2
        even = bits % 2 == 0

        def inside(c: Decimal) -> bool:
            if c in (low, high):
                return even
            return low < c < high

        exponent = exact.adjusted()
        for digits in range(1, 10):
            quantum = Decimal(1).scaleb(exponent - digits + 1)
            floor = (exact / quantum).to_integral_value(rounding="ROUND_FLOOR") * quantum
            candidates = [c for c in (floor, floor + quantum) if c > 0 and inside(c)]
            if candidates:
                best = min(candidates, key=lambda c: abs(c - exact))
                text = _plain(str(best))
                return f"-{text}" if negative else text
    return _plain(repr(f))


def _decimal_text(value: Decimal) -> str:
    """Java's ``BigDecimal.toPlainString``, Debezium's string mode: plain
    notation, the scale kept (``12.50``), ``1E+3`` as ``1000``."""
    if not value.is_finite():
        raise KeyTemplateError(f"decimal {value} has no key form (numeric holds no {value})")
    sign, digit_tuple, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digit_tuple)) or "0")
    if exponent > 0:
        unscaled *= 10**exponent
        exponent = 0
    scale = -exponent
    if scale > _MAX_DECIMAL_SCALE or unscaled.bit_length() > _MAX_DECIMAL_UNSCALED_BITS:
        raise KeyTemplateError(
            f"decimal {value} is beyond the daemon's bounds (scale {_MAX_DECIMAL_SCALE}, "
            "308 digits): no key is bumped for it"
        )
    digits = str(unscaled)
    if scale:
        digits = digits.rjust(scale + 1, "0")
        digits = f"{digits[:-scale]}.{digits[-scale:]}"
    return f"-{digits}" if sign and unscaled else digits


def render_value(value: KeyValue) -> str | None:
    """The canonical text of one value; ``None`` for SQL NULL."""
    if value is None:
        return None
    # bool before int: a bool is an int in Python.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float64_text(value)
    if isinstance(value, Float32):
        return _float32_text(value.value)
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    # datetime before date: a datetime is a date in Python.
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            return str((value - _EPOCH) // dt.timedelta(microseconds=1))
        u = value.astimezone(dt.timezone.utc)
        return escape(
            f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:"
            f"{u.second:02d}.{u.microsecond:06d}Z"
        )
    if isinstance(value, dt.date):
        return str((value - _EPOCH_DATE).days)
    if isinstance(value, dt.time):
        if value.tzinfo is not None:
            raise KeyTemplateError(f"time {value} has a zone: the daemon renders no timetz")
        return str(
            ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
        )
    raise KeyTemplateError(f"a {type(value).__name__} has no key form")


class Template:
    """A key template such as ``category:{category_id}:products``; ``{{`` and
    ``}}`` are literal braces. Parsed as the daemon parses it."""

    __slots__ = ("_parts", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[tuple[bool, str]] = []  # (is_column, literal or column)
        literal: list[str] = []
        i = 0
        while i < len(text):
            c = text[i]
            if c in "{}" and text[i + 1 : i + 2] == c:
                literal.append(c)
                i += 2
            elif c == "{":
                close = text.find("}", i)
                at = len(text[:i].encode())
                if close < 0:
                    raise KeyTemplateError(f"template {text!r}: unclosed `{{` at byte {at}")
                column = text[i + 1 : close].strip()
                if not column:
                    raise KeyTemplateError(f"template {text!r}: empty `{{}}` at byte {at}")
                if "{" in column:
                    raise KeyTemplateError(f"template {text!r}: unclosed `{{` at byte {at}")
                if literal:
                    parts.append((False, "".join(literal)))
                    literal = []
                parts.append((True, column))
                i = close + 1
            elif c == "}":
                at = len(text[:i].encode())
                raise KeyTemplateError(
                    f"template {text!r}: unmatched `}}` at byte {at} "
                    "(write `}}}}` for a literal brace)"
                )
            else:
                literal.append(c)
                i += 1
        if literal:
            parts.append((False, "".join(literal)))
        self._parts = tuple(parts)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(p for is_column, p in self._parts if is_column)

    def render(self, values: Mapping[str, KeyValue] | None = None, /, **kw: KeyValue) -> str | None:
        """Renders with the named values; ``None`` when a value is SQL NULL
        (the template names no key, as in the daemon)."""
        given: dict[str, KeyValue] = {**(values or {}), **kw}
        out: list[str] = []
        for is_column, part in self._parts:
            if not is_column:
                out.append(part)
                continue
            if part not in given:
                raise KeyTemplateError(f"template {self.text!r}: no value for column {part!r}")
            text = render_value(given[part])
            if text is None:
                return None
            out.append(text)
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def key(
    template: str, values: Mapping[str, KeyValue] | None = None, /, **kw: KeyValue
) -> str | None:
    """``key("product:{id}", id=42)`` is ``"product:42"``."""
    return Template(template).render(values, **kw)
