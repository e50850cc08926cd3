//! Debezium's logical-decoding message records (PostgreSQL connector,
//! `op: "m"`), as captured from the stack (tests/fixtures/messages):
//!
//! ```text
//! topic  <topic.prefix>.message, keyed by {"prefix": ...}
//! value  {"op": "m", "ts_ms": ..., "source": {..., "txId": 983 | null, "lsn": ...,
//!         "sequence": "[\"<last commit lsn>\",\"<lsn>\"]", "schema": "", "table": ""},
//!         "transaction": null, "message": {"prefix": "...", "content": "<base64>"}}
//! ```
//!
//! The content is Connect `bytes`: base64 text in JSON (the JsonConverter)
//! and in what the Avro path turns Avro `bytes` into. A transactional
//! message carries its transaction's id; Debezium writes `txId: null` for a
//! non-transactional one (it has none).

use serde_json::{Map, Value};

use super::fields::{kind_of, micros, source_position};
use super::{DecodeError, DecodeErrorKind};
use crate::event::{KafkaRecord, LogicalMessage};

fn shape(detail: impl Into<String>) -> DecodeError {
    DecodeError::new(DecodeErrorKind::UnexpectedShape, detail)
}

/// The payload of an `op: "m"` record (the wrapper already removed).
pub(super) fn logical_message(
    record: &KafkaRecord,
    mut payload: Map<String, Value>,
) -> Result<LogicalMessage, DecodeError> {
    let Some(Value::Object(source)) = payload.remove("source") else {
        return Err(shape("a message (op \"m\") without a `source` object"));
    };
    let Some(Value::Object(message)) = payload.remove("message") else {
        return Err(shape("a message (op \"m\") without a `message` object"));
    };
    // Only the PostgreSQL connector writes these; its position is what
    // orders a message with the rows of its transaction.
    match source.get("connector").and_then(Value::as_str) {
        Some("postgresql") => {}
        other => {
            return Err(shape(format!(
                "a message (op \"m\") from connector {other:?}: only Debezium's PostgreSQL connector writes them"
            )))
        }
    }
    let prefix = match message.get("prefix") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(prefix)) => prefix.clone(),
        Some(other) => return Err(shape(format!("`message.prefix` is JSON {}", kind_of(other)))),
    };
    let content = match message.get("content") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| shape(format!("`message.content` is not base64 ({e}): expected Connect bytes")))?
        }
        Some(other) => return Err(shape(format!("`message.content` is JSON {}", kind_of(other)))),
    };
    let transactional = match source.get("txId") {
        None | Some(Value::Null) => false,
        Some(Value::Number(_)) => true,
        Some(other) => return Err(shape(format!("`source.txId` is JSON {}", kind_of(other)))),
    };
    Ok(LogicalMessage {
        prefix,
        content,
        transactional,
        position: source_position(record, &source)?,
        commit_time_us: micros(&source, "ts_us", "ts_ms"),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::decode::{decode_json, DecodeErrorKind};
    use crate::event::{Decoded, KafkaRecord, LogicalMessage, Position};

    fn record(value: serde_json::Value) -> KafkaRecord {
        KafkaRecord {
            topic: "shop.message".into(),
            partition: 2,
            offset: 7,
            key: Some(br#"{"prefix":"cdc-invalidator"}"#.to_vec()),
            value: Some(serde_json::to_vec(&value).unwrap()),
            timestamp_ms: None,
            headers: Vec::new(),
        }
    }

    fn source(tx_id: serde_json::Value) -> serde_json::Value {
        json!({"version": "3.6.1.Final", "connector": "postgresql", "name": "shop", "ts_ms": 1700000000123i64,
               "ts_us": 1700000000123456i64, "db": "shop", "sequence": "[\"27584784\",\"27584712\"]",
               "schema": "", "table": "", "txId": tx_id, "lsn": 27584712})
    }

    fn message(value: serde_json::Value) -> LogicalMessage {
        match decode_json(&record(value)).unwrap() {
            Decoded::Message(message) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn transactional_message_carries_its_content_and_the_rows_position() {
        let m = message(
            json!({"op": "m", "ts_ms": 1, "source": source(json!(983)), "transaction": null,
            "message": {"prefix": "cdc-invalidator", "content": "eyJ2IjoxfQ=="}}),
        );
        assert_eq!(m.prefix, "cdc-invalidator");
        assert_eq!(m.content, br#"{"v":1}"#);
        assert!(m.transactional);
        assert_eq!(m.position, Position::postgres("shop", 27584784, 27584712));
        assert_eq!(m.commit_time_us, Some(1700000000123456));
    }

    #[test]
    fn null_transaction_id_is_a_non_transactional_message() {
        let m = message(json!({"op": "m", "source": source(json!(null)),
            "message": {"prefix": "p", "content": null}}));
        assert!(!m.transactional);
        assert!(m.content.is_empty());
    }

    #[test]
    fn shapes_debezium_never_writes_are_refused() {
        for value in [
            json!({"op": "m", "source": source(json!(1))}),
            json!({"op": "m", "message": {"prefix": "p", "content": ""}}),
            json!({"op": "m", "source": source(json!(1)), "message": {"prefix": 3, "content": ""}}),
            json!({"op": "m", "source": source(json!(1)), "message": {"prefix": "p", "content": "%%%"}}),
            json!({"op": "m", "source": source(json!("1")), "message": {"prefix": "p", "content": ""}}),
            json!({"op": "m", "source": {"connector": "mysql", "name": "x"}, "message": {"prefix": "p"}}),
        ] {
            let error = decode_json(&record(value.clone())).unwrap_err();
            assert_eq!(error.kind, DecodeErrorKind::UnexpectedShape, "{value}");
        }
    }

    /// The Avro path turns Connect `bytes` into the same base64 text. The
    /// schema is the one Confluent's AvroConverter derives from the Connect
    /// schema captured in tests/fixtures/messages (optional fields as unions
    /// with null), written by hand: the stack has no registry to capture it
    /// from.
    #[tokio::test]
    async fn an_avro_message_decodes_like_the_json_one() {
        use apache_avro::types::Value as Avro;
        let schema_text = r#"{"type": "record", "name": "MessageValue", "namespace": "io.debezium.connector.postgresql",
          "fields": [
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": null},
            {"name": "source", "type": {"type": "record", "name": "Source", "fields": [
              {"name": "version", "type": "string"}, {"name": "connector", "type": "string"},
              {"name": "name", "type": "string"}, {"name": "ts_ms", "type": "long"},
              {"name": "db", "type": "string"}, {"name": "sequence", "type": ["null", "string"], "default": null},
              {"name": "ts_us", "type": ["null", "long"], "default": null},
              {"name": "schema", "type": "string"}, {"name": "table", "type": "string"},
              {"name": "txId", "type": ["null", "long"], "default": null},
              {"name": "lsn", "type": ["null", "long"], "default": null}]}},
            {"name": "message", "type": {"type": "record", "name": "Message", "fields": [
              {"name": "prefix", "type": ["null", "string"], "default": null},
              {"name": "content", "type": ["null", "bytes"], "default": null}]}}]}"#;
        let schema = apache_avro::Schema::parse_str(schema_text).unwrap();
        let datum = |tx_id: Avro| {
            Avro::Record(vec![
                ("op".into(), Avro::String("m".into())),
                ("ts_ms".into(), Avro::Union(1, Box::new(Avro::Long(1)))),
                (
                    "source".into(),
                    Avro::Record(vec![
                        ("version".into(), Avro::String("3.6.1.Final".into())),
                        ("connector".into(), Avro::String("postgresql".into())),
                        ("name".into(), Avro::String("shop".into())),
                        ("ts_ms".into(), Avro::Long(1_700_000_000_123)),
                        ("db".into(), Avro::String("shop".into())),
                        (
                            "sequence".into(),
                            Avro::Union(1, Box::new(Avro::String("[\"27584784\",\"27584712\"]".into()))),
                        ),
                        ("ts_us".into(), Avro::Union(0, Box::new(Avro::Null))),
                        ("schema".into(), Avro::String(String::new())),
                        ("table".into(), Avro::String(String::new())),
                        ("txId".into(), tx_id),
                        ("lsn".into(), Avro::Union(1, Box::new(Avro::Long(27584712)))),
                    ]),
                ),
                (
                    "message".into(),
                    Avro::Record(vec![
                        (
                            "prefix".into(),
                            Avro::Union(1, Box::new(Avro::String("cdc-invalidator".into()))),
                        ),
                        (
                            "content".into(),
                            Avro::Union(1, Box::new(Avro::Bytes(br#"{"v":1}"#.to_vec()))),
                        ),
                    ]),
                ),
            ])
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("9.avsc"), schema_text).unwrap();
        let schemas = crate::decode::AvroSchemas::new(crate::decode::SchemaSources {
            schemas_dir: Some(dir.path().to_path_buf()),
            timeout: std::time::Duration::from_secs(1),
            ..crate::decode::SchemaSources::default()
        })
        .unwrap();
        schemas.ensure(9).await.unwrap();
        let decoded = |tx_id: Avro| {
            let mut value = vec![0, 0, 0, 0, 9];
            let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
                .build()
                .unwrap();
            value.extend(writer.write_value_to_vec(datum(tx_id)).unwrap());
            let mut r = record(json!(null));
            r.key = None;
            r.value = Some(value);
            match crate::decode::decode(&r, Some(&schemas)).unwrap() {
                Decoded::Message(message) => message,
                other => panic!("expected a message, got {other:?}"),
            }
        };
        let m = decoded(Avro::Union(1, Box::new(Avro::Long(983))));
        assert_eq!(
            (m.prefix.as_str(), m.content.as_slice(), m.transactional),
            ("cdc-invalidator", &br#"{"v":1}"#[..], true)
        );
        assert_eq!(m.position, Position::postgres("shop", 27584784, 27584712));
        assert!(!decoded(Avro::Union(0, Box::new(Avro::Null))).transactional);
    }

    #[test]
    fn an_impossible_position_is_a_bad_position() {
        let mut bad = source(json!(1));
        bad["sequence"] = json!("[\"1\",\"-5\"]");
        let error = decode_json(&record(
            json!({"op": "m", "source": bad, "message": {"prefix": "p", "content": ""}}),
        ))
        .unwrap_err();
        assert_eq!(error.kind, DecodeErrorKind::BadPosition);
    }
}
