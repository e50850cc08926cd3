//! Debezium JSON (JsonConverter with or without schemas).

use serde_json::{Map, Value};

use super::{table_from_topic, DecodeError, DecodeErrorKind};
use crate::event::{ChangeEvent, Decoded, KafkaRecord, Op, Position, Row};

/// Decodes a record whose key and value are JSON (no Avro configured).
pub fn decode_json(record: &KafkaRecord) -> Result<Decoded, DecodeError> {
    super::decode(record, None)
}

/// The Debezium logic over already parsed key and value (from JSON bytes or
/// from Avro turned into the same JSON).
pub(super) fn decode_parsed(record: &KafkaRecord, key: Option<Value>, value: Value) -> Result<Decoded, DecodeError> {
    let (schema_name, payload) = unwrap_payload(value);
    let payload = match payload {
        // `{"schema": ..., "payload": null}` is how JsonConverter writes a null value.
        Value::Null => return Ok(Decoded::Tombstone),
        Value::Object(map) => map,
        other => {
            return Err(DecodeError::new(
                DecodeErrorKind::UnexpectedShape,
                format!("value is JSON {} where an object was expected", kind_of(&other)),
            ))
        }
    };
    let key = decode_key(key)?;
    if let Some(kind) = marked_kind(record, schema_name.as_deref(), &payload) {
        return Ok(kind);
    }
    if payload.get("op").and_then(Value::as_str) == Some("m") {
        return super::message::logical_message(record, payload).map(Decoded::Message);
    }
    if payload.contains_key("op") {
        return envelope(record, payload, key).map(Decoded::Change);
    }
    flattened(record, payload, key).map(Decoded::Change)
}

/// Records that are not row changes, by what Debezium marks them with: the
/// schema name (JsonConverter wrapper or Avro), else the topic Debezium
/// writes them to. Field names alone never decide: a table may well have
/// columns named `ddl` or `status`. Without a schema name, transaction
/// metadata must come from a `<prefix>.transaction` topic and schema changes
/// from the bare `<prefix>` topic (neither is named like a table topic,
/// `<prefix>.<schema>.<table>`); the pipeline also refuses to skip one of
/// these on the topic of a configured table.
fn marked_kind(record: &KafkaRecord, schema_name: Option<&str>, payload: &Map<String, Value>) -> Option<Decoded> {
    let topic = record.topic.as_str();
    match schema_name {
        Some("io.debezium.connector.common.Heartbeat") => return Some(Decoded::Heartbeat),
        Some("io.debezium.connector.common.TransactionMetadataValue") => return Some(Decoded::TransactionMetadata),
        Some(name) if name.starts_with("io.debezium.connector.") && name.ends_with(".SchemaChangeValue") => {
            return Some(Decoded::SchemaChange)
        }
        _ => {}
    }
    if topic.starts_with("__debezium-heartbeat") {
        return Some(Decoded::Heartbeat);
    }
    if schema_name.is_some() || table_from_topic(topic).is_some() || payload.contains_key("op") {
        return None;
    }
    if topic.ends_with(".transaction") && payload.contains_key("status") && payload.contains_key("id") {
        return Some(Decoded::TransactionMetadata);
    }
    if payload.contains_key("ddl") && (payload.contains_key("databaseName") || payload.contains_key("tableChanges")) {
        return Some(Decoded::SchemaChange);
    }
    None
}

/// JsonConverter with `schemas.enable=true` wraps everything in `{schema,
/// payload}`; the schema's name comes along when there is one.
fn unwrap_payload(value: Value) -> (Option<String>, Value) {
    match value {
        Value::Object(mut map) if map.len() == 2 && map.contains_key("schema") && map.contains_key("payload") => {
            let name = match map.remove("schema") {
                Some(Value::Object(schema)) => schema.get("name").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            };
            (name, map.remove("payload").unwrap_or(Value::Null))
        }
        other => (None, other),
    }
}

/// The table named in the record must be the table its topic carries
/// (default topic naming): a record on another table's topic would
/// otherwise invalidate the wrong entity's keys.
fn check_table(record: &KafkaRecord, table: &str) -> Result<(), DecodeError> {
    match table_from_topic(&record.topic) {
        Some(topic_table) if topic_table != table => Err(DecodeError::new(
            DecodeErrorKind::TableMismatch,
            format!(
                "the record names table {table:?} but topic {:?} carries table {topic_table:?}",
                record.topic
            ),
        )),
        _ => Ok(()),
    }
}

