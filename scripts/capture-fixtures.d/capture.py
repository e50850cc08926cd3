#!/usr/bin/env python3
"""Writes the fixture files of scripts/capture-fixtures.

Called by that script once the records are in Kafka and dumped under WORK;
picks one record per case, rewrites the random table suffix away and writes
WORK/out/<case>.json plus WORK/out/README.md. Arguments, in order:

    WORK PREFIX TOPIC_PREFIX PLACEHOLDER PG_VERSION CONNECTOR_STATUS
    CONNECTOR_CONFIG CONNECT_INFO TOAST_INFO SKIPPED_OPS

(CONNECTOR_STATUS, CONNECTOR_CONFIG, CONNECT_INFO and SKIPPED_OPS as JSON
text, as the script captured them).
"""
import datetime
import json
import os
import re
import sys

work, prefix, topic_prefix, placeholder, pg_version, status, config, connect_info, toast_info, skipped = sys.argv[1:]
status, config, connect_info, skipped = json.loads(status), json.loads(config), json.loads(connect_info), json.loads(skipped)
stable = "fx_"

def unsuffix(x):
    """Rewrite fx_<hex>_ to fx_ in every string and object key; keep all else as captured."""
    if isinstance(x, str):
        return x.replace(prefix, stable)
    if isinstance(x, list):
        return [unsuffix(v) for v in x]
    if isinstance(x, dict):
        return {unsuffix(k): unsuffix(v) for k, v in x.items()}
    return x

line_re = re.compile(r"^Partition:(\d+)\tOffset:(\d+)\t(.*)$")
records = []
for table in ("products", "orders", "order_items", "carts"):
    topic = f"{topic_prefix}.public.{prefix}{table}"
    with open(os.path.join(work, f"records-{table}.txt"), encoding="utf-8") as f:
        for line in f:
            m = line_re.match(line.rstrip("\n"))
            if not m:
                continue
            key_text, value_text = m.group(3).split("\t", 1)
            records.append({
                "table": table,
                "file": {
                    "captured_by": "scripts/capture-fixtures",
                    "topic": unsuffix(topic),
                    "partition": int(m.group(1)),
                    "offset": int(m.group(2)),
                    "key": unsuffix(json.loads(key_text)),
                    "value": unsuffix(json.loads(value_text)),
                },
            })

def payload(r):
    v = r["file"]["value"]
    return None if v is None else v["payload"]

def row(r, side):
    p = payload(r)
    return (p or {}).get(side) or {}

def find(table, pred):
    return [r for r in records if r["table"] == table and pred(r)]

def op_is(op, side, **cols):
    def pred(r):
        p = payload(r)
        return p is not None and p.get("op") == op and all(row(r, side).get(k) == v for k, v in cols.items())
    return pred

def tombstone_after(table, delete):
    d = delete["file"]
    return [r for r in records if r["table"] == table and r["file"]["value"] is None
            and r["file"]["partition"] == d["partition"] and r["file"]["offset"] == d["offset"] + 1]

cases = {
    "insert": find("products", op_is("c", "after", id=1)),
    "update_default": find("products", op_is("u", "after", id=1)),
    "toast_update": find("products", op_is("u", "after", id=2)),
    "nulls_insert": find("products", op_is("c", "after", id=3)),
    "delete_default": find("products", op_is("d", "before", id=1)),
    "update_full_fk_move": find("orders", op_is("u", "after", id=10)),
    "delete_full": find("orders", op_is("d", "before", id=10)),
    "composite_pk_insert": find("order_items", op_is("c", "after", order_id=10, line_no=1)),
    "truncate": find("carts", lambda r: payload(r) is not None and payload(r).get("op") == "t"),
}
if len(cases["delete_full"]) == 1:
    cases["delete_full_tombstone"] = tombstone_after("orders", cases["delete_full"][0])

problems = []
for name, found in cases.items():
    if name == "truncate":
        if len(found) > 1:
            problems.append(f"truncate: {len(found)} records")
        continue
    if len(found) != 1:
        problems.append(f"{name}: expected exactly one record, found {len(found)}")
if "delete_full_tombstone" not in cases:
    problems.append("delete_full_tombstone: no delete_full record to follow")
if problems:
    sys.exit("cannot pick the records: " + "; ".join(problems))
truncate_emitted = bool(cases["truncate"])
if not truncate_emitted:
    del cases["truncate"]
chosen = {name: found[0] for name, found in cases.items()}

# Sanity checks on what the fixtures are meant to show.
def check(cond, msg):
    if not cond:
        problems.append(msg)

for name, r in chosen.items():
    p = payload(r)
    if p is None:
        continue
    src = p.get("source", {})
    for field in ("lsn", "ts_ms", "ts_us", "txId", "table"):
        check(field in src, f"{name}: source.{field} missing")
    check("ts_us" in p, f"{name}: payload.ts_us missing")
