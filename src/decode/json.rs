//! Debezium JSON (JsonConverter with or without schemas).

use std::borrow::Cow;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::fields::{kind_of, log_number, micros, source_position, source_table, Field, Fields};
use super::schema_block::{self, Part};
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
    let mut payload = payload;
    let key = decode_key(key)?;
    if let Some(kind) = marked_kind(record, schema_name.as_deref(), |name| payload.contains_key(name)) {
        return Ok(kind);
    }
    if payload.get("op").and_then(Value::as_str) == Some("m") {
        return super::message::logical_message(record, payload).map(Decoded::Message);
    }
    if payload.contains_key("op") {
        let source = match payload.remove("source") {
            Some(Value::Object(source)) => Some(source),
            _ => None,
        };
        let before = payload.remove("before");
        let after = payload.remove("after");
        let parts = EnvelopeParts {
            op: payload.get("op"),
            source: source.as_ref(),
            before,
            after,
            times: &payload,
        };
        return envelope(record, parts, key).map(Decoded::Change);
    }
    flattened(record, payload, key, Unread { columns: 0 }).map(Decoded::Change)
}

/// A row change in JSON decoded straight from the bytes: the envelope's
/// `source` read as borrowed scalars (never built), the schema block only
/// scanned for its name, and only the row images, `op` and the payload's
/// other members built as values; with `columns`, of the row images only
/// those columns and the message key's. `None` for every other shape and on
/// any error: the general path (`decode_tree`) then decides, so both paths
/// agree on every record.
pub(super) fn decode_direct(
    record: &KafkaRecord,
    bytes: &[u8],
    avro: Option<&super::AvroSchemas>,
    columns: Option<&[String]>,
) -> Option<Result<Decoded, DecodeError>> {
    if bytes.first() != Some(&b'{') {
        return None;
    }
    // The key first, for its columns: the row images keep them, and the key
    // check compares them. Its error is returned only once the value has
    // parsed (an unparsable value is the general path's `Malformed`).
    let key = match record.key.as_deref() {
        Some(bytes) => parse_key(&record.topic, bytes, avro).and_then(|key| decode_key(Some(key))),
        None => Ok(None),
    };
    let keep = columns.map(|columns| Keep {
        columns,
        key: key.as_ref().ok().and_then(Option::as_ref),
    });
    let split = schema_block::split(Part::Value, &record.topic, bytes);
    let (mut top, block_known) = match split.and_then(|split| Some((split.name, read_payload(split.payload, keep)?))) {
        // The schema block as on the topic's earlier records: only the
        // payload was parsed (the whole record is, on any error).
        Some((name, payload)) => {
            let top = Members {
                count: 2,
                schema_name: Some(name),
                payload: Some(Box::new(payload)),
                ..Members::default()
            };
            (top, true)
        }
        None => (read_record(bytes, keep)?, false),
    };
    let (schema_name, payload) = match (top.schema_name.take(), top.payload.take()) {
        // Exactly the JsonConverter wrapper `{schema, payload}`.
        (Some(name), Some(payload)) if top.count == 2 => {
            if !block_known {
                schema_block::remember(Part::Value, &record.topic, bytes, name.as_deref());
            }
            (name, *payload)
        }
        (None, None) => (None, top),
        // A `schema` or `payload` member of another shape of object.
        _ => return None,
    };
    // Without `op` every member is a column of a flattened row (or a marked
    // record), and a `source` member is then wanted whole.
    if payload.op.is_none() && payload.source.is_some() {
        return None;
    }
    // Without `op`, `before` and `after` are columns of a flattened row, to
    // be kept whole; they were read as row images, some columns left out.
    if payload.op.is_none() && payload.images_trimmed {
        return None;
    }
    // A logical-decoding message needs `source.txId` and its `message`
    // block, which this path does not keep.
    if payload.op.as_ref().and_then(Value::as_str) == Some("m") {
        return None;
    }
    Some(key.and_then(|key| decode_members(record, key, schema_name, payload)))
}