fn decode_key(key: Option<Value>) -> Result<Option<Row>, DecodeError> {
    let Some(value) = key else {
        return Ok(None);
    };
    match unwrap_payload(value).1 {
        Value::Object(map) => Ok(Some(map)),
        Value::Null => Ok(None),
        other => Err(DecodeError::new(
            DecodeErrorKind::BadKey,
            format!(
                "key is JSON {} where an object of primary-key columns was expected",
                kind_of(&other)
            ),
        )),
    }
}

fn envelope(
    record: &KafkaRecord,
    mut payload: Map<String, Value>,
    key: Option<Row>,
) -> Result<ChangeEvent, DecodeError> {
    let op_code = match payload.get("op") {
        Some(Value::String(code)) => code.clone(),
        _ => {
            return Err(DecodeError::new(
                DecodeErrorKind::UnexpectedShape,
                "field `op` is not a string",
            ))
        }
    };
    let op_code = op_code.as_str();
    let op = Op::parse(op_code)
        .ok_or_else(|| DecodeError::new(DecodeErrorKind::UnknownOp, format!("unknown op {op_code:?}")))?;
    let source = match payload.remove("source") {
        Some(Value::Object(source)) => source,
        // Logical decoding messages still carry `source`; anything without one
        // is not Debezium's envelope.
        _ => {
            return Err(DecodeError::new(
                DecodeErrorKind::UnexpectedShape,
                "field `source` is missing or not an object",
            ))
        }
    };
    let before = image(&mut payload, "before")?;
    let after = image(&mut payload, "after")?;
    match op {
        Op::Create | Op::Read if after.is_none() => {
            return Err(DecodeError::new(
                DecodeErrorKind::UnexpectedShape,
                format!("op {op_code:?} without an `after` image"),
            ))
        }
        Op::Update if after.is_none() => {
            return Err(DecodeError::new(
                DecodeErrorKind::UnexpectedShape,
                "op \"u\" without an `after` image",
            ))
        }
        _ => {}
    }
    let table = source_table(&source)
        .or_else(|| table_from_topic(&record.topic))
        .ok_or_else(|| {
            DecodeError::new(
                DecodeErrorKind::UnexpectedShape,
                "cannot tell the table: no `source.table`",
            )
        })?;
    check_table(record, &table)?;
    // A commit time only decides whether an event is moot; one that
    // overflows in microseconds is treated as unknown (never moot).
    let commit_time_us = micros(&source, "ts_us", "ts_ms").or_else(|| micros(&payload, "ts_us", "ts_ms"));
    let position = source_position(record, &source)?;
    let event = ChangeEvent {
        table,
        op,
        before,
        after,
        key,
        position,
        commit_time_us,
    };
    check_key(&event)?;
    Ok(event)
}

