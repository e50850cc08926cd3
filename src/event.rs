//! Owned domain types that cross the Kafka edge: the raw record as it came
//! from the broker, and the decoded [`ChangeEvent`]. Nothing after `source`
//! sees an rdkafka type. Also why a record could not be decoded, which the
//! graph names in its stall reasons.

use std::fmt;

/// One Kafka record, copied out of rdkafka's borrowed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Broker append time (or producer create time), milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Names and values as the producer wrote them: any bytes (a name need
    /// not be UTF-8), so that a dead letter keeps them losslessly.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// A row image: column name to its value as Debezium printed it.
pub(crate) type Row = serde_json::Map<String, serde_json::Value>;

/// The columns of each table's row images that routing reads (key
/// templates, fan-out binds, the outbox column), known from the graph when
/// the configuration is loaded. Decoding with it builds only these columns
/// (and the message key's) and steps over the others unbuilt; it never
/// changes what a record decodes to otherwise, nor which records are
/// refused. A table not listed has no column read: routing skips it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowColumns {
    tables: std::collections::HashMap<String, Vec<String>>,
}

impl RowColumns {
    /// Adds `column` to the columns read of `table`.
    pub(crate) fn insert(&mut self, table: &str, column: &str) {
        let columns = self.tables.entry(table.to_owned()).or_default();
        if !columns.iter().any(|c| c == column) {
            columns.push(column.to_owned());
        }
    }

    /// The columns read of `table`'s rows; empty for a table not listed.
    /// A short list: a linear scan beats hashing every column name.
    pub fn of(&self, table: &str) -> &[String] {
        self.tables.get(table).map_or(&[], Vec::as_slice)
    }
}

/// The value Debezium puts in columns it could not read (TOASTed, unchanged).
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Update,
    Delete,
    /// Snapshot read.
    Read,
    Truncate,
    /// Logical decoding message (pg_logical_emit_message): no row.
    Message,
}

impl Op {
    pub(crate) fn parse(code: &str) -> Option<Op> {
        Some(match code {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            "m" => Op::Message,
            _ => return None,
        })
    }

    /// Debezium's one-letter code, also the metric label.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
            Op::Message => "m",
        }
    }
}

/// Where a change sits in its source's log, encoded so that Lua compares it
/// exactly: decimal digits of a fixed width per source kind, so string order
/// is numeric order whatever Redis's collation locale is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// Names the log the ordinal belongs to, e.g. `pg:shop` or `kafka:topic:3`.
    pub source: String,
    pub ordinal: String,
}

impl Position {
    /// PostgreSQL through Debezium: `source.sequence` is `[lastCommitLsn, lsn]`.
    /// LSNs alone are not in commit order across concurrent transactions
    /// (Debezium emits whole transactions at commit), but the pair is.
    pub fn postgres(server: &str, last_commit_lsn: u64, lsn: u64) -> Position {
        Position {
            source: prefixed("pg:", server),
            ordinal: Ordinal::new().digits(last_commit_lsn, 20).digits(lsn, 20).0,
        }
    }

    /// PostgreSQL when only the change's LSN is known (flattened records).
    /// A separate source name, so the two encodings are never compared.
    pub(crate) fn postgres_lsn_only(server: &str, lsn: u64) -> Position {
        Position {
            source: prefixed("pg-lsn:", server),
            ordinal: Ordinal::new().digits(lsn, 20).0,
        }
    }

    /// MySQL: binlog file number, position in it, row within the event.
    pub(crate) fn mysql(server: &str, file_number: u64, pos: u64, row: u64) -> Position {
        Position {
            source: prefixed("mysql:", server),
            ordinal: Ordinal::new().digits(file_number, 10).digits(pos, 20).digits(row, 10).0,
        }
    }

    /// MariaDB with a GTID (`domain-server-seq`): the sequence number first,
    /// then the binlog coordinates, under a source per GTID domain. Sequence
    /// numbers of a domain follow the commit order on every server of the
    /// replication topology (gtid_strict_mode), so the order survives a
    /// failover, where binlog file numbers and positions start over; within
    /// one transaction (one GTID, one binlog file) the file, position and
    /// row order its rows.
    pub fn mariadb_gtid(server: &str, domain: u64, seq: u64, file_number: u64, pos: u64, row: u64) -> Position {
        Position {
            source: format!("mariadb-gtid:{server}:{domain}"),
            ordinal: Ordinal::new()
                .digits(seq, 20)
                .digits(file_number, 10)
                .digits(pos, 20)
                .digits(row, 10)
                .0,
        }
    }

    /// Fallback: the Kafka offset, guarding per topic-partition.
    pub fn kafka(topic: &str, partition: i32, offset: i64) -> Position {
        Position {
            source: format!("kafka:{topic}:{partition}"),
            ordinal: format!("{:020}", offset.max(0)),
        }
    }
}

/// `prefix` then `name`, allocated once.
fn prefixed(prefix: &str, name: &str) -> String {
    let mut text = String::with_capacity(prefix.len() + name.len());
    text.push_str(prefix);
    text.push_str(name);
    text
}

/// An ordinal built from zero-padded decimal fields: made for every event,
/// and `format!`'s padding cost more than the digits.
struct Ordinal(String);

