//! Debezium records to [`Decoded`]: the envelope (with or without the
//! JsonConverter `{schema, payload}` wrapper), records flattened by
//! `ExtractNewRecordState`, tombstones, heartbeats, transaction metadata and
//! schema changes. JSON for now; the Avro path produces the same types.

mod json;

pub use json::decode_json;

use crate::event::{Decoded, KafkaRecord};

/// Why a record could not be decoded. The kind is a metric label and the
/// dead-letter `error kind`; the detail is for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
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
}

impl DecodeErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            DecodeErrorKind::Malformed => "malformed",
            DecodeErrorKind::UnexpectedShape => "unexpected_shape",
            DecodeErrorKind::UnknownOp => "unknown_op",
            DecodeErrorKind::BadKey => "bad_key",
            DecodeErrorKind::MissingKey => "missing_key",
            DecodeErrorKind::KeyMismatch => "key_mismatch",
            DecodeErrorKind::UnsupportedFormat => "unsupported_format",
            DecodeErrorKind::TooLarge => "too_large",
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

/// Decodes one record. Stateless; the Avro path will dispatch here on the
/// Confluent magic byte.
pub fn decode(record: &KafkaRecord) -> Result<Decoded, DecodeError> {
    decode_json(record)
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