/// The message key must name the row the value describes, in both images.
/// Debezium emits a primary-key change as a delete of the old key and a
/// create of the new one, never as one update, so an update whose before
/// image holds another value for a key column describes two rows under one
/// key: it is refused as a key mismatch (dead letter, then the entity's
/// namespace or a stall) rather than bumped from one image only.
fn check_key(event: &ChangeEvent) -> Result<(), DecodeError> {
    let image = event.after.as_ref().or(event.before.as_ref());
    match (&event.key, image) {
        (None, None) if event.op == Op::Delete => Err(DecodeError::new(
            DecodeErrorKind::MissingKey,
            "a delete with neither a message key nor a before image names no row",
        )),
        (Some(key), _) if key.values().any(Value::is_null) => Err(DecodeError::new(
            DecodeErrorKind::MissingKey,
            format!(
                "primary-key column {:?} is null in the message key",
                key.iter().find(|(_, v)| v.is_null()).map_or("", |(k, _)| k.as_str())
            ),
        )),
        (Some(key), Some(row)) => {
            for (column, value) in key {
                match row.get(column) {
                    Some(v) if v == value => {}
                    Some(v) => {
                        return Err(DecodeError::new(
                            DecodeErrorKind::KeyMismatch,
                            format!("key column {column:?} is {value} in the key but {v} in the row"),
                        ))
                    }
                    None => {
                        return Err(DecodeError::new(
                            DecodeErrorKind::KeyMismatch,
                            format!("key column {column:?} is not a column of the row (wrong topic for this key?)"),
                        ))
                    }
                }
            }
            // The before image of an update (when the after image was the
            // one checked): a key column it carries must hold the same value.
            // A column it lacks is no evidence (minimal row images).
            if let (Some(_), Some(before)) = (&event.after, &event.before) {
                for (column, value) in key {
                    if let Some(v) = before.get(column).filter(|v| *v != value) {
                        return Err(DecodeError::new(
                            DecodeErrorKind::KeyMismatch,
                            format!(
                                "key column {column:?} is {value} in the key and the after image but {v} in the before image (a primary-key change is a delete and a create, never one update)"
                            ),
                        ));
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn image(payload: &mut Map<String, Value>, name: &str) -> Result<Option<Row>, DecodeError> {
    match payload.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(row)) => Ok(Some(row)),
        Some(other) => Err(DecodeError::new(
            DecodeErrorKind::UnexpectedShape,
            format!(
                "field `{name}` is JSON {} where a row object was expected",
                kind_of(&other)
            ),
        )),
    }
}

fn source_table(source: &Map<String, Value>) -> Option<String> {
    let table = source.get("table")?.as_str()?;
    // PostgreSQL and SQL Server name the schema; MySQL only the database.
    let schema = source
        .get("schema")
        .and_then(Value::as_str)
        .or_else(|| source.get("db").and_then(Value::as_str))?;
    Some(format!("{schema}.{table}"))
}

/// The event's place in its source's log. Positions become guards in Redis
/// (an event at or below the guard changes nothing), so one that is not a
/// position Debezium can write would silence every later change of its keys:
/// it is a dead letter, never a guard. Debezium writes LSNs, binlog
/// positions and rows as Java `long`s (never negative, at most 2^63-1), and
/// for PostgreSQL `sequence` is `["<lastCommitLsn>","<lsn>"]` whose second
/// element is the event's own `lsn`. Rejected: negative, non-numeric,
/// fractional or overflowing values, a `sequence` that is not such a pair,
/// and a `sequence` whose LSN disagrees with `lsn`. (The last commit LSN may
/// be above the event's LSN: concurrent transactions interleave in the WAL.)
pub(super) fn source_position(record: &KafkaRecord, source: &Map<String, Value>) -> Result<Position, DecodeError> {
    let server = source.get("name").and_then(Value::as_str).unwrap_or("");
    let connector = source.get("connector").and_then(Value::as_str).unwrap_or("");
    match connector {
        "postgresql" => {
            let lsn = log_number(source, "lsn")?;
            match (sequence(source)?, lsn) {
                (Some((_, Some(seq_lsn))), Some(lsn)) if seq_lsn != lsn => Err(bad_position(format!(
                    "`source.sequence` names lsn {seq_lsn} but `source.lsn` is {lsn}"
                ))),
                (Some((last_commit, seq_lsn)), lsn) => match seq_lsn.or(lsn) {
                    Some(lsn) => Ok(Position::postgres(server, last_commit.unwrap_or(0), lsn)),
                    None => Err(bad_position("`source.sequence` and `source.lsn` name no lsn")),
                },
                (None, Some(lsn)) => Ok(Position::postgres_lsn_only(server, lsn)),
                (None, None) => Ok(Position::kafka(&record.topic, record.partition, record.offset)),
            }
        }
        "mysql" | "mariadb" => {
            let file_number = match source.get("file") {
                None | Some(Value::Null) => None,
                Some(Value::String(file)) => {
                    let number = file.rsplit('.').next().unwrap_or("");
                    match digits(number).filter(|n| *n < MYSQL_FILE_LIMIT) {
                        Some(n) => Some(n),
                        None => return Err(bad_position(format!("binlog file name {file:?} has no file number"))),
                    }
                }
                Some(other) => return Err(bad_position(format!("`source.file` is JSON {}", kind_of(other)))),
            };
            let pos = log_number(source, "pos")?;
            let row = log_number(source, "row")?.unwrap_or(0);
            if row >= MYSQL_ROW_LIMIT {
                return Err(bad_position(format!("`source.row` {row} is beyond any binlog event")));
            }
            let gtid = if connector == "mariadb" {
                mariadb_gtid(source)?
            } else {
                None
            };
            match (file_number, pos, gtid) {
                (Some(file), Some(pos), Some((domain, seq))) => {
                    Ok(Position::mariadb_gtid(server, domain, seq, file, pos, row))
                }
                (Some(file), Some(pos), None) => Ok(Position::mysql(server, file, pos, row)),
                _ => Ok(Position::kafka(&record.topic, record.partition, record.offset)),
            }
        }
        _ => Ok(Position::kafka(&record.topic, record.partition, record.offset)),
    }
}

/// The MariaDB connector's `source.gtid`, `domain-server-seq` (e.g. `0-1-42`):
/// the domain and the sequence number. Absent or null: `None` (the binlog
/// coordinates alone then order the change). Any other shape is a bad
/// position: the connector writes none.
fn mariadb_gtid(source: &Map<String, Value>) -> Result<Option<(u64, u64)>, DecodeError> {
    let text = match source.get("gtid") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text,
        Some(other) => return Err(bad_position(format!("`source.gtid` is JSON {}", kind_of(other)))),
    };
    let mut parts = text.split('-');
    let (Some(domain), Some(server_id), Some(seq), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_position(format!("`source.gtid` {text:?} is not domain-server-seq")));
    };
    match (digits(domain), digits(server_id), digits(seq)) {
        // MariaDB's domain and server ids are 32-bit.
        (Some(domain), Some(server_id), Some(seq))
            if domain <= u64::from(u32::MAX) && server_id <= u64::from(u32::MAX) =>
        {
            Ok(Some((domain, seq)))
        }
        _ => Err(bad_position(format!("`source.gtid` {text:?} is not domain-server-seq"))),
    }
}

// Position::mysql prints the file number and the row in 10 digits each.
const MYSQL_FILE_LIMIT: u64 = 10_000_000_000;
const MYSQL_ROW_LIMIT: u64 = 10_000_000_000;

fn bad_position(detail: impl Into<String>) -> DecodeError {
    DecodeError::new(DecodeErrorKind::BadPosition, detail)
}

/// Decimal digits only (no sign, no spaces), as a `long` Debezium can write.
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().filter(|n| *n <= i64::MAX as u64)
}

/// A log position field: absent or null is `None`; anything but a
/// non-negative integer within a Java `long` is a bad position.
fn log_number(map: &Map<String, Value>, name: &str) -> Result<Option<u64>, DecodeError> {
    log_value(map.get(name)).map_err(|shown| bad_position(format!("`{name}` is {shown}, not a log position")))
}

fn log_value(value: Option<&Value>) -> Result<Option<u64>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= i64::MAX as u64 => Ok(Some(v)),
            _ => Err(n.to_string()),
        },
        Some(Value::String(s)) => digits(s).map(Some).ok_or_else(|| format!("{s:?}")),
        Some(other) => Err(format!("JSON {}", kind_of(other))),
    }
}