/// The message key as `decode_key` reads it (`super::parse`'s value, of
/// which a wrapper's payload only is read: its schema name never is). A
/// JSON key whose schema block is the one last seen on the topic has only
/// its payload parsed; every other key, and one whose payload does not
/// parse so, is parsed whole (a wrapper's block then remembered).
fn parse_key(topic: &str, bytes: &[u8], avro: Option<&super::AvroSchemas>) -> Result<Value, DecodeError> {
    if let Some(split) = schema_block::split(Part::Key, topic, bytes) {
        let payload = serde_json::from_slice::<Value>(split.payload).ok();
        // Read on its own, the payload sits a level less deep: a value
        // nesting near the recursion limit is parsed in its place.
        if let Some(payload) = payload.filter(|p| !nests_deeper_than(p, PAYLOAD_MAX_DEPTH)) {
            return Ok(super::wrapper(None, payload));
        }
    }
    let key = super::parse(bytes, avro, "key", DecodeErrorKind::BadKey)?;
    if let Value::Object(members) = &key {
        if members.len() == 2 && members.contains_key("schema") && members.contains_key("payload") {
            schema_block::remember(Part::Key, topic, bytes, None);
        }
    }
    Ok(key)
}

/// The whole record's members; the schema block of a wrapper is remembered
/// for the topic's next records (`schema_block`).
fn read_record<'de>(bytes: &'de [u8], keep: Option<Keep<'_>>) -> Option<Members<'de>> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let top = MembersVisitor { top: true, keep }.deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(top)
}

/// The payload of a record split at its schema block, read on its own.
/// Read so, its values sit one level less deep than in the whole record: a
/// value nesting near serde_json's recursion limit is left to the general
/// path, which then refuses or accepts it as before.
fn read_payload<'de>(payload: &'de [u8], keep: Option<Keep<'_>>) -> Option<Members<'de>> {
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    let members = MembersVisitor { top: false, keep }
        .deserialize(&mut deserializer)
        .ok()?;
    deserializer.end().ok()?;
    let built = [&members.op, &members.before, &members.after]
        .into_iter()
        .flatten()
        .chain(members.others.values());
    let shallow = built
        .into_iter()
        .all(|value| !nests_deeper_than(value, PAYLOAD_MAX_DEPTH));
    shallow.then_some(members)
}

/// Nesting a payload's members may have when the payload is read on its
/// own: far below serde_json's limit of 128 levels in the whole record.
const PAYLOAD_MAX_DEPTH: usize = 100;

fn nests_deeper_than(value: &Value, levels: usize) -> bool {
    match value {
        Value::Array(items) => levels == 0 || items.iter().any(|v| nests_deeper_than(v, levels - 1)),
        Value::Object(members) => levels == 0 || members.values().any(|v| nests_deeper_than(v, levels - 1)),
        _ => false,
    }
}

/// `decode_parsed` over a payload read by `decode_direct`.
fn decode_members(
    record: &KafkaRecord,
    key: Option<Row>,
    schema_name: Option<String>,
    payload: Members<'_>,
) -> Result<Decoded, DecodeError> {
    if let Some(kind) = marked_kind(record, schema_name.as_deref(), |name| payload.has(name)) {
        return Ok(kind);
    }
    if payload.op.is_some() {
        let parts = EnvelopeParts {
            op: payload.op.as_ref(),
            source: payload.source.as_ref(),
            before: payload.before,
            after: payload.after,
            times: &payload.others,
        };
        return envelope(record, parts, key).map(Decoded::Change);
    }
    let mut row = payload.others;
    if let Some(before) = payload.before {
        row.insert("before".to_owned(), before);
    }
    if let Some(after) = payload.after {
        row.insert("after".to_owned(), after);
    }
    let unread = Unread {
        columns: payload.unread,
    };
    flattened(record, row, key, unread).map(Decoded::Change)
}

/// The columns of a row image `decode_direct` builds: those routing reads
/// (`RowColumns`) and the message key's.
#[derive(Clone, Copy)]
struct Keep<'a> {
    columns: &'a [String],
    key: Option<&'a Row>,
}

impl Keep<'_> {
    fn keeps(&self, column: &str) -> bool {
        self.columns.iter().any(|c| c == column) || self.key.is_some_and(|key| key.contains_key(column))
    }

    /// A payload member kept whatever the columns: the envelope's times,
    /// and the metadata a flattened row carries (`__op`, `__lsn`, ...).
    fn keeps_member(&self, name: &str) -> bool {
        name.starts_with("__") || name == "ts_ms" || name == "ts_us" || self.keeps(name)
    }
}

/// How many members of a flattened row were left out unbuilt: the row is
/// not empty even when no member was built.
#[derive(Clone, Copy)]
pub(super) struct Unread {
    pub(super) columns: usize,
}