check(payload(chosen["update_default"])["before"] is None, "update_default: before is not null")
check(row(chosen["toast_update"], "after").get("description") == placeholder, "toast_update: no TOAST placeholder")
b, a = row(chosen["update_full_fk_move"], "before"), row(chosen["update_full_fk_move"], "after")
check(b.get("customer_id") == 100 and a.get("customer_id") == 200, "update_full_fk_move: before/after customer_id not 100/200")
check(payload(chosen["delete_full"])["after"] is None and row(chosen["delete_full"], "before").get("status") == "reassigned",
      "delete_full: after not null or before image not full")
check(chosen["delete_full_tombstone"]["file"]["value"] is None, "delete_full_tombstone: value not null")
check(payload(chosen["delete_default"])["after"] is None, "delete_default: after not null")
check(set(chosen["composite_pk_insert"]["file"]["key"]["payload"]) == {"order_id", "line_no"}, "composite_pk_insert: key is not (order_id, line_no)")
check(all(v is None for k, v in row(chosen["nulls_insert"], "after").items() if k not in ("id", "sku")), "nulls_insert: a nullable column is not null")
if problems:
    sys.exit("the captured records are not what the cases need: " + "; ".join(problems))

# Write the fixtures.
out = os.path.join(work, "out")
for name, r in sorted(chosen.items()):
    with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(r["file"], f, indent=2, ensure_ascii=False)
        f.write("\n")

def describe(name, r):
    p = payload(r)
    f = r["file"]
    where = f"`{f['topic']}` partition {f['partition']} offset {f['offset']}"
    if p is None:
        return f"tombstone (value null), key {json.dumps(f['key']['payload'])}; {where}"
    bits = [f"op `{p['op']}`", "before " + ("null" if p.get("before") is None else "present"),
            "after " + ("null" if p.get("after") is None else "present")]
    if name == "toast_update":
        bits.append(f"after.description is `{placeholder}`")
    if name == "delete_default":
        nonnull = [f"`{k}` = {json.dumps(v, ensure_ascii=False)}" for k, v in row(r, "before").items() if v is not None]
        bits.append("non-null in before: " + ", ".join(nonnull))
    return "; ".join(bits) + f"; {where}"

# Summary lines for the caller.
for name, r in sorted(chosen.items()):
    print(f"[capture-fixtures] {name}.json: {describe(name, r)}", file=sys.stderr)

# README.
purpose = {
    "insert": "INSERT of a row using every column type of `fx_products` (REPLICA IDENTITY DEFAULT).",
    "update_default": "UPDATE under REPLICA IDENTITY DEFAULT that does not change the key: `before` is null.",
    "toast_update": f"UPDATE of a row whose `description` ({toast_info} bytes of random hex, stored out of line in TOAST) is not touched: under REPLICA IDENTITY DEFAULT PostgreSQL does not log the unchanged TOAST value and Debezium puts the placeholder `" + placeholder + "` in `after.description`.",
    "nulls_insert": "INSERT with NULL in every nullable column.",
    "delete_default": "DELETE under REPLICA IDENTITY DEFAULT: PostgreSQL logs only the primary key, so `before` has the real `id` and every other column is filled in by Debezium: null for nullable columns, and a type default for NOT NULL ones (the NOT NULL `sku` comes out as an empty string, not its real value).",
    "update_full_fk_move": "UPDATE under REPLICA IDENTITY FULL moving the foreign-key-like column `customer_id` from 100 to 200: `before` is the full old row.",
    "delete_full": "DELETE under REPLICA IDENTITY FULL: `before` is the full old row.",
    "delete_full_tombstone": "The tombstone Debezium writes right after `delete_full` (same key, same partition, next offset, value null).",
    "composite_pk_insert": "INSERT into a table with a composite primary key `(order_id, line_no)`: the key has both fields.",
    "truncate": "TRUNCATE (op `t`): no key, no before/after.",
}
sql_of = {}
setup_before = {}
pending = []
with open(os.path.join(work, "steps.tsv"), encoding="utf-8") as f:
    for line in f:
        line = line.rstrip("\n")
        if not line:
            continue
        name, sql = line.split("\t", 1)
        sql = sql.replace("@T@", stable)
        if name == "-":
            pending.append(sql)
        else:
            sql_of[name] = sql
            setup_before[name] = pending
            pending = []
sql_of["delete_full_tombstone"] = sql_of["delete_full"]
setup_before["delete_full_tombstone"] = setup_before["delete_full"]
with open(os.path.join(work, "ddl.sql"), encoding="utf-8") as f:
    ddl = f.read().replace("@T@", stable).strip()

