//! Debezium records to [`Decoded`]: the envelope (with or without the
//! JsonConverter `{schema, payload}` wrapper), records flattened by
//! `ExtractNewRecordState`, tombstones, heartbeats, transaction metadata and
//! schema changes. JSON for now; the Avro path produces the same types.

mod avro;
mod fields;
mod json;
mod message;
mod schema_block;

pub use avro::{schema_id, AvroSchemas, SchemaError};
pub use json::decode_json;
// `[avro]`'s settings, kept in `config` beside their validation (the
// registry client reads them too); named here as well, where schemas are used.
pub use crate::config::SchemaSources;

// The error types live with the other domain types, so that the graph's
// stall reasons can name them without depending on the decoder.
pub use crate::event::{DecodeError, DecodeErrorKind};
use crate::event::{Decoded, KafkaRecord, RowColumns};

/// Decodes one record: JSON, or Avro in the Confluent framing when schemas
/// are configured (their ids must have been loaded with `AvroSchemas::ensure`).
pub fn decode(record: &KafkaRecord, avro: Option<&AvroSchemas>) -> Result<Decoded, DecodeError> {
    decode_with(record, avro, None)
}

/// [`decode`], building of a row change's images only the columns `read`
/// names for its table (and the message key's columns): the others are
/// stepped over unbuilt, still checked as the general path checks them.
/// The record decodes to the same event on those columns, and every record
/// [`decode`] refuses is refused with the same error. `None` keeps every
/// column. Only JSON records on topics named `<prefix>.<schema>.<table>`
/// are projected (a record of another table there is refused anyway).
pub fn decode_with(
    record: &KafkaRecord,
    avro: Option<&AvroSchemas>,
    read: Option<&RowColumns>,
) -> Result<Decoded, DecodeError> {
    let Some(bytes) = record.value.as_deref() else {
        return Ok(Decoded::Tombstone);
    };
    let columns = read.and_then(|read| topic_table(&record.topic).map(|table| read.of(table)));
    // Row changes in JSON, the common case, without a tree of the payload;
    // any other shape, and every error, takes the general path below.
    if let Some(decoded) = json::decode_direct(record, bytes, avro, columns) {
        return decoded;
    }
    decode_tree(record, avro)
}

/// The general path: key and value parsed to `serde_json::Value`, then the
/// Debezium logic. Public for the decode benchmarks, which compare it with
/// [`decode`].
#[doc(hidden)]
pub fn decode_tree(record: &KafkaRecord, avro: Option<&AvroSchemas>) -> Result<Decoded, DecodeError> {
    let Some(bytes) = record.value.as_deref() else {
        return Ok(Decoded::Tombstone);
    };
    let value = parse(bytes, avro, "value", DecodeErrorKind::Malformed)?;
    let key = match record.key.as_deref() {
        Some(bytes) => Some(parse(bytes, avro, "key", DecodeErrorKind::BadKey)?),
        None => None,
    };
    json::decode_parsed(record, key, value)
}

/// One key or value to JSON, by its first byte: 0 is the Confluent framing,
/// printable text is JSON, anything else is not a format this daemon reads.
fn parse(
    bytes: &[u8],
    avro: Option<&AvroSchemas>,
    part: &str,
    not_json: DecodeErrorKind,
) -> Result<serde_json::Value, DecodeError> {
    match bytes.first() {
        Some(0) => match avro {
            Some(schemas) => schemas.decode(bytes, part),
            None => Err(DecodeError::new(
                DecodeErrorKind::UnsupportedFormat,
                format!(
                    "{part}: Confluent wire format (magic byte 0, schema id {:?}): an Avro record, and no [avro] schemas are configured",
                    schema_id(bytes)
                ),
            )),
        },
        Some(b) if b.is_ascii_graphic() || b.is_ascii_whitespace() => {
            parse_json(bytes).map_err(|e| DecodeError::new(not_json, format!("{part} is not JSON: {e}")))
        }
        Some(b) => Err(DecodeError::new(
            DecodeErrorKind::UnknownMagicByte,
            format!("{part} starts with byte 0x{b:02x}: neither JSON nor the Confluent framing (magic byte 0)"),
        )),
        None => Err(DecodeError::new(not_json, format!("{part} is empty"))),
    }
}