/// A payload's members as `decode_direct` reads them; at the top level also
/// the wrapper's schema name and payload.
#[derive(Default)]
struct Members<'de> {
    /// Every member, duplicates included (the wrapper has exactly two).
    count: usize,
    /// Top level only: `Some` when there is a `schema` member.
    schema_name: Option<Option<String>>,
    /// Top level only: the `payload` member.
    payload: Option<Box<Members<'de>>>,
    op: Option<Value>,
    before: Option<Value>,
    after: Option<Value>,
    /// `before` or `after` was an object some columns of which were left out.
    images_trimmed: bool,
    source: Option<Source<'de>>,
    /// Every other member, built (with `Keep`, only those it keeps).
    others: Map<String, Value>,
    /// Other members left out unbuilt.
    unread: usize,
}

impl Members<'_> {
    fn has(&self, name: &str) -> bool {
        match name {
            "op" => self.op.is_some(),
            "before" => self.before.is_some(),
            "after" => self.after.is_some(),
            "source" => self.source.is_some(),
            _ => self.others.contains_key(name),
        }
    }
}

/// Reads an object's members. Each is read at the nesting depth the
/// general path reads it at, so serde_json's recursion limit refuses the
/// same records on both paths. Later duplicates replace earlier ones, as in
/// a `Map`.
struct MembersVisitor<'k> {
    top: bool,
    keep: Option<Keep<'k>>,
}

impl<'de> DeserializeSeed<'de> for MembersVisitor<'_> {
    type Value = Members<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        // Not an object: an error, and the general path decides.
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MembersVisitor<'_> {
    type Value = Members<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Members::default();
        while let Some(Key(key)) = map.next_key()? {
            members.count += 1;
            match &*key {
                "schema" if self.top => members.schema_name = Some(map.next_value_seed(super::SchemaName)?),
                "payload" if self.top => {
                    let payload = MembersVisitor {
                        top: false,
                        keep: self.keep,
                    };
                    members.payload = Some(Box::new(map.next_value_seed(payload)?))
                }
                "op" => members.op = Some(map.next_value()?),
                "before" | "after" => {
                    let (image, trimmed) = match self.keep {
                        Some(keep) => map.next_value_seed(Image { keep })?,
                        None => (map.next_value()?, false),
                    };
                    members.images_trimmed |= trimmed;
                    if key == "before" {
                        members.before = Some(image);
                    } else {
                        members.after = Some(image);
                    }
                }
                "source" => members.source = Some(map.next_value()?),
                name if self.keep.is_some_and(|keep| !keep.keeps_member(name)) => {
                    map.next_value::<UnreadValue>()?;
                    members.unread += 1;
                }
                _ => {
                    members.others.insert(key.into_owned(), map.next_value()?);
                }
            }
        }
        Ok(members)
    }
}

/// A row image read with `Keep`: an object is built with the columns it
/// keeps (and says whether it left any out); anything else is built whole,
/// for the Debezium logic to refuse.
struct Image<'k> {
    keep: Keep<'k>,
}

impl<'de> DeserializeSeed<'de> for Image<'_> {
    type Value = (Value, bool);
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Image<'_> {
    type Value = (Value, bool);
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a row image")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut row = Map::new();
        let mut trimmed = false;
        while let Some(Key(column)) = map.next_key()? {
            // serde_json hands an arbitrary-precision number over as a map
            // with this one member: the general path decides.
            if column == NUMBER_TOKEN {
                return Err(A::Error::custom("a number where a row image was expected"));
            }
            if self.keep.keeps(&column) {
                row.insert(column.into_owned(), map.next_value()?);
            } else {
                map.next_value::<UnreadValue>()?;
                trimmed = true;
            }
        }
        Ok((Value::Object(row), trimmed))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok((Value::Array(items), false))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok((Value::Null, false))
    }
    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok((Value::Bool(b), false))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok((Value::String(s.to_owned()), false))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok((Value::String(s), false))
    }
}

/// The member name serde_json's arbitrary-precision numbers arrive under
/// when read as a map (serde_json's own `Value` recognises them by it).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// A value stepped over unbuilt: its text is checked by serde_json, and
/// whatever building it would check besides (string escapes, nesting
/// depth) is checked by `builds_as_the_general_path`.
struct UnreadValue;

impl<'de> Deserialize<'de> for UnreadValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(deserializer)?;
        if builds_as_the_general_path(raw.get()) {
            Ok(UnreadValue)
        } else {
            Err(D::Error::custom("a value left to the general path"))
        }
    }
}