shown_config = {k: v for k, v in sorted(config.items()) if k != "database.password"}
lines = []
w = lines.append
w("# Debezium change-event fixtures")
w("")
w("Real records captured from the local stack (`scripts/stack up`): PostgreSQL →")
w("Debezium PostgreSQL connector (pgoutput) → Kafka, read back with Kafka's")
w("ConsoleConsumer. One record per file. Nothing here is hand-written; to")
w("regenerate, with the stack running:")
w("")
w("    scripts/capture-fixtures")
w("")
w("The script creates fresh tables `fx_<8 hex>_*`, runs the SQL below, waits for")
w("the records, writes these files and drops the tables. Reruns change the LSNs,")
w("timestamps, transaction ids, partitions and offsets, nothing else.")
w("")
w("## Stack")
w("")
w(f"- Debezium PostgreSQL connector {status['connector']['version']} (`{config['connector.class']}`)")
w(f"- Kafka / Kafka Connect {connect_info.get('version')} (KRaft, one node)")
w(f"- {pg_version}")
w("- Converters: `org.apache.kafka.connect.json.JsonConverter` for keys and values, `schemas.enable=true`")
w("  (every key and value is `{\"schema\": ..., \"payload\": ...}`)")
w(f"- Captured {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')} with run suffix `{prefix}`")
w("")
w("Connector configuration (`GET /connectors/shop-postgres/config`, password left out):")
w("")
w("```json")
w(json.dumps(shown_config, indent=2))
w("```")
w("")
w("## File format")
w("")
w("```json")
w('{"captured_by": "scripts/capture-fixtures", "topic": "...", "partition": N, "offset": N,')
w(' "key": <Kafka key parsed as JSON, or null>, "value": <Kafka value parsed as JSON, or null for a tombstone>}')
w("```")
w("")
w("`partition` and `offset` are where the record was in Kafka. The Kafka record")
w("timestamp and headers are not kept.")
w("")
w("**The one rewrite:** the tables were really named `fx_<8 hex>_<table>` (this run:")
w(f"`{prefix}<table>`) so that reruns never share topics. Every occurrence of that")
w("prefix in any string or object key (the `topic` field, `source.table`, the")
w("schema names such as `shop.public.fx_products.Key` / `.Value` / `.Envelope`) was")
w("replaced by `fx_`, giving stable names like `shop.public.fx_products`. Everything")
w("else (`source.lsn`, `source.sequence`, `source.txId`, `ts_ms` / `ts_us` / `ts_ns`,")
w("values, schemas, field order) is exactly as captured. Large integers such as")
w("`ts_ns` and `category_id = 9007199254740993` (2^53 + 1) are kept exactly; parse")
w("them as 64-bit integers, not doubles.")
w("")
w("## Tables")
w("")
w("```sql")
w(ddl)
w("```")
w("")
w("How the column types of `insert.json` came out (from its `after` schema and payload):")
w("")
w("| column | Connect type | schema name | captured value |")
w("|---|---|---|---|")
after_schema = next(f for f in chosen["insert"]["file"]["value"]["schema"]["fields"] if f["field"] == "after")
for fld in after_schema["fields"]:
    v = json.dumps(row(chosen["insert"], "after").get(fld["field"]), ensure_ascii=False).replace("|", "\\|")
    w(f"| `{fld['field']}` | {fld['type']}{'' if fld['optional'] else ' (required)'} | {fld.get('name') or ''} | `{v}` |")
w("")
w("Each statement below ran in its own transaction (psql autocommit), in this order,")
w("as the `cdc` user.")
w("")
w("## Files")
w("")
order = ["insert", "update_default", "toast_update", "nulls_insert", "delete_default",
         "update_full_fk_move", "delete_full", "delete_full_tombstone", "composite_pk_insert", "truncate"]
for name in order:
    if name not in chosen:
        continue
    r = chosen[name]
    w(f"### `{name}.json`")
    w("")
    w(purpose[name])
    w("")
    w(f"Captured: {describe(name, r)}.")
    w("")
    w("```sql")
    for s in setup_before[name]:
        w("-- setup (its record is not kept):")
        w(s)
    if name == "delete_full_tombstone":
        w("-- the same statement as delete_full.json")
    w(sql_of[name])
    w("```")
    w("")
if not truncate_emitted:
    w("### Truncate: no file")
    w("")
    w("```sql")
    for s in setup_before["truncate"]:
        w("-- setup:")
        w(s)
    w(sql_of["truncate"])
    w("-- then, to show that nothing was emitted in between:")
    w(pending[0] if pending else "")
    w("```")
    w("")
    set_text = "does not set `skipped.operations`" if skipped["value"] in (None, "") else f"sets `skipped.operations` to `{skipped['value']}`"
    w("The script runs a TRUNCATE but Debezium emitted nothing for it. The connector")
    w(f"{set_text}; its default in {status['connector']['version']} is `{skipped['default']}`")
    w("(as reported by Kafka Connect's `PUT /connector-plugins/PostgresConnector/config/validate`),")
    w("and `t` there means truncates are skipped while streaming, although the")
    w("publication does publish them (`pubtruncate`). The `fx_carts` topic held only")
    w("the two inserts around the TRUNCATE.")
    w("")
    w("To get truncate events the connector needs `\"skipped.operations\": \"none\"`")
    w("(or a list without `t`). The Debezium documentation describes the event, not")
    w("observed here: a record on the table's topic with no key, `op: \"t\"`, a")
    w("`source` block and no `before` / `after`. With no key it can land on any")
    w("partition, so it is not ordered with the table's row events. The script saves")
    w("it as `truncate.json` if it ever sees one. The running connector's")
    w("configuration was deliberately left unchanged.")
    w("")
with open(os.path.join(work, "out", "README.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines).rstrip("\n") + "\n")
