#!/usr/bin/env python3
"""Independent Avro producer for the Avro tests: Debezium-shaped change
events encoded by fastavro (not by cdc-invalidator), in the Confluent wire
format, each paired with the JSON that Debezium's JsonConverter writes for
the same row in decimal.handling.mode=string.

    generate.py ROWS SEED OUT.jsonl

Schema ids: 1 key, 2 envelope, 3 envelope v2 (a column added with a
default). The schemas are schemas/debezium/*.avsc.
"""
import io
import json
import random
import struct
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import fastavro

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas" / "debezium"
KEY = fastavro.parse_schema(json.loads((SCHEMAS / "shop.public.avro_products-Key.avsc").read_text()))
V1 = fastavro.parse_schema(json.loads((SCHEMAS / "shop.public.avro_products-Envelope.avsc").read_text()))
V2 = fastavro.parse_schema(json.loads((SCHEMAS / "shop.public.avro_products-Envelope-v2.avsc").read_text()))


def framed(schema_id, schema, record):
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def plain(unscaled, scale):
    """Java BigDecimal.toPlainString of unscaled * 10^-scale."""
    sign = "-" if unscaled < 0 else ""
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    if scale == 0:
        return sign + digits
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def row(rng, i):
    price_unscaled = rng.randint(-99_999_999, 99_999_999)
    weight = None if rng.random() < 0.2 else (rng.randint(-10**12, 10**12), rng.randint(0, 6))
    category = None if rng.random() < 0.1 else rng.choice([rng.randint(0, 1000), 2**53 + rng.randint(0, 1000)])
    sku = rng.choice(["SKU-", "Größe-", "品-", "a b/"]) + str(rng.randint(0, 10**6))
    return {
        "id": i,
        "sku": sku,
        "category_id": category,
        "price_unscaled": price_unscaled,
        "weight": weight,
        "ref": None if rng.random() < 0.2 else str(uuid.UUID(int=rng.getrandbits(128))),
        "updated_at": f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T10:3{rng.randint(0, 9)}:56.{rng.randint(0, 999999):06d}Z",
        "release_date": None if rng.random() < 0.2 else rng.randint(-1000, 30000),
        "active": rng.random() < 0.5,
    }


def avro_after(r, v2, rng):
    after = {
        "id": r["id"],
        "sku": r["sku"],
        "category_id": r["category_id"],
        "price": Decimal(r["price_unscaled"]).scaleb(-2),
        "weight": None if r["weight"] is None else {
            "scale": r["weight"][1],
            "value": r["weight"][0].to_bytes((r["weight"][0].bit_length() + 8) // 8 or 1, "big", signed=True),
        },
        "ref": r["ref"],
        "updated_at": r["updated_at"],
        "release_date": r["release_date"],
        "active": r["active"],
    }
    if v2:
        after["color"] = rng.choice([None, "red", "blue"])
    return after


def json_after(r):
    return {
        "id": r["id"],
        "sku": r["sku"],
        "category_id": r["category_id"],
        "price": plain(r["price_unscaled"], 2),
        "weight": None if r["weight"] is None else plain(*r["weight"]),
        "ref": r["ref"],
        "updated_at": r["updated_at"],
        "release_date": r["release_date"],
        "active": r["active"],
    }


def source(lsn):
    return {"version": "3.6.1.Final", "connector": "postgresql", "name": "shop", "ts_ms": 1700000000000 + lsn,
            "db": "shop", "sequence": f'["{lsn - 1}","{lsn}"]', "ts_us": (1700000000000 + lsn) * 1000,
            "schema": "public", "table": "avro_products", "txId": lsn, "lsn": lsn}


def main():
    rows, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    with open(out, "w") as f:
        for i in range(1, rows + 1):
            r = row(rng, i)
            v2 = i % 3 == 0
            lsn = 1000 + i
            value = {"before": None, "after": avro_after(r, v2, rng), "source": source(lsn), "op": "c", "ts_ms": None}
            f.write(json.dumps({
                "key_avro": framed(1, KEY, {"id": r["id"]}).hex(),
                "value_avro": framed(3 if v2 else 2, V2 if v2 else V1, value).hex(),
                "key_json": {"id": r["id"]},
                "value_json": {"before": None, "after": json_after(r), "source": source(lsn), "op": "c", "ts_ms": None},
            }) + "\n")


if __name__ == "__main__":
    main()