/// Nesting a skipped value may have and still be built on the general path
/// at any position of a Debezium record (serde_json refuses 128 levels).
const UNREAD_MAX_DEPTH: usize = 64;

/// Whether a value's text, already checked as JSON syntax (and UTF-8) while
/// stepping over it, would also be accepted built as a `Value`: serde_json
/// steps over `\u` escapes without checking their surrogates, and over
/// nesting without its recursion limit. False sends the record to the
/// general path, which then decides; Debezium's own output is never sent.
fn builds_as_the_general_path(text: &str) -> bool {
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(b'"') => !bytes.contains(&b'\\') || serde_json::from_str::<String>(text).is_ok(),
        Some(b'[' | b'{') => {
            let mut depth = 0usize;
            let mut deepest = 0usize;
            let mut in_string = false;
            let mut escaped = false;
            let mut escapes = false;
            for &b in bytes {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                        escapes = true;
                    } else if b == b'"' {
                        in_string = false;
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'[' | b'{' => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            deepest <= UNREAD_MAX_DEPTH && (!escapes || serde_json::from_str::<Value>(text).is_ok())
        }
        _ => true,
    }
}

/// A member name, borrowed from the record unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(name)))
            }
            fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(name.to_owned())))
            }
            fn visit_string<E>(self, name: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(name)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The `source` fields the Debezium logic reads (`source_table`,
/// `source_position`, `micros`); `Source` keeps only these.
const SOURCE_FIELDS: [&str; 13] = [
    "name",
    "connector",
    "table",
    "schema",
    "db",
    "lsn",
    "sequence",
    "file",
    "pos",
    "row",
    "gtid",
    "ts_us",
    "ts_ms",
];

/// An envelope's `source` block, its fields borrowed from the record. Only
/// scalars: a block holding an array or an object (Debezium writes none) is
/// left to the general path.
struct Source<'de> {
    values: [Option<Scalar<'de>>; SOURCE_FIELDS.len()],
}

enum Scalar<'de> {
    Null,
    Bool,
    /// The number's text, as an arbitrary-precision `Number` keeps it.
    Number(&'de str),
    Str(Cow<'de, str>),
}

/// One JSON scalar from its text; `None` for an array, an object, or a
/// string a `String` would not take (a lone surrogate escape).
fn scalar(text: &str) -> Option<Scalar<'_>> {
    Some(match text.as_bytes().first()? {
        b'"' if !text.contains('\\') => Scalar::Str(Cow::Borrowed(text.get(1..text.len() - 1)?)),
        b'"' => Scalar::Str(Cow::Owned(serde_json::from_str::<String>(text).ok()?)),
        b'n' => Scalar::Null,
        b't' | b'f' => Scalar::Bool,
        b'[' | b'{' => return None,
        _ => Scalar::Number(text),
    })
}

impl<'de> Deserialize<'de> for Source<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = Source<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a source object of scalars")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut values: [Option<Scalar<'de>>; SOURCE_FIELDS.len()] = std::array::from_fn(|_| None);
                while let Some(Key(key)) = map.next_key()? {
                    // Stepped over, not built; every member's text is still checked.
                    let raw: &'de RawValue = map.next_value()?;
                    let value = scalar(raw.get()).ok_or_else(|| A::Error::custom("not a scalar"))?;
                    let slot = SOURCE_FIELDS.iter().position(|name| *name == key);
                    if let Some(kept) = slot.and_then(|slot| values.get_mut(slot)) {
                        *kept = Some(value);
                    }
                }
                Ok(Source { values })
            }
        }
        deserializer.deserialize_map(SourceVisitor)
    }
}

impl Fields for Source<'_> {
    fn field(&self, name: &str) -> Option<Field<'_>> {
        debug_assert!(SOURCE_FIELDS.contains(&name), "source field {name:?} is not kept");
        let slot = SOURCE_FIELDS.iter().position(|kept| *kept == name)?;
        Some(match self.values.get(slot)?.as_ref()? {
            Scalar::Null => Field::Null,
            Scalar::Bool => Field::Bool,
            Scalar::Number(text) => Field::Number(text),
            Scalar::Str(text) => Field::Str(text),
        })
    }
}