/// `source.sequence` is a JSON array encoded as a string: `["lastCommitLsn","lsn"]`,
/// either element possibly null. Absent or null: `None`.
#[allow(clippy::type_complexity)]
fn sequence(source: &Map<String, Value>) -> Result<Option<(Option<u64>, Option<u64>)>, DecodeError> {
    let text = match source.get("sequence") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(bad_position(format!(
                "`source.sequence` is JSON {}, not a string",
                kind_of(other)
            )))
        }
    };
    let parts: Vec<Value> = serde_json::from_str(text)
        .map_err(|_| bad_position(format!("`source.sequence` {text:?} is not a JSON array")))?;
    let [last_commit, lsn] = parts.as_slice() else {
        return Err(bad_position(format!(
            "`source.sequence` {text:?} has {} elements, not [lastCommitLsn, lsn]",
            parts.len()
        )));
    };
    let element = |v: &Value| {
        log_value(Some(v)).map_err(|shown| bad_position(format!("`source.sequence` {text:?} holds {shown}")))
    };
    Ok(Some((element(last_commit)?, element(lsn)?)))
}

/// Records flattened by `ExtractNewRecordState`: the row itself, plus
/// optional `__`-prefixed metadata fields.
fn flattened(record: &KafkaRecord, mut row: Map<String, Value>, key: Option<Row>) -> Result<ChangeEvent, DecodeError> {
    let meta: Vec<String> = row.keys().filter(|k| k.starts_with("__")).cloned().collect();
    let mut fields = Map::new();
    for name in meta {
        if let Some(v) = row.remove(&name) {
            fields.insert(name, v);
        }
    }
    let deleted = match fields.get("__deleted") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    };
    let op = match fields.get("__op").and_then(Value::as_str) {
        Some(code) => Op::parse(code)
            .ok_or_else(|| DecodeError::new(DecodeErrorKind::UnknownOp, format!("unknown __op {code:?}")))?,
        None if deleted => Op::Delete,
        // Without `__op` a flattened row is an upsert: treat it as an update,
        // which renders from the new image and knows nothing of the old one.
        None => Op::Update,
    };
    if row.is_empty() && key.is_none() {
        return Err(DecodeError::new(
            DecodeErrorKind::UnexpectedShape,
            "record has neither row fields nor a key",
        ));
    }
    let table = match fields.get("__table").and_then(Value::as_str) {
        Some(table) => {
            let schema = fields
                .get("__schema")
                .and_then(Value::as_str)
                .or_else(|| fields.get("__db").and_then(Value::as_str));
            match schema {
                Some(schema) => format!("{schema}.{table}"),
                None => table_from_topic(&record.topic)
                    .and_then(|t| t.split_once('.').map(|(s, _)| format!("{s}.{table}")))
                    .unwrap_or_else(|| table.to_owned()),
            }
        }
        None => table_from_topic(&record.topic).ok_or_else(|| {
            DecodeError::new(
                DecodeErrorKind::UnexpectedShape,
                "flattened record without `__table` on a topic not named <prefix>.<schema>.<table>",
            )
        })?,
    };
    check_table(record, &table)?;
    let commit_time_us = micros(&fields, "__source_ts_us", "__source_ts_ms");
    let position = match log_number(&fields, "__lsn")? {
        Some(lsn) => {
            let server = record.topic.split('.').next().unwrap_or("");
            Position::postgres_lsn_only(server, lsn)
        }
        None => Position::kafka(&record.topic, record.partition, record.offset),
    };
    let (before, after) = if op == Op::Delete {
        (Some(row), None)
    } else {
        (None, Some(row))
    };
    let event = ChangeEvent {
        table,
        op,
        before,
        after,
        key,
        position,
        commit_time_us,
    };
    // Flattened or not, the message key must name the row it carries.
    check_key(&event)?;
    Ok(event)
}

