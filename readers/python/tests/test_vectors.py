"""The shared conformance vectors (readers/spec.md section 12): the daemon's
key-rendering vectors and the readers' own, which the Rust crate and the Node
package run as well."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cdc_cache import BadVersionError, Fields, Float32, KeyValue, Layout, key, lease_key
from cdc_cache.naming import parse_version

READERS = Path(__file__).resolve().parents[2]
KEY_VECTORS = READERS.parent / "tests" / "vectors" / "keys.json"


def load(path: Path) -> list[dict[str, Any]]:
    # parse_float=Decimal: the vectors' number literals exactly as written.
    vectors: list[dict[str, Any]] = json.loads(path.read_text(), parse_float=Decimal)["vectors"]
    return vectors


def typed(kind: str, raw: Any) -> KeyValue:
    """The value an application holds for a column of this SQL type (what
    psycopg returns for it)."""
    if kind == "integer":
        return int(raw)
    if kind == "float64":
        return float(raw)
    if kind == "float32":
        return Float32(float(raw))
    if kind == "decimal":
        return Decimal(raw)
    if kind == "boolean":
        assert isinstance(raw, bool)
        return raw
    if kind == "date":
        return dt.date(1970, 1, 1) + dt.timedelta(days=int(raw))
    if kind == "time":
        micros = int(raw)
        seconds, us = divmod(micros, 1_000_000)
        return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60, us)
    if kind == "timestamp":
        return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(raw))
    if kind == "timestamptz":
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if kind == "uuid":
        return uuid.UUID(raw)
    if kind == "text":
        assert isinstance(raw, str)
        return raw
    raise AssertionError(f"unknown vector type {kind!r}")


KEYS = load(KEY_VECTORS)


def test_the_daemons_vectors_are_all_there() -> None:
    assert len(KEYS) >= 20
    kinds = {v["type"] for v in KEYS}
    assert {"integer", "float64", "float32", "decimal", "timestamptz", "text"} <= kinds


@pytest.mark.parametrize("vector", KEYS, ids=[v["name"] for v in KEYS])
def test_typed_values_render_like_the_daemon(vector: dict[str, Any]) -> None:
    value = typed(vector["type"], vector["json"])
    assert key("k:{c}", c=value) == f"k:{vector['text']}"


@pytest.mark.parametrize("vector", KEYS, ids=[v["name"] for v in KEYS])
def test_values_as_debezium_prints_them_render_like_the_daemon(vector: dict[str, Any]) -> None:
    """The JSON value itself (a number, a string, a bool) renders the same:
    what an application has when it holds the change event, not the row."""
    raw = vector["json"]
    value: KeyValue
    if isinstance(raw, Decimal):
        # A JSON number with a fraction or exponent: a float to the daemon.
        value = float(raw)
    elif vector["type"] in ("integer",) and isinstance(raw, str):
        value = int(raw)
    else:
        value = raw
    assert key("k:{c}", c=value) == f"k:{vector['text']}"


@pytest.mark.parametrize(
    "vector", load(READERS / "vectors" / "versions.json"), ids=lambda v: v["name"]
)
def test_version_texts_parse_or_are_refused(vector: dict[str, Any]) -> None:
    text = vector["text"]
    if "error" in vector:
        with pytest.raises(BadVersionError) as caught:
            parse_version("ver:k", vector["field"], text)
        assert caught.value.kind == vector["error"]
        assert "ver:k" in str(caught.value), "the error names the record"
    elif vector.get("absent"):
        assert parse_version("ver:k", vector["field"], text) is None
    else:
        got = parse_version("ver:k", vector["field"], text)
        assert str(got if got is not None else 0) == vector["value"]
        assert (
            parse_version("ver:k", vector["field"], None if text is None else text.encode()) == got
        )


@pytest.mark.parametrize(
    "vector", load(READERS / "vectors" / "data_keys.json"), ids=lambda v: v["name"]
)
def test_data_keys_lease_keys_and_stale_keys_are_named_alike(vector: dict[str, Any]) -> None:
    layout = Layout.build(vector["prefix"], vector["key"], vector["deps"], vector["namespaces"])
    assert list(layout.records) == vector["records"]

    def field(record: str, name: str) -> int | None:
        return parse_version(record, name, vector["fields"].get(record, {}).get(name))

    epoch = field(layout.records[0], "e") or 0
    fields = [Fields(v=field(r, "v") or 0, pv=field(r, "pv")) for r in layout.records[1:]]
    data_key = layout.data_key(epoch, [f.v for f in fields])
    assert data_key == vector["data_key"]
    assert lease_key(data_key) == vector["lease_key"]
    stale = layout.stale_key(epoch, fields, int(vector["now_us"]))
    if vector["stale_key"] is None:
        assert stale is None
    else:
        assert stale == (vector["stale_key"], int(vector["stale_age_us"]))