/// Records that are not row changes, by what Debezium marks them with: the
/// schema name (JsonConverter wrapper or Avro), else the topic Debezium
/// writes them to. Field names alone never decide: a table may well have
/// columns named `ddl` or `status`. Without a schema name, transaction
/// metadata must come from a `<prefix>.transaction` topic and schema changes
/// from the bare `<prefix>` topic (neither is named like a table topic,
/// `<prefix>.<schema>.<table>`); the pipeline also refuses to skip one of
/// these on the topic of a configured table.
fn marked_kind(record: &KafkaRecord, schema_name: Option<&str>, has: impl Fn(&str) -> bool) -> Option<Decoded> {
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
    if schema_name.is_some() || table_from_topic(topic).is_some() || has("op") {
        return None;
    }
    if topic.ends_with(".transaction") && has("status") && has("id") {
        return Some(Decoded::TransactionMetadata);
    }
    if has("ddl") && (has("databaseName") || has("tableChanges")) {
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

/// An envelope's members: `source` when it is an object, and the payload's
/// members that carry its times.
struct EnvelopeParts<'p, S, T> {
    op: Option<&'p Value>,
    source: Option<&'p S>,
    before: Option<Value>,
    after: Option<Value>,
    times: &'p T,
}

fn envelope<S: Fields, T: Fields>(
    record: &KafkaRecord,
    parts: EnvelopeParts<'_, S, T>,
    key: Option<Row>,
) -> Result<ChangeEvent, DecodeError> {
    let op_code = match parts.op {
        Some(Value::String(code)) => code,
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
    let source = match parts.source {
        Some(source) => source,
        // Logical decoding messages still carry `source`; anything without one
        // is not Debezium's envelope.
        None => {
            return Err(DecodeError::new(
                DecodeErrorKind::UnexpectedShape,
                "field `source` is missing or not an object",
            ))
        }
    };
    let before = image("before", parts.before)?;
    let after = image("after", parts.after)?;
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
    let table = source_table(source)
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
    let commit_time_us = micros(source, "ts_us", "ts_ms").or_else(|| micros(parts.times, "ts_us", "ts_ms"));
    let position = source_position(record, source)?;
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

fn image(name: &str, value: Option<Value>) -> Result<Option<Row>, DecodeError> {
    match value {
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

/// Records flattened by `ExtractNewRecordState`: the row itself, plus
/// optional `__`-prefixed metadata fields.
fn flattened(
    record: &KafkaRecord,
    mut row: Map<String, Value>,
    key: Option<Row>,
    unread: Unread,
) -> Result<ChangeEvent, DecodeError> {
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
    if row.is_empty() && unread.columns == 0 && key.is_none() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RowColumns;
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

    /// Both paths on one record: `decode` (direct when it can) and the
    /// general `decode_tree` must agree, and `direct` says whether the
    /// direct path must have taken it.
    fn same_on_both_paths(record: &KafkaRecord, direct: bool) {
        let bytes = record.value.as_deref().unwrap();
        assert_eq!(
            decode_direct(record, bytes, None, None).is_some(),
            direct,
            "{}",
            String::from_utf8_lossy(bytes)
        );
        same_on_every_path(record);
    }

    /// The row columns the projections of `same_on_every_path` read of
    /// `public.products`: none, one, the key's, and some absent ones.
    fn projections() -> Vec<RowColumns> {
        [&[][..], &["c"], &["id"], &["x", "c", "absent", "before"]]
            .iter()
            .map(|columns| {
                let mut read = RowColumns::default();
                for column in *columns {
                    read.insert("public.products", column);
                }
                read
            })
            .collect()
    }

    /// `decoded` with only the columns `read` names and the message key's
    /// left in its row images.
    fn projected(decoded: &Result<Decoded, DecodeError>, read: &RowColumns) -> Result<Decoded, DecodeError> {
        let mut decoded = decoded.clone();
        if let Ok(Decoded::Change(event)) = &mut decoded {
            let columns = read.of(&event.table).to_vec();
            let key = event.key.clone();
            for row in [&mut event.before, &mut event.after].into_iter().flatten() {
                row.retain(|column, _| {
                    columns.contains(column) || key.as_ref().is_some_and(|key| key.contains_key(column))
                });
            }
        }
        decoded
    }

    /// `decode` twice (the second time the schema block may be known) and
    /// `decode_with` every projection agree with `decode_tree`: the same
    /// error, the same non-row record, or the same event whose row images
    /// hold every projected column, each with the general path's value.
    fn same_on_every_path(record: &KafkaRecord) {
        let text = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
        let tree = super::super::decode_tree(record, None);
        assert_eq!(super::super::decode(record, None), tree, "{text}");
        assert_eq!(super::super::decode(record, None), tree, "again: {text}");
        for read in projections() {
            let lean = super::super::decode_with(record, None, Some(&read));
            assert_eq!(projected(&lean, &read), projected(&tree, &read), "{read:?}: {text}");
            if let (Ok(Decoded::Change(lean)), Ok(Decoded::Change(whole))) = (&lean, &tree) {
                for (lean, whole) in [(&lean.before, &whole.before), (&lean.after, &whole.after)] {
                    for (column, value) in lean.iter().flatten() {
                        let whole = whole.as_ref().and_then(|row| row.get(column));
                        assert_eq!(Some(value), whole, "{column}, {read:?}: {text}");
                    }
                }
            }
        }
    }

    fn raw(topic: &str, key: Option<&str>, value: &str) -> KafkaRecord {
        KafkaRecord {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            ..record(topic, None, None)
        }
    }

    #[test]
    fn the_direct_path_decodes_as_the_general_path() {
        let topic = "shop.public.products";
        let source = pg_source(200, "[\"150\",\"200\"]").to_string();
        let key = r#"{"id":1}"#;
        let wrapped_key = r#"{"schema":{"type":"struct","name":"k"},"payload":{"id":1}}"#;
        let direct = [
            // With and without the wrapper, keys with and without it.
            format!(r#"{{"before":null,"after":{{"id":1,"c":3}},"source":{source},"op":"c","ts_ms":1}}"#),
            format!(
                r#"{{"schema":{{"type":"struct","name":"shop.Envelope"}},"payload":{{"before":{{"id":1}},"after":{{"id":1,"c":2.50}},"source":{source},"op":"u","ts_us":5}}}}"#
            ),
            format!(r#"{{"payload":{{"op":"d","before":{{"id":1}},"source":{source}}},"schema":{{}}}}"#),
            // Unknown and duplicate members; escapes in names and values.
            format!(
                r#"{{"op":"c","after":{{"id":1}},"source":{{"x":1}},"source":{source},"op":"u","transaction":{{"id":"7"}}}}"#
            ),
            r#"{"op":"c","after":{"id":1},"source":{"connector":"postgr\u0065sql","n\u0061me":"s\"q","db":"d","schema":"public","table":"products","lsn":"12","ts_ms":"9"}}"#.to_owned(),
            // Positions Debezium cannot write, bad ops and images.
            r#"{"op":"c","after":{"id":1},"source":{"connector":"postgresql","name":"s","schema":"public","table":"products","lsn":-1}}"#.to_owned(),
            r#"{"op":"c","after":{"id":1},"source":{"connector":"postgresql","name":"s","schema":"public","table":"products","lsn":1.5}}"#.to_owned(),
            r#"{"op":"c","after":{"id":1},"source":{"connector":"postgresql","name":"s","schema":"public","table":"products","lsn":9223372036854775808}}"#.to_owned(),
            r#"{"op":"c","after":{"id":1},"source":{"connector":"postgresql","name":"s","schema":"public","table":"products","lsn":true,"sequence":7}}"#.to_owned(),
            r#"{"op":"c","after":{"id":1},"source":{"connector":"mysql","name":"s","db":"public","table":"products","file":5,"pos":3}}"#.to_owned(),
            r#"{"op":"c","after":{"id":1},"source":{"connector":"mariadb","name":"s","db":"public","table":"products","file":"b.000001","pos":3,"gtid":"0-1-x"}}"#.to_owned(),
            r#"{"op":"x","after":{"id":1},"source":{}}"#.to_owned(),
            r#"{"op":7,"after":{"id":1},"source":{}}"#.to_owned(),
            r#"{"op":"c","after":[1],"source":{"table":"products","schema":"public"}}"#.to_owned(),
            r#"{"op":"c","after":{"id":2},"source":{"table":"orders","schema":"public"}}"#.to_owned(),
            // Flattened rows, with columns named like envelope members.
            r#"{"id":1,"c":2,"__op":"u","__table":"products","__lsn":7,"__source_ts_ms":5}"#.to_owned(),
            r#"{"id":1,"before":null,"after":{"x":1},"__deleted":"true"}"#.to_owned(),
            r#"{"schema":{"name":"x"},"payload":{"id":1,"schema":"s","payload":2}}"#.to_owned(),
            // Marked records.
            r#"{"schema":{"name":"io.debezium.connector.common.TransactionMetadataValue"},"payload":{"status":"BEGIN","id":"1"}}"#.to_owned(),
        ];
        for value in &direct {
            same_on_both_paths(&raw(topic, Some(key), value), true);
            same_on_both_paths(&raw(topic, Some(wrapped_key), value), true);
            same_on_both_paths(&raw(topic, None, value), true);
            same_on_both_paths(&raw(topic, Some("[1]"), value), true);
            same_on_both_paths(&raw(topic, Some("{bad"), value), true);
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        let general = [
            // Shapes the direct path leaves to the general one.
            "null".to_owned(),
            " {\"op\":\"c\"}".to_owned(),
            r#"{"schema":{},"payload":null}"#.to_owned(),
            r#"{"schema":{},"payload":[1]}"#.to_owned(),
            r#"{"schema":{},"payload":{"op":"c"},"extra":1}"#.to_owned(),
            r#"{"payload":{"op":"c"},"id":1}"#.to_owned(),
            r#"{"op":"c","after":{"id":1},"source":"text"}"#.to_owned(),
            r#"{"op":"c","after":{"id":1},"source":{"table":{"nested":1}}}"#.to_owned(),
            format!(r#"{{"op":"c","after":{{"id":1}},"source":{{"x":{deep}}}}}"#),
            r#"{"op":"c","after":{"id":1},"source":{"name":"\ud800"}}"#.to_owned(),
            r#"{"source":{"connector":"mysql"},"databaseName":"inventory","ddl":"ALTER TABLE x"}"#.to_owned(),
            r#"{"id":1,"source":{"a":1}}"#.to_owned(),
            // A logical-decoding message, transactional or not.
            format!(r#"{{"op":"m","source":{source},"message":{{"prefix":"app","content":"e30="}}}}"#),
            r#"{"op":"m","source":{"connector":"postgresql","name":"s","txId":null,"lsn":5},"message":{"prefix":"app","content":"e30="}}"#.to_owned(),
            // Not JSON, or too deep for serde_json.
            r#"{"op":"c","after":{"id":1},"source":{}"#.to_owned(),
            r#"{"op":"c"} trailing"#.to_owned(),
            format!(r#"{{"op":"c","after":{{"id":{deep}}},"source":{{}}}}"#),
        ];
        for value in &general {
            same_on_both_paths(&raw(topic, Some(key), value), false);
        }
    }

    #[test]
    fn left_out_columns_are_refused_as_the_general_path_refuses_them() {
        let topic = "shop.public.products";
        let source = pg_source(200, "[\"150\",\"200\"]").to_string();
        let deep = |levels: usize| "[".repeat(levels) + &"]".repeat(levels);
        let envelope = |after: &str| format!(r#"{{"op":"u","before":{after},"after":{after},"source":{source}}}"#);
        let wrapped =
            |payload: &str| format!(r#"{{"schema":{{"type":"struct","name":"shop.Envelope"}},"payload":{payload}}}"#);
        let mut values = vec![
            // Columns a projection leaves out: escapes, numbers, nesting.
            envelope(r#"{"id":1,"c":2,"text":"a \"quoted\" \u00e9 \ud83d\ude00","n":-0.5e-7,"big":123456789012345678901234567890}"#),
            envelope(r#"{"id":1,"lone":"\ud800"}"#),
            envelope(r#"{"id":1,"lone":["x",{"y":"\udc00"}]}"#),
            envelope(r#"{"id":1,"arr":[1,{"a":"]}\""},[[]]]}"#),
            envelope(&format!(r#"{{"id":1,"deep":{}}}"#, deep(60))),
            envelope(&format!(r#"{{"id":1,"deep":{}}}"#, deep(70))),
            envelope(&format!(r#"{{"id":1,"deep":{}}}"#, deep(200))),
            envelope(r#"{"id":1,"bad":01}"#),
            envelope(r#"{"id":1,"bad":1.}"#),
            envelope(r#"{"id":1,"bad":"\x"}"#),
            envelope(r#"{"id":1,"id":2,"c":1,"c":2}"#),
            envelope(r#"{"$serde_json::private::Number":"5"}"#),
            envelope("5"),
            envelope("\"text\""),
            envelope("true"),
            envelope("[{\"id\":1}]"),
            // Flattened rows: every column left out, images as columns.
            r#"{"x":1,"y":"2","__op":"u","__table":"products","__lsn":7}"#.to_owned(),
            r#"{"x":1,"__deleted":"true"}"#.to_owned(),
            r#"{"id":1,"before":{"id":1,"x":2},"after":null,"ts_ms":5}"#.to_owned(),
            r#"{"id":1,"after":{"c":1},"c":{"d":[1]}}"#.to_owned(),
            r#"{"transaction":{"id":"\ud800"},"op":"c","after":{"id":1},"source":{"table":"products","schema":"public"}}"#.to_owned(),
        ];
        // Nesting around serde_json's recursion limit, whole record and
        // payload read on its own (its schema block known).
        for levels in 120..=128 {
            values.push(envelope(&format!(r#"{{"id":1,"c":{}}}"#, deep(levels))));
            values.push(envelope(&format!(r#"{{"id":1,"x":{}}}"#, deep(levels))));
            values.push(format!(
                r#"{{"op":"c","after":{{"id":1}},"source":{source},"ts":{}}}"#,
                deep(levels)
            ));
        }
        let wrapped_values: Vec<String> = values.iter().map(|v| wrapped(v)).collect();
        for value in values.iter().chain(&wrapped_values) {
            for key in [
                Some(r#"{"id":1}"#),
                Some(r#"{"x":1}"#),
                None,
                Some("{bad"),
                // Wrapped keys: the block known after the first, then a
                // duplicate payload, a truncated key, another payload.
                Some(r#"{"schema":{"type":"struct","name":"k"},"payload":{"id":1}}"#),
                Some(r#"{"schema":{"type":"struct","name":"k"},"payload":{"id":1},"payload":{"id":2}}"#),
                Some(r#"{"schema":{"type":"struct","name":"k"},"payload":{"id":1}"#),
                Some(r#"{"schema":{"type":"struct","name":"k"},"payload":{"id":2}} "#),
            ] {
                same_on_every_path(&raw(topic, key, value));
            }
        }
        // Not UTF-8 inside a column left out.
        let mut bytes = envelope(r#"{"id":1,"x":"é"}"#).into_bytes();
        let at = bytes.iter().position(|b| *b == 0xc3).unwrap();
        bytes[at] = 0xff;
        let invalid = KafkaRecord {
            value: Some(bytes),
            ..raw(topic, Some(r#"{"id":1}"#), "{}")
        };
        same_on_every_path(&invalid);
        assert_eq!(
            super::super::decode_with(&invalid, None, Some(&RowColumns::default()))
                .unwrap_err()
                .kind,
            DecodeErrorKind::Malformed
        );
    }

    #[test]
    fn a_projected_event_keeps_the_read_and_the_key_columns_only() {
        let value = r#"{"op":"u","before":{"id":1,"c":2,"x":3},"after":{"id":1,"c":4,"x":5},"source":{"connector":"postgresql","name":"shop","schema":"public","table":"products","lsn":7}}"#;
        let mut read = RowColumns::default();
        read.insert("public.products", "c");
        let record = raw("shop.public.products", Some(r#"{"id":1}"#), value);
        let event = change(super::super::decode_with(&record, None, Some(&read)).unwrap());
        assert_eq!(Value::Object(event.before.unwrap()), json!({"id": 1, "c": 2}));
        assert_eq!(Value::Object(event.after.unwrap()), json!({"id": 1, "c": 4}));
        // Another table's columns, or a topic not naming a table: whole rows
        // on a topic without a table, none but the key's on an unread table.
        let other = raw(
            "shop.public.orders",
            Some(r#"{"id":1}"#),
            &value.replace("products", "orders"),
        );
        let event = change(super::super::decode_with(&other, None, Some(&read)).unwrap());
        assert_eq!(Value::Object(event.after.unwrap()), json!({"id": 1}));
        let custom = raw("products-topic", Some(r#"{"id":1}"#), value);
        let event = change(super::super::decode_with(&custom, None, Some(&read)).unwrap());
        assert_eq!(Value::Object(event.after.unwrap()), json!({"id": 1, "c": 4, "x": 5}));
    }

    #[test]
    fn a_null_primary_key_is_a_dead_letter() {
        let value = json!({"op": "c", "after": {"id": null}, "source": pg_source(5, "[\"5\",\"5\"]")});
        let error = decode_json(&record("shop.public.products", Some(json!({"id": null})), Some(value))).unwrap_err();
        assert_eq!(error.kind, DecodeErrorKind::MissingKey);
    }
}