/// A time in microseconds: the `us` field, else the `ms` field times 1000
/// (None where that overflows).
pub(super) fn micros(map: &Map<String, Value>, us: &str, ms: &str) -> Option<i64> {
    int_field(map, us).or_else(|| int_field(map, ms).and_then(|ms| ms.checked_mul(1000)))
}

/// Integers Debezium may print as numbers or, in some converters, as strings.
fn int_field(map: &Map<String, Value>, name: &str) -> Option<i64> {
    match map.get(name)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(topic: &str, key: Option<Value>, value: Option<Value>) -> KafkaRecord {
        KafkaRecord {
            topic: topic.to_owned(),
            partition: 1,
            offset: 42,
            key: key.map(|k| serde_json::to_vec(&k).unwrap()),
            value: value.map(|v| serde_json::to_vec(&v).unwrap()),
            timestamp_ms: None,
            headers: Vec::new(),
        }
    }

    fn pg_source(lsn: u64, sequence: &str) -> Value {
        json!({"version": "3.6.1.Final", "connector": "postgresql", "name": "shop", "ts_ms": 1700000000123i64,
               "ts_us": 1700000000123456i64, "db": "shop", "schema": "public", "table": "products",
               "lsn": lsn, "sequence": sequence, "txId": 7})
    }

    fn change(decoded: Decoded) -> ChangeEvent {
        match decoded {
            Decoded::Change(ev) => ev,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn envelope_without_wrapper() {
        let ev = change(
            decode_json(&record(
                "shop.public.products",
                Some(json!({"id": 1})),
                Some(json!({"before": null, "after": {"id": 1, "category_id": 3}, "source": pg_source(200, "[\"150\",\"200\"]"), "op": "c", "ts_ms": 1})),
            ))
            .unwrap(),
        );
        assert_eq!(ev.op, Op::Create);
        assert_eq!(ev.table, "public.products");
        assert_eq!(ev.after.unwrap()["category_id"], json!(3));
        assert_eq!(ev.key.unwrap()["id"], json!(1));
        assert_eq!(ev.position, Position::postgres("shop", 150, 200));
        assert_eq!(ev.commit_time_us, Some(1700000000123456));
    }

    #[test]
    fn envelope_with_schema_wrapper_on_key_and_value() {
        let value = json!({"schema": {"type": "struct"}, "payload": {"before": {"id": 1}, "after": null, "source": pg_source(300, "[null,\"300\"]"), "op": "d"}});
        let key = json!({"schema": {"type": "struct"}, "payload": {"id": 1}});
        let ev = change(decode_json(&record("shop.public.products", Some(key), Some(value))).unwrap());
        assert_eq!(ev.op, Op::Delete);
        assert_eq!(ev.before.unwrap()["id"], json!(1));
        assert_eq!(ev.position, Position::postgres("shop", 0, 300));
    }

    #[test]
    fn null_value_and_null_payload_are_tombstones() {
        assert_eq!(
            decode_json(&record("t.s.x", Some(json!({"id": 1})), None)).unwrap(),
            Decoded::Tombstone
        );
        let wrapped_null = json!({"schema": null, "payload": null});
        assert_eq!(
            decode_json(&record("t.s.x", None, Some(wrapped_null))).unwrap(),
            Decoded::Tombstone
        );
    }

    #[test]
    fn commit_time_falls_back_to_ts_ms() {
        let mut source = pg_source(1, "[\"0\",\"1\"]");
        source.as_object_mut().unwrap().remove("ts_us");
        let ev = change(
            decode_json(&record(
                "shop.public.products",
                None,
                Some(json!({"after": {"id": 1}, "source": source, "op": "u"})),
            ))
            .unwrap(),
        );
        assert_eq!(ev.commit_time_us, Some(1700000000123000));
    }

    #[test]
    fn mysql_position_uses_file_pos_row() {
        let source = json!({"connector": "mysql", "name": "inv", "db": "inventory", "table": "orders",
                            "file": "mysql-bin.000003", "pos": 154, "row": 2, "ts_ms": 5});
        let ev = change(
            decode_json(&record(
                "inv.inventory.orders",
                None,
                Some(json!({"after": {"id": 1}, "source": source, "op": "c"})),
            ))
            .unwrap(),
        );
        assert_eq!(ev.table, "inventory.orders");
        assert_eq!(ev.position, Position::mysql("inv", 3, 154, 2));
    }

    #[test]
    fn mariadb_gtid_orders_by_sequence_then_binlog_coordinates() {
        let decode_source = |source: Value| {
            decode_json(&record(
                "m.shop.orders",
                None,
                Some(json!({"after": {"id": 1}, "source": source, "op": "c"})),
            ))
        };
        let ev = change(
            decode_source(
                json!({"connector": "mariadb", "name": "m", "db": "shop", "table": "orders",
                "gtid": "0-1-42", "file": "mysql-bin.000003", "pos": 154, "row": 2}),
            )
            .unwrap(),
        );
        assert_eq!(ev.position, Position::mariadb_gtid("m", 0, 42, 3, 154, 2));
        assert_eq!(ev.position.source, "mariadb-gtid:m:0");
        // A later transaction on a failover target, whose binlog starts over.
        let later = Position::mariadb_gtid("m", 0, 43, 1, 4, 0);
        assert!(later.ordinal > ev.position.ordinal);
        // No GTID: the binlog coordinates alone, under the mysql source.
        let plain = change(
            decode_source(
                json!({"connector": "mariadb", "name": "m", "db": "shop", "table": "orders",
                "gtid": null, "file": "mysql-bin.000003", "pos": 154, "row": 2}),
            )
            .unwrap(),
        );
        assert_eq!(plain.position, Position::mysql("m", 3, 154, 2));
        for bad in [
            json!("0-1"),
            json!("0-1-x"),
            json!("-1-1-1"),
            json!("0-1-2-3"),
            json!(7),
            json!("0-1-99999999999999999999"),
        ] {
            let err = decode_source(
                json!({"connector": "mariadb", "name": "m", "db": "shop", "table": "orders",
                "gtid": bad, "file": "mysql-bin.000003", "pos": 154, "row": 2}),
            )
            .unwrap_err();
            assert_eq!(err.kind, DecodeErrorKind::BadPosition, "{bad}");
        }
    }

    #[test]
    fn unknown_connector_falls_back_to_kafka_offset() {
        let source = json!({"connector": "mongodb", "name": "m", "db": "d", "collection": "c", "table": "c"});
        let ev = change(
            decode_json(&record(
                "m.d.c",
                None,
                Some(json!({"after": {"id": 1}, "source": source, "op": "c"})),
            ))
            .unwrap(),
        );
        assert_eq!(ev.position, Position::kafka("m.d.c", 1, 42));
    }

    #[test]
    fn truncate_has_no_images() {
        let ev = change(
            decode_json(&record(
                "shop.public.products",
                None,
                Some(json!({"source": pg_source(9, "[\"1\",\"9\"]"), "op": "t"})),
            ))
            .unwrap(),
        );
        assert_eq!(ev.op, Op::Truncate);
        assert!(ev.before.is_none() && ev.after.is_none());
    }

    #[test]
    fn flattened_rows_with_metadata() {
        let value = json!({"id": 5, "category_id": 2, "__op": "u", "__table": "products", "__schema": "public", "__lsn": 777, "__source_ts_ms": 1000, "__deleted": "false"});
        let ev = change(decode_json(&record("shop.public.products", Some(json!({"id": 5})), Some(value))).unwrap());
        assert_eq!(ev.op, Op::Update);
        assert_eq!(ev.table, "public.products");
        assert!(ev.before.is_none());
        assert!(!ev.after.as_ref().unwrap().contains_key("__op"));
        assert_eq!(ev.position, Position::postgres_lsn_only("shop", 777));
        assert_eq!(ev.commit_time_us, Some(1_000_000));
    }

    #[test]
    fn flattened_delete_keeps_old_values_as_before() {
        let value = json!({"id": 5, "category_id": 2, "__deleted": "true"});
        let ev = change(decode_json(&record("shop.public.products", Some(json!({"id": 5})), Some(value))).unwrap());
        assert_eq!(ev.op, Op::Delete);
        assert_eq!(ev.before.unwrap()["category_id"], json!(2));
        assert_eq!(ev.position, Position::kafka("shop.public.products", 1, 42));
    }

    #[test]
    fn heartbeat_transaction_and_schema_change_are_not_row_changes() {
        let hb = record(
            "__debezium-heartbeat.shop",
            Some(json!({"serverName": "shop"})),
            Some(json!({"ts_ms": 1})),
        );
        assert_eq!(decode_json(&hb).unwrap(), Decoded::Heartbeat);
        let tx = record(
            "shop.transaction",
            None,
            Some(json!({"status": "END", "id": "571:53195832", "event_count": 2, "data_collections": []})),
        );
        assert_eq!(decode_json(&tx).unwrap(), Decoded::TransactionMetadata);
        let ddl = record(
            "inv",
            None,
            Some(
                json!({"source": {"connector": "mysql"}, "databaseName": "inventory", "ddl": "ALTER TABLE x", "tableChanges": []}),
            ),
        );
        assert_eq!(decode_json(&ddl).unwrap(), Decoded::SchemaChange);
    }

    #[test]
    fn keys_must_match_the_row_and_deletes_must_name_one() {
        let source = pg_source(1, "[\"1\",\"1\"]");
        let value = json!({"op": "u", "after": {"id": 1, "name": "x"}, "source": source});
        let mismatch = record("shop.public.products", Some(json!({"id": 2})), Some(value.clone()));
        assert_eq!(decode_json(&mismatch).unwrap_err().kind, DecodeErrorKind::KeyMismatch);
        let other_table = record("shop.public.products", Some(json!({"order_id": 1})), Some(value));
        // An update whose before image names another row: refused whole, not
        // bumped from the after image alone.
        let moved =
            json!({"op": "u", "before": {"id": 7, "name": "x"}, "after": {"id": 1, "name": "x"}, "source": source});
        let error = decode_json(&record("shop.public.products", Some(json!({"id": 1})), Some(moved))).unwrap_err();
        assert_eq!(error.kind, DecodeErrorKind::KeyMismatch);
        assert!(error.to_string().contains("before image"), "{error}");
        // A before image without the key column (a minimal image) is no evidence.
        let minimal = json!({"op": "u", "before": {"name": "x"}, "after": {"id": 1, "name": "y"}, "source": source});
        assert!(decode_json(&record("shop.public.products", Some(json!({"id": 1})), Some(minimal))).is_ok());
        assert_eq!(
            decode_json(&other_table).unwrap_err().kind,
            DecodeErrorKind::KeyMismatch
        );
        let nameless_delete = record(
            "shop.public.products",
            None,
            Some(json!({"op": "d", "before": null, "source": pg_source(1, "[\"1\",\"1\"]")})),
        );
        assert_eq!(
            decode_json(&nameless_delete).unwrap_err().kind,
            DecodeErrorKind::MissingKey
        );
    }

    #[test]
    fn confluent_framing_is_recognised() {
        let mut avro = record("shop.public.products", None, None);
        avro.value = Some(vec![0, 0, 0, 0, 7, 2, 4]);
        let error = decode_json(&avro).unwrap_err();
        assert_eq!(error.kind, DecodeErrorKind::UnsupportedFormat);
        assert!(error.detail.contains("Some(7)"), "{}", error.detail);
    }

    #[test]
    fn malformed_and_wrongly_typed_records_have_kinds() {
        let mut bad = record("shop.public.products", None, None);
        bad.value = Some(b"{not json".to_vec());
        assert_eq!(decode_json(&bad).unwrap_err().kind, DecodeErrorKind::Malformed);
        bad.value = Some(vec![0x05, 1, 2]);
        assert_eq!(decode_json(&bad).unwrap_err().kind, DecodeErrorKind::UnknownMagicByte);

        let wrong_op = record(
            "shop.public.products",
            None,
            Some(json!({"op": "x", "source": pg_source(1, "[\"1\",\"1\"]")})),
        );
        assert_eq!(decode_json(&wrong_op).unwrap_err().kind, DecodeErrorKind::UnknownOp);

        let wrong_after = record(
            "shop.public.products",
            None,
            Some(json!({"op": "c", "after": [1], "source": pg_source(1, "[\"1\",\"1\"]")})),
        );
        assert_eq!(
            decode_json(&wrong_after).unwrap_err().kind,
            DecodeErrorKind::UnexpectedShape
        );

        let array = record("shop.public.products", None, Some(json!([1, 2])));
        assert_eq!(decode_json(&array).unwrap_err().kind, DecodeErrorKind::UnexpectedShape);

        let mut bad_key = record(
            "shop.public.products",
            None,
            Some(json!({"op": "c", "after": {"id": 1}, "source": pg_source(1, "[\"1\",\"1\"]")})),
        );
        bad_key.key = Some(b"17".to_vec());
        assert_eq!(decode_json(&bad_key).unwrap_err().kind, DecodeErrorKind::BadKey);
    }

    fn pg(lsn: Value, sequence: Value) -> Value {
        let mut source = pg_source(0, "");
        source["lsn"] = lsn;
        source["sequence"] = sequence;
        json!({"op": "u", "after": {"id": 1}, "source": source})
    }

    #[test]
    fn positions_debezium_cannot_write_are_dead_letters_never_guards() {
        let kind = |value: Value| {
            decode_json(&record("shop.public.products", Some(json!({"id": 1})), Some(value)))
                .err()
                .map(|e| e.kind)
        };
        let bad = Some(DecodeErrorKind::BadPosition);
        assert_eq!(kind(pg(json!(-1), Value::Null)), bad, "negative lsn");
        assert_eq!(kind(pg(json!("12x"), Value::Null)), bad, "non-numeric lsn");
        assert_eq!(kind(pg(json!(1.5), Value::Null)), bad, "fractional lsn");
        assert_eq!(
            kind(pg(json!(9223372036854775808u64), Value::Null)),
            bad,
            "beyond a java long"
        );
        assert_eq!(
            kind(pg(json!(7000), json!("[\"18446744073709551615\",\"7000\"]"))),
            bad,
            "overflowing last commit lsn"
        );
        assert_eq!(
            kind(pg(json!(7000), json!("[\"10\",\"7001\"]"))),
            bad,
            "sequence lsn is not lsn"
        );
        assert_eq!(kind(pg(json!(7000), json!("[\"10\"]"))), bad, "one element");
        assert_eq!(kind(pg(json!(7000), json!("not json"))), bad);
        assert_eq!(kind(pg(json!(7000), json!("[\"-5\",\"7000\"]"))), bad);
        // A last commit above the event's lsn is normal: transactions interleave.
        assert_eq!(kind(pg(json!(7000), json!("[\"9000\",\"7000\"]"))), None);
        let flattened = json!({"id": 1, "__lsn": -1});
        assert_eq!(kind(flattened), bad, "flattened negative lsn");
        let mysql = json!({"op": "c", "after": {"id": 1}, "source": {"connector": "mysql", "name": "inv",
            "db": "public", "table": "products", "file": "mysql-bin.000003", "pos": -154, "row": 0}});
        assert_eq!(kind(mysql), bad, "negative binlog position");
    }

    #[test]
    fn rows_with_look_alike_columns_are_rows_on_table_topics() {
        let topic = "shop.public.products";
        for row in [
            json!({"id": 1, "ddl": "x", "tableChanges": []}),
            json!({"id": 1, "status": "END", "event_count": 2}),
            json!({"id": 1, "ts_ms": 5}),
        ] {
            let decoded = decode_json(&record(topic, Some(json!({"id": 1})), Some(row.clone()))).unwrap();
            assert!(matches!(decoded, Decoded::Change(_)), "{row}: {decoded:?}");
        }
        // The schema name marks them, whatever the topic.
        let tx = json!({"schema": {"type": "struct", "name": "io.debezium.connector.common.TransactionMetadataValue"},
                        "payload": {"status": "BEGIN", "id": "1:2", "event_count": null}});
        assert_eq!(
            decode_json(&record("custom-tx-topic", None, Some(tx))).unwrap(),
            Decoded::TransactionMetadata
        );
    }

    #[test]
    fn a_record_of_another_table_on_this_topic_is_a_dead_letter() {
        let mut source = pg_source(5, "[\"5\",\"5\"]");
        source["table"] = json!("orders");
        let value = json!({"op": "u", "after": {"id": 1}, "source": source});
        let error = decode_json(&record("shop.public.products", Some(json!({"id": 1})), Some(value))).unwrap_err();
        assert_eq!(error.kind, DecodeErrorKind::TableMismatch);
    }

    #[test]
    fn a_null_primary_key_is_a_dead_letter() {
        let value = json!({"op": "c", "after": {"id": null}, "source": pg_source(5, "[\"5\",\"5\"]")});
        let error = decode_json(&record("shop.public.products", Some(json!({"id": null})), Some(value))).unwrap_err();
        assert_eq!(error.kind, DecodeErrorKind::MissingKey);
    }
}