impl Ordinal {
    fn new() -> Ordinal {
        Ordinal(String::with_capacity(60))
    }

    /// `value` in decimal, zero-padded to `width` digits; a wider value is
    /// written whole, as `format!("{value:0width$}")` would.
    fn digits(mut self, value: u64, width: usize) -> Ordinal {
        // Least significant first; u64::MAX has 20 digits.
        let mut reversed = [0u8; 20];
        let mut count = 0;
        let mut rest = value;
        for slot in reversed.iter_mut() {
            // A remainder of a division by 10 is one digit.
            *slot = b'0' + (rest % 10) as u8;
            count += 1;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        for _ in count..width {
            self.0.push('0');
        }
        for digit in reversed.iter().take(count).rev() {
            self.0.push(char::from(*digit));
        }
        self
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.source, self.ordinal)
    }
}

/// A decoded row change, independent of the wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// `schema.table` (PostgreSQL) or `database.table` (MySQL).
    pub table: String,
    pub op: Op,
    pub before: Option<Row>,
    pub after: Option<Row>,
    /// Primary-key columns from the Kafka message key.
    pub key: Option<Row>,
    pub position: Position,
    /// Source commit time in microseconds since the epoch, when known.
    pub commit_time_us: Option<i64>,
}

impl ChangeEvent {
    /// True when `column` is part of the primary key (present in the message key).
    pub(crate) fn is_key_column(&self, column: &str) -> bool {
        self.key.as_ref().is_some_and(|k| k.contains_key(column))
    }
}

/// What a record turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Change(ChangeEvent),
    /// Null value: log compaction marker after a delete. Skipped; offset advances.
    Tombstone,
    /// Debezium heartbeat (`__debezium-heartbeat.*`).
    Heartbeat,
    /// Transaction BEGIN/END metadata (`<prefix>.transaction`).
    TransactionMetadata,
    /// DDL / schema change record.
    SchemaChange,
    /// A logical-decoding message (`pg_logical_emit_message`): named
    /// invalidations, routed by `graph::message` (docs/architecture.md,
    /// "Invalidations named by the application").
    Message(LogicalMessage),
}

/// One logical-decoding message as Debezium's PostgreSQL connector writes
/// it (`op: "m"` on `<topic.prefix>.message`): the prefix and the raw
/// content the application passed, and where it sits in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    pub prefix: String,
    pub content: Vec<u8>,
    /// `pg_logical_emit_message(true, ...)`: delivered only if its
    /// transaction commits, in order with its rows. Debezium writes no
    /// transaction id (`source.txId: null`) for the other kind, which
    /// arrives even when the transaction rolls back.
    pub transactional: bool,
    /// The same guard source and encoding as the rows of its transaction.
    pub position: Position,
    pub commit_time_us: Option<i64>,
}

impl Decoded {
    /// What the record is, in words (for details and logs).
    pub(crate) fn op_label_long(&self) -> &'static str {
        match self {
            Decoded::Change(_) => "row change",
            Decoded::Tombstone => "tombstone",
            Decoded::Heartbeat => "heartbeat",
            Decoded::TransactionMetadata => "transaction metadata",
            Decoded::SchemaChange => "schema change",
            Decoded::Message(_) => "logical-decoding message",
        }
    }

    /// Label for the `op` dimension of the events metric.
    pub(crate) fn op_label(&self) -> &'static str {
        match self {
            Decoded::Change(ev) => ev.op.code(),
            Decoded::Tombstone => "tombstone",
            Decoded::Heartbeat => "heartbeat",
            Decoded::TransactionMetadata | Decoded::SchemaChange => "other",
            Decoded::Message(_) => Op::Message.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ordinal_digits_are_format_zero_padding() {
        for value in [0u64, 1, 9, 10, 99, 12_345, u64::from(u32::MAX), u64::MAX / 7, u64::MAX] {
            for width in [1usize, 10, 20] {
                assert_eq!(super::Ordinal::new().digits(value, width).0, format!("{value:0width$}"));
            }
        }
        assert_eq!(
            Position::mariadb_gtid("s", 0, 7, 3, 456, 2).ordinal,
            format!("{:020}{:010}{:020}{:010}", 7, 3, 456, 2)
        );
    }

    use super::*;

    #[test]
    fn postgres_positions_order_by_commit_then_lsn() {
        // Transaction B (lsn 110) committed before A (lsn 100): A's change
        // carries B's commit as its last commit and must sort after B's.
        let b = Position::postgres("shop", 50, 110);
        let a = Position::postgres("shop", 120, 100);
        assert!(a.ordinal > b.ordinal);
        assert_eq!(a.ordinal.len(), b.ordinal.len());
    }

    #[test]
    fn fixed_width_keeps_string_order_numeric() {
        let small = Position::kafka("t", 0, 9);
        let big = Position::kafka("t", 0, 10);
        assert!(big.ordinal > small.ordinal);
        assert_eq!(big.to_string(), "kafka:t:0@00000000000000000010");
    }
}

/// Why a record could not be decoded. The kind is a metric label and the
/// dead-letter `error kind`; the detail is for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct DecodeError {
    pub(crate) kind: DecodeErrorKind,
    pub(crate) detail: String,
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