/// JSON to a value, skipping the JsonConverter `schema` block: with
/// `schemas.enable=true` it is most of the record's bytes, and building it
/// as a `Value` only to drop it cost three quarters of the decode time. One
/// pass over the bytes: the schema block is only scanned (syntax checked)
/// for its top-level `name`, and the payload and any other member are
/// parsed where they stand.
fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    let top = match serde_json::from_slice::<TopLevel>(bytes) {
        Ok(top) => top,
        // Not an object at the top (null, a number, an array), or not JSON:
        // parse plainly, for the value or for serde_json's own error.
        Err(_) => return serde_json::from_slice(bytes),
    };
    match top {
        TopLevel::Wrapped { schema_name, payload } => Ok(wrapper(schema_name, payload)),
        TopLevel::Object(object) => Ok(serde_json::Value::Object(object)),
        // A `schema` member outside the two-member wrapper: its whole value
        // is wanted after all. Rare enough to parse the record again.
        TopLevel::SchemaNotWrapper => serde_json::from_slice(bytes),
    }
}

/// A top-level JSON object as `parse_json` reads it.
enum TopLevel {
    /// Exactly the members `schema` and `payload`: the JsonConverter wrapper.
    Wrapped {
        schema_name: Option<String>,
        payload: serde_json::Value,
    },
    /// Any other object without a `schema` member, parsed whole.
    Object(serde_json::Map<String, serde_json::Value>),
    /// An object with a `schema` member that is not the wrapper.
    SchemaNotWrapper,
}

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = TopLevel;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = 0usize;
                let mut schema_name: Option<Option<String>> = None;
                let mut object = serde_json::Map::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    members += 1;
                    if key == "schema" {
                        schema_name = Some(map.next_value_seed(SchemaName)?);
                    } else {
                        object.insert(key.into_owned(), map.next_value()?);
                    }
                }
                Ok(match schema_name {
                    None => TopLevel::Object(object),
                    Some(schema_name) if members == 2 && object.len() == 1 => match object.remove("payload") {
                        Some(payload) => TopLevel::Wrapped { schema_name, payload },
                        None => TopLevel::SchemaNotWrapper,
                    },
                    Some(_) => TopLevel::SchemaNotWrapper,
                })
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// The `name` of a JsonConverter schema block (e.g.
/// `io.debezium.connector.common.TransactionMetadataValue`): the first
/// top-level `name` member if it is a string. Everything else in the block
/// is skipped unbuilt; a block that is not an object has no name.
struct SchemaName;

