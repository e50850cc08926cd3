//! Debezium records to [`Decoded`]: the envelope (with or without the
//! JsonConverter `{schema, payload}` wrapper), records flattened by
//! `ExtractNewRecordState`, tombstones, heartbeats, transaction metadata and
//! schema changes. JSON for now; the Avro path produces the same types.

mod avro;
mod json;

pub use avro::{schema_id, AvroSchemas, SchemaError, SchemaSources};
pub use json::decode_json;

use crate::event::{Decoded, KafkaRecord};

/// Why a record could not be decoded. The kind is a metric label and the
/// dead-letter `error kind`; the detail is for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct DecodeError {
    pub(crate) kind: DecodeErrorKind,
    pub(crate) detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeErrorKind {
    /// The bytes are not JSON.
    Malformed,
    /// JSON, but not a shape Debezium produces (wrong types, missing fields).
    UnexpectedShape,
    UnknownOp,
    /// Key bytes that are not a JSON object of primary-key columns.
    BadKey,
    /// A delete that names no row: neither a key nor a before image.
    MissingKey,
    /// The key's columns are missing from the row or hold other values.
    KeyMismatch,
    /// Confluent wire format (magic byte 0): an Avro record.
    UnsupportedFormat,
    /// Larger than `plan.max_record_bytes`; not parsed at all.
    TooLarge,
    /// Neither JSON nor the Confluent framing's magic byte 0.
    UnknownMagicByte,
    /// An Avro datum that ends early, or a frame too short for its header.
    Truncated,
    /// Bytes left over after the Avro datum.
    TrailingBytes,
    /// A schema id that neither the registry nor the schema files know.
    UnknownSchema,
    /// The schema exists but is not a valid Avro schema.
    InvalidSchema,
    /// A log position that Debezium cannot have written (negative,
    /// non-numeric, overflowing, self-inconsistent): never a guard.
    BadPosition,
    /// `source.table` is not the table the topic carries.
    TableMismatch,
    /// A value beyond the decoder's bounds (a decimal scale or length).
    OutOfBounds,
}

impl DecodeErrorKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            DecodeErrorKind::Malformed => "malformed",
            DecodeErrorKind::UnexpectedShape => "unexpected_shape",
            DecodeErrorKind::UnknownOp => "unknown_op",
            DecodeErrorKind::BadKey => "bad_key",
            DecodeErrorKind::MissingKey => "missing_key",
            DecodeErrorKind::KeyMismatch => "key_mismatch",
            DecodeErrorKind::UnsupportedFormat => "unsupported_format",
            DecodeErrorKind::TooLarge => "too_large",
            DecodeErrorKind::UnknownMagicByte => "unknown_magic_byte",
            DecodeErrorKind::Truncated => "truncated",
            DecodeErrorKind::TrailingBytes => "trailing_bytes",
            DecodeErrorKind::UnknownSchema => "unknown_schema",
            DecodeErrorKind::InvalidSchema => "invalid_schema",
            DecodeErrorKind::BadPosition => "bad_position",
            DecodeErrorKind::TableMismatch => "table_mismatch",
            DecodeErrorKind::OutOfBounds => "out_of_bounds",
        }
    }
}

impl std::fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl DecodeError {
    pub(crate) fn new(kind: DecodeErrorKind, detail: impl Into<String>) -> DecodeError {
        DecodeError {
            kind,
            detail: detail.into(),
        }
    }
}

/// Decodes one record: JSON, or Avro in the Confluent framing when schemas
/// are configured (their ids must have been loaded with `AvroSchemas::ensure`).
pub fn decode(record: &KafkaRecord, avro: Option<&AvroSchemas>) -> Result<Decoded, DecodeError> {
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
/// as a `Value` only to drop it cost three quarters of the decode time. The
/// top level is read as raw, unparsed members first; only the payload (or,
/// unwrapped, each member) is turned into values.
fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    use serde_json::value::RawValue;
    let members: Vec<(std::borrow::Cow<'_, str>, &RawValue)> = match serde_json::from_slice::<RawObject<'_>>(bytes) {
        Ok(RawObject(members)) => members,
        // Not an object at the top (null, a number, an array): parse plainly.
        Err(_) => return serde_json::from_slice(bytes),
    };
    let wrapped =
        members.len() == 2 && members.iter().any(|(k, _)| k == "schema") && members.iter().any(|(k, _)| k == "payload");
    if wrapped {
        let part = |name: &str| members.iter().find(|(k, _)| k == name).map(|(_, raw)| *raw);
        let (Some(schema), Some(payload)) = (part("schema"), part("payload")) else {
            return serde_json::from_slice(bytes);
        };
        return Ok(wrapper(schema_name(schema), serde_json::from_str(payload.get())?));
    }
    let mut object = serde_json::Map::with_capacity(members.len());
    for (key, raw) in members {
        object.insert(key.into_owned(), serde_json::from_str(raw.get())?);
    }
    Ok(serde_json::Value::Object(object))
}

/// The `name` of a JsonConverter schema block (e.g.
/// `io.debezium.connector.common.TransactionMetadataValue`), read without
/// building the rest of the block.
fn schema_name(schema: &serde_json::value::RawValue) -> Option<String> {
    let RawObject(members) = serde_json::from_str::<RawObject<'_>>(schema.get()).ok()?;
    let (_, raw) = members.into_iter().find(|(k, _)| k == "name")?;
    serde_json::from_str::<String>(raw.get()).ok()
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

/// A JSON object's members, values left unparsed.
struct RawObject<'a>(Vec<(std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) =
                    map.next_entry::<std::borrow::Cow<'de, str>, &'de serde_json::value::RawValue>()?
                {
                    members.push(entry);
                }
                Ok(RawObject(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// The table a topic carries under Debezium's default naming
/// (`<prefix>.<schema>.<table>`), used when the record itself does not say
/// (flattened rows, undecodable records).
pub fn table_from_topic(topic: &str) -> Option<String> {
    let mut parts = topic.rsplitn(3, '.');
    let table = parts.next()?;
    let schema = parts.next()?;
    parts.next()?;
    Some(format!("{schema}.{table}"))
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
}
