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
    let payload = match unwrap_payload(value) {
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

    if payload.contains_key("op") {
        return envelope(record, payload, key).map(Decoded::Change);
    }
    if payload.contains_key("status") && payload.contains_key("id") && payload.contains_key("event_count")
        || payload.contains_key("status") && record.topic.ends_with(".transaction")
    {
        return Ok(Decoded::TransactionMetadata);
    }
    if payload.contains_key("ddl") || payload.contains_key("tableChanges") {
        return Ok(Decoded::SchemaChange);
    }
    if record.topic.starts_with("__debezium-heartbeat") || payload.len() == 1 && payload.contains_key("ts_ms") {
        return Ok(Decoded::Heartbeat);
    }
    flattened(record, payload, key).map(Decoded::Change)
}

/// JsonConverter with `schemas.enable=true` wraps everything in `{schema, payload}`.
fn unwrap_payload(value: Value) -> Value {
    match value {
        Value::Object(mut map) if map.len() == 2 && map.contains_key("schema") && map.contains_key("payload") => {
            map.remove("payload").unwrap_or(Value::Null)
        }
        other => other,
    }
}

fn decode_key(key: Option<Value>) -> Result<Option<Row>, DecodeError> {
    let Some(value) = key else {
        return Ok(None);
    };
    match unwrap_payload(value) {
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
    let commit_time_us = int_field(&source, "ts_us")
        .or_else(|| int_field(&source, "ts_ms").map(|ms| ms * 1000))
        .or_else(|| int_field(&payload, "ts_us"))
        .or_else(|| int_field(&payload, "ts_ms").map(|ms| ms * 1000));
    let position = source_position(record, &source);
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

/// The message key must name the row the value describes.
fn check_key(event: &ChangeEvent) -> Result<(), DecodeError> {
    let image = event.after.as_ref().or(event.before.as_ref());
    match (&event.key, image) {
        (None, None) if event.op == Op::Delete => Err(DecodeError::new(
            DecodeErrorKind::MissingKey,
            "a delete with neither a message key nor a before image names no row",
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

fn source_position(record: &KafkaRecord, source: &Map<String, Value>) -> Position {
    let server = source.get("name").and_then(Value::as_str).unwrap_or("");
    let connector = source.get("connector").and_then(Value::as_str).unwrap_or("");
    match connector {
        "postgresql" => {
            if let Some(lsn) = int_field(source, "lsn") {
                return match sequence(source) {
                    Some((last_commit, seq_lsn)) => {
                        Position::postgres(server, last_commit, seq_lsn.unwrap_or(lsn as u64))
                    }
                    None => Position::postgres_lsn_only(server, lsn as u64),
                };
            }
        }
        "mysql" | "mariadb" => {
            let file_number = source
                .get("file")
                .and_then(Value::as_str)
                .and_then(|f| f.rsplit('.').next())
                .and_then(|n| n.parse::<u64>().ok());
            if let (Some(file), Some(pos)) = (file_number, int_field(source, "pos")) {
                let row = int_field(source, "row").unwrap_or(0);
                return Position::mysql(server, file, pos.max(0) as u64, row.max(0) as u64);
            }
        }
        _ => {}
    }
    Position::kafka(&record.topic, record.partition, record.offset)
}

/// `source.sequence` is a JSON array encoded as a string: `["lastCommitLsn","lsn"]`,
/// either element possibly null.
fn sequence(source: &Map<String, Value>) -> Option<(u64, Option<u64>)> {
    let text = source.get("sequence")?.as_str()?;
    let parts: Vec<Value> = serde_json::from_str(text).ok()?;
    let as_u64 = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    let last_commit = as_u64(parts.first()).unwrap_or(0);
    Some((last_commit, as_u64(parts.get(1))))
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
    let commit_time_us =
        int_field(&fields, "__source_ts_us").or_else(|| int_field(&fields, "__source_ts_ms").map(|ms| ms * 1000));
    let position = match int_field(&fields, "__lsn") {
        Some(lsn) => {
            let server = record.topic.split('.').next().unwrap_or("");
            Position::postgres_lsn_only(server, lsn.max(0) as u64)
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

/// Integers Debezium may print as numbers or, in some converters, as strings.
fn int_field(map: &Map<String, Value>, name: &str) -> Option<i64> {
    match map.get(name)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn kind_of(value: &Value) -> &'static str {
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
        let source = pg_source(1, "[]");
        let value = json!({"op": "u", "after": {"id": 1, "name": "x"}, "source": source});
        let mismatch = record("shop.public.products", Some(json!({"id": 2})), Some(value.clone()));
        assert_eq!(decode_json(&mismatch).unwrap_err().kind, DecodeErrorKind::KeyMismatch);
        let other_table = record("shop.public.products", Some(json!({"order_id": 1})), Some(value));
        assert_eq!(
            decode_json(&other_table).unwrap_err().kind,
            DecodeErrorKind::KeyMismatch
        );
        let nameless_delete = record(
            "shop.public.products",
            None,
            Some(json!({"op": "d", "before": null, "source": pg_source(1, "[]")})),
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
            Some(json!({"op": "x", "source": pg_source(1, "[]")})),
        );
        assert_eq!(decode_json(&wrong_op).unwrap_err().kind, DecodeErrorKind::UnknownOp);

        let wrong_after = record(
            "shop.public.products",
            None,
            Some(json!({"op": "c", "after": [1], "source": pg_source(1, "[]")})),
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
            Some(json!({"op": "c", "after": {"id": 1}, "source": pg_source(1, "[]")})),
        );
        bad_key.key = Some(b"17".to_vec());
        assert_eq!(decode_json(&bad_key).unwrap_err().kind, DecodeErrorKind::BadKey);
    }
}