impl<'de> serde::de::DeserializeSeed<'de> for SchemaName {
    type Value = Option<String>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for SchemaName {
    type Value = Option<String>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::IgnoredAny;
        let mut name = None;
        let mut seen_name = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "name" && !seen_name {
                seen_name = true;
                name = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(name) => Some(name),
                    _ => None,
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(name)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The `{schema, payload}` shape handed to the Debezium logic: the schema
/// reduced to its name (what Debezium marks its record kinds with).
pub(crate) fn wrapper(schema_name: Option<String>, payload: serde_json::Value) -> serde_json::Value {
    let mut schema = serde_json::Map::new();
    if let Some(name) = schema_name {
        schema.insert("name".into(), serde_json::Value::String(name));
    }
    let mut object = serde_json::Map::new();
    object.insert("schema".into(), serde_json::Value::Object(schema));
    object.insert("payload".into(), payload);
    serde_json::Value::Object(object)
}

/// The table a topic carries under Debezium's default naming
/// (`<prefix>.<schema>.<table>`), used when the record itself does not say
/// (flattened rows, undecodable records).
pub fn table_from_topic(topic: &str) -> Option<String> {
    topic_table(topic).map(str::to_owned)
}

/// [`table_from_topic`], borrowed: `<schema>.<table>` is the topic's tail.
fn topic_table(topic: &str) -> Option<&str> {
    let last = topic.rfind('.')?;
    let schema_dot = topic.get(..last)?.rfind('.')?;
    topic.get(schema_dot + 1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_from_default_topic_names() {
        assert_eq!(
            table_from_topic("shop.public.products").as_deref(),
            Some("public.products")
        );
        assert_eq!(
            table_from_topic("a.b.shop.inventory.orders").as_deref(),
            Some("inventory.orders")
        );
        assert_eq!(table_from_topic("products"), None);
        assert_eq!(table_from_topic("public.products"), None);
    }

    /// What `parse_json` must return, computed the slow way: the whole
    /// record as a `Value`, then the wrapper's schema cut to its name.
    fn parsed_whole(text: &str) -> serde_json::Value {
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        match &value {
            serde_json::Value::Object(o) if o.len() == 2 && o.contains_key("schema") && o.contains_key("payload") => {
                let name = o["schema"].get("name").and_then(|n| n.as_str()).map(str::to_owned);
                wrapper(name, o["payload"].clone())
            }
            _ => value,
        }
    }

    #[test]
    fn one_pass_parse_equals_the_whole_parse_for_every_shape() {
        let shapes = [
            // The JsonConverter wrapper, members in either order.
            r#"{"schema":{"type":"struct","fields":[{"field":"id","name":"inner"}],"name":"shop.Envelope"},"payload":{"op":"c","after":{"id":1}}}"#,
            r#"{"payload":{"op":"d","before":{"id":2.50}},"schema":{"name":"io.debezium.connector.common.TransactionMetadataValue"}}"#,
            // A name that is not a string, absent, or only nested.
            r#"{"schema":{"name":7},"payload":{"op":"u"}}"#,
            r#"{"schema":{"fields":[{"name":"nested.only"}]},"payload":null}"#,
            // A schema block that is not an object.
            r#"{"schema":"text","payload":{"op":"r"}}"#,
            r#"{"schema":12345678901234567890123,"payload":{"op":"r"}}"#,
            r#"{"schema":[{"name":"x"}],"payload":{}}"#,
            r#"{"schema":null,"payload":[1,2]}"#,
            // Escaped keys and names.
            r#"{"sch\u0065ma":{"n\u0061me":"esc\"aped"},"payload":{"op":"c"}}"#,
            // Not the wrapper: unwrapped Debezium, a third member, no payload.
            r#"{"op":"c","after":{"id":1,"price":12.50},"source":{"lsn":99}}"#,
            r#"{"schema":{"name":"s"},"payload":{"op":"c"},"extra":true}"#,
            r#"{"schema":{"name":"s"}}"#,
            r#"{"payload":{"op":"c"}}"#,
            r#"{}"#,
            // Not an object at the top.
            r#"[{"schema":{}}]"#,
            r#"null"#,
            r#"3.25"#,
        ];
        for text in shapes {
            assert_eq!(parse_json(text.as_bytes()).unwrap(), parsed_whole(text), "{text}");
        }
    }

    #[test]
    fn one_pass_parse_keeps_the_first_schema_name_and_the_last_duplicate_member() {
        let first_name = r#"{"schema":{"name":"first","name":"second"},"payload":{"op":"c"}}"#;
        assert_eq!(
            parse_json(first_name.as_bytes()).unwrap(),
            wrapper(Some("first".into()), serde_json::json!({"op": "c"}))
        );
        // Two `schema` members and a payload: not the two-member wrapper.
        let twice = r#"{"schema":{"name":"a"},"schema":{"name":"b"},"payload":{}}"#;
        assert_eq!(
            parse_json(twice.as_bytes()).unwrap(),
            serde_json::json!({"schema": {"name": "b"}, "payload": {}})
        );
    }

    #[test]
    fn one_pass_parse_rejects_bad_json_inside_the_skipped_schema() {
        for text in [
            r#"{"schema":{"fields":[1,,2]},"payload":{}}"#,
            r#"{"schema":{"name":"x" "type":1},"payload":{}}"#,
            r#"{"schema":{"fields":"unterminated},"payload":{}}"#,
            r#"{"schema":{"name":"x"},"payload":{}} trailing"#,
        ] {
            assert!(parse_json(text.as_bytes()).is_err(), "{text}");
        }
    }

    #[test]
    fn deeply_nested_json_neither_overflows_the_stack_nor_is_built() {
        let deep = |open: &str, close: &str| open.repeat(100_000) + &close.repeat(100_000);
        // Skipped unbuilt: serde_json steps over nesting without recursing.
        let schema = format!(r#"{{"schema":{},"payload":{{}}}}"#, deep("[", "]"));
        assert_eq!(
            parse_json(schema.as_bytes()).unwrap(),
            wrapper(None, serde_json::json!({}))
        );
        // Built values stop at serde_json's recursion limit with an error.
        for text in [
            format!(r#"{{"schema":{{"name":"s"}},"payload":{}}}"#, deep(r#"{"a":"#, "}")),
            format!(r#"{{"op":{}}}"#, deep("[", "]")),
        ] {
            assert!(parse_json(text.as_bytes()).is_err());
        }
    }
}
