//! The fields of a Debezium envelope as the decoders read them, built or
//! borrowed: the `source` block's position and table, times, and what kind
//! of value a field holds. Shared by the row-change decoder and the
//! logical-message decoder, which read the same `source` block.

use serde_json::{Map, Value};

use super::{DecodeError, DecodeErrorKind};
use crate::event::{KafkaRecord, Position};

/// A field as the Debezium logic reads it: scalars by their text,
/// containers by kind only.
#[derive(Debug, Clone, Copy)]
pub(super) enum Field<'a> {
    Null,
    Bool,
    /// The number's text (serde_json's `arbitrary_precision` keeps it).
    Number(&'a str),
    Str(&'a str),
    Array,
    Object,
}

/// Named fields: a `source` block or the payload's own members, built or
/// borrowed.
pub(super) trait Fields {
    fn field(&self, name: &str) -> Option<Field<'_>>;
}

impl Fields for Map<String, Value> {
    fn field(&self, name: &str) -> Option<Field<'_>> {
        self.get(name).map(field_of)
    }
}

fn field_of(value: &Value) -> Field<'_> {
    match value {
        Value::Null => Field::Null,
        Value::Bool(_) => Field::Bool,
        Value::Number(n) => Field::Number(n.as_str()),
        Value::String(s) => Field::Str(s),
        Value::Array(_) => Field::Array,
        Value::Object(_) => Field::Object,
    }
}

fn str_field<'a>(fields: &'a impl Fields, name: &str) -> Option<&'a str> {
    match fields.field(name)? {
        Field::Str(text) => Some(text),
        _ => None,
    }
}

pub(super) fn source_table(source: &impl Fields) -> Option<String> {
    let table = str_field(source, "table")?;
    // PostgreSQL and SQL Server name the schema; MySQL only the database.
    let schema = str_field(source, "schema").or_else(|| str_field(source, "db"))?;
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
pub(super) fn source_position(record: &KafkaRecord, source: &impl Fields) -> Result<Position, DecodeError> {
    let server = str_field(source, "name").unwrap_or("");
    let connector = str_field(source, "connector").unwrap_or("");
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
            let file_number = match source.field("file") {
                None | Some(Field::Null) => None,
                Some(Field::Str(file)) => {
                    let number = file.rsplit('.').next().unwrap_or("");
                    match digits(number).filter(|n| *n < MYSQL_FILE_LIMIT) {
                        Some(n) => Some(n),
                        None => return Err(bad_position(format!("binlog file name {file:?} has no file number"))),
                    }
                }
                Some(other) => return Err(bad_position(format!("`source.file` is JSON {}", field_kind(other)))),
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
fn mariadb_gtid(source: &impl Fields) -> Result<Option<(u64, u64)>, DecodeError> {
    let text = match source.field("gtid") {
        None | Some(Field::Null) => return Ok(None),
        Some(Field::Str(text)) => text,
        Some(other) => return Err(bad_position(format!("`source.gtid` is JSON {}", field_kind(other)))),
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
pub(super) fn log_number(map: &impl Fields, name: &str) -> Result<Option<u64>, DecodeError> {
    log_value(map.field(name)).map_err(|shown| bad_position(format!("`{name}` is {shown}, not a log position")))
}

fn log_value(value: Option<Field<'_>>) -> Result<Option<u64>, String> {
    match value {
        None | Some(Field::Null) => Ok(None),
        // What `Number::as_u64` does with an arbitrary-precision number.
        Some(Field::Number(n)) => match n.parse::<u64>() {
            Ok(v) if v <= i64::MAX as u64 => Ok(Some(v)),
            _ => Err(n.to_owned()),
        },
        Some(Field::Str(s)) => digits(s).map(Some).ok_or_else(|| format!("{s:?}")),
        Some(other) => Err(format!("JSON {}", field_kind(other))),
    }
}

/// `source.sequence` is a JSON array encoded as a string: `["lastCommitLsn","lsn"]`,
/// either element possibly null. Absent or null: `None`.
#[allow(clippy::type_complexity)]
fn sequence(source: &impl Fields) -> Result<Option<(Option<u64>, Option<u64>)>, DecodeError> {
    let text = match source.field("sequence") {
        None | Some(Field::Null) => return Ok(None),
        Some(Field::Str(text)) => text,
        Some(other) => {
            return Err(bad_position(format!(
                "`source.sequence` is JSON {}, not a string",
                field_kind(other)
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
        log_value(Some(field_of(v))).map_err(|shown| bad_position(format!("`source.sequence` {text:?} holds {shown}")))
    };
    Ok(Some((element(last_commit)?, element(lsn)?)))
}

/// A time in microseconds: the `us` field, else the `ms` field times 1000
/// (None where that overflows).
pub(super) fn micros(map: &impl Fields, us: &str, ms: &str) -> Option<i64> {
    int_field(map, us).or_else(|| int_field(map, ms).and_then(|ms| ms.checked_mul(1000)))
}

/// Integers Debezium may print as numbers or, in some converters, as strings.
fn int_field(map: &impl Fields, name: &str) -> Option<i64> {
    match map.field(name)? {
        // What `Number::as_i64` does with an arbitrary-precision number.
        Field::Number(n) => n.parse().ok(),
        Field::Str(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn kind_of(value: &Value) -> &'static str {
    field_kind(field_of(value))
}

fn field_kind(field: Field<'_>) -> &'static str {
    match field {
        Field::Null => "null",
        Field::Bool => "boolean",
        Field::Number(_) => "number",
        Field::Str(_) => "string",
        Field::Array => "array",
        Field::Object => "object",
    }
}
