//! Avro in the Confluent wire format (magic byte 0, 4-byte big-endian schema
//! id, the datum), with schemas from a Confluent-compatible registry
//! (`GET /schemas/ids/{id}`) or from local `.avsc` files. Each schema is
//! prepared once; values are turned into the JSON Debezium's JsonConverter
//! would have written (decimals as in `decimal.handling.mode=string`), so a
//! row renders to the same cache keys whichever way it arrived.

use std::collections::HashMap;
// A poisoned schema cache only means a panic elsewhere while it was held;
// each update is one insert, so the map is consistent and used as it is.
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use apache_avro::schema::{Name, Schema};
use apache_avro::types::Value as Avro;
use apache_avro::GenericSingleObjectReader;
use serde_json::{Map, Value};

use super::{DecodeError, DecodeErrorKind};
use crate::config::SchemaSources;
use crate::registry::{Registry, RegistryError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The registry answered that the id does not exist: permanent.
    #[error("schema id {0} is not known to the registry or the schema files")]
    NotFound(u32),
    /// The schema exists but cannot be parsed: permanent.
    #[error("schema id {id} is not a valid Avro schema: {detail}")]
    Invalid { id: u32, detail: String },
    /// The registry could not be asked: retry.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

/// One schema, parsed and resolved once.
struct Prepared {
    reader: GenericSingleObjectReader,
    root: Schema,
    names: HashMap<Name, Schema>,
}

pub struct AvroSchemas {
    sources: SchemaSources,
    registry: Option<Registry>,
    prepared: RwLock<HashMap<u32, Arc<Prepared>>>,
    /// Permanent answers (unknown id, invalid schema), kept for
    /// [`NEGATIVE_CACHE_TTL`] so that a run of records naming a bad id costs
    /// one registry request, not one each; bounded to [`NEGATIVE_CACHE_MAX`] ids.
    failed: RwLock<HashMap<u32, (Instant, SchemaError)>>,
}

/// How long a permanent schema error is believed: long enough that a flood
/// of bad ids is cheap, short enough that a schema registered late is found.
pub(crate) const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(60);
/// Distinct bad ids remembered at once (hostile input may name 2^32 ids);
/// when full, expired entries go first, then the whole cache is dropped.
pub(crate) const NEGATIVE_CACHE_MAX: usize = 10_000;

/// The schema id of a Confluent-framed payload.
pub fn schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

impl AvroSchemas {
    pub fn new(sources: SchemaSources) -> Result<AvroSchemas, reqwest::Error> {
        Ok(AvroSchemas {
            registry: Registry::from_sources(&sources)?,
            sources,
            prepared: RwLock::new(HashMap::new()),
            failed: RwLock::new(HashMap::new()),
        })
    }

    pub(crate) fn is_loaded(&self, id: u32) -> bool {
        self.prepared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
    }

    /// Loads schema `id` unless it is cached: from the schema files, then the
    /// registry. Permanent errors are cached too, for [`NEGATIVE_CACHE_TTL`].
    pub async fn ensure(&self, id: u32) -> Result<(), SchemaError> {
        if self.is_loaded(id) {
            return Ok(());
        }
        if let Some(error) = self.cached_failure(id) {
            return Err(error);
        }
        let outcome = self.load(id).await;
        if let Err(error @ (SchemaError::NotFound(_) | SchemaError::Invalid { .. })) = &outcome {
            let mut failed = self.failed.write().unwrap_or_else(PoisonError::into_inner);
            if failed.len() >= NEGATIVE_CACHE_MAX {
                failed.retain(|_, (at, _)| at.elapsed() < NEGATIVE_CACHE_TTL);
                if failed.len() >= NEGATIVE_CACHE_MAX {
                    failed.clear();
                }
            }
            failed.insert(id, (Instant::now(), error.clone()));
        }
        outcome
    }

    /// The permanent error cached for `id`, while it is fresh.
    pub(crate) fn cached_failure(&self, id: u32) -> Option<SchemaError> {
        let failed = self.failed.read().unwrap_or_else(PoisonError::into_inner);
        failed
            .get(&id)
            .filter(|(at, _)| at.elapsed() < NEGATIVE_CACHE_TTL)
            .map(|(_, error)| error.clone())
    }

    async fn load(&self, id: u32) -> Result<(), SchemaError> {
        let text = match self.read_schema_file(id)? {
            Some(text) => text,
            None => self.fetch_from_registry(id).await?,
        };
        let root = Schema::parse_str(&text).map_err(|e| SchemaError::Invalid {
            id,
            detail: e.to_string(),
        })?;
        let names = apache_avro::schema::ResolvedSchema::try_from(&root)
            .map_err(|e| SchemaError::Invalid {
                id,
                detail: e.to_string(),
            })?
            .get_names()
            .iter()
            .map(|(name, schema)| (name.clone(), (*schema).clone()))
            .collect();
        // An empty expected header: the Confluent framing is stripped before.
        let reader = GenericSingleObjectReader::builder()
            .schema(root.clone())
            .header(Vec::new())
            .build()
            .map_err(|e| SchemaError::Invalid {
                id,
                detail: e.to_string(),
            })?;
        self.prepared
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::new(Prepared { reader, root, names }));
        tracing::info!(schema_id = id, "avro schema loaded");
        Ok(())
    }

    fn read_schema_file(&self, id: u32) -> Result<Option<String>, SchemaError> {
        let Some(dir) = &self.sources.schemas_dir else {
            return Ok(None);
        };
        let path = dir.join(format!("{id}.avsc"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SchemaError::Invalid {
                id,
                detail: format!("{}: {e}", path.display()),
            }),
        }
    }

    async fn fetch_from_registry(&self, id: u32) -> Result<String, SchemaError> {
        let Some(registry) = &self.registry else {
            return Err(SchemaError::NotFound(id));
        };
        registry.schema_by_id(id).await.map_err(|e| match e {
            RegistryError::NotFound => SchemaError::NotFound(id),
            RegistryError::Unavailable(detail) => SchemaError::Unavailable(detail),
            RegistryError::Malformed(detail) => SchemaError::Invalid { id, detail },
        })
    }

    /// Decodes one framed payload with its (already loaded) schema into
    /// JsonConverter-shaped JSON.
    pub(crate) fn decode(&self, bytes: &[u8], part: &str) -> Result<Value, DecodeError> {
        let id = schema_id(bytes).ok_or_else(|| {
            DecodeError::new(
                DecodeErrorKind::Truncated,
                format!("{part}: {} bytes cannot hold the Confluent framing", bytes.len()),
            )
        })?;
        let prepared = self
            .prepared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
            .ok_or_else(|| match self.cached_failure(id) {
                Some(error @ SchemaError::Invalid { .. }) => {
                    DecodeError::new(DecodeErrorKind::InvalidSchema, format!("{part}: {error}"))
                }
                Some(error) => DecodeError::new(DecodeErrorKind::UnknownSchema, format!("{part}: {error}")),
                None => DecodeError::new(
                    DecodeErrorKind::UnknownSchema,
                    format!("{part}: schema id {id} is not known"),
                ),
            })?;
        // schema_id just read the 5-byte framing, so the datum starts at 5.
        let mut datum = bytes.get(5..).unwrap_or_default();
        let value = prepared.reader.read_value(&mut datum).map_err(|e| {
            let text = e.to_string();
            let kind =
                if text.contains("fill whole buffer") || text.contains("UnexpectedEof") || text.contains("end of file")
                {
                    DecodeErrorKind::Truncated
                } else {
                    DecodeErrorKind::UnexpectedShape
                };
            DecodeError::new(kind, format!("{part}: avro datum for schema id {id}: {text}"))
        })?;
        if !datum.is_empty() {
            return Err(DecodeError::new(
                DecodeErrorKind::TrailingBytes,
                format!(
                    "{part}: {} bytes left over after the avro datum (schema id {id})",
                    datum.len()
                ),
            ));
        }
        let json = to_json(&value, &prepared.root, &prepared.names)
            .map_err(|Bad(kind, detail)| DecodeError::new(kind, format!("{part}: {detail}")))?;
        let name = match &prepared.root {
            Schema::Record(record) => Some(record.name.fullname(None)),
            _ => None,
        };
        Ok(super::wrapper(name, json))
    }
}

/// Why a datum cannot become JSON: the kind, and a detail for humans.
struct Bad(DecodeErrorKind, String);

fn shape(detail: String) -> Bad {
    Bad(DecodeErrorKind::UnexpectedShape, detail)
}

/// Avro value to the JSON JsonConverter writes, guided by the schema (for
/// decimal scales and named types).
fn to_json(value: &Avro, schema: &Schema, names: &HashMap<Name, Schema>) -> Result<Value, Bad> {
    let schema = match schema {
        Schema::Ref { name } => names
            .get(name)
            .ok_or_else(|| shape(format!("unknown named type {name:?}")))?,
        other => other,
    };
    Ok(match (value, schema) {
        (Avro::Union(index, inner), Schema::Union(union)) => {
            let branch = union
                .variants()
                .get(usize::try_from(*index).unwrap_or(usize::MAX))
                .ok_or_else(|| shape(format!("union branch {index} out of range")))?;
            to_json(inner, branch, names)?
        }
        (Avro::Union(_, inner), other) => to_json(inner, other, names)?,
        (Avro::Null, _) => Value::Null,
        (Avro::Boolean(b), _) => Value::Bool(*b),
        (Avro::Int(i), _) | (Avro::Date(i), _) | (Avro::TimeMillis(i), _) => Value::from(*i),
        (Avro::Long(i), _)
        | (Avro::TimeMicros(i), _)
        | (Avro::TimestampMillis(i), _)
        | (Avro::TimestampMicros(i), _)
        | (Avro::TimestampNanos(i), _)
        | (Avro::LocalTimestampMillis(i), _)
        | (Avro::LocalTimestampMicros(i), _)
        | (Avro::LocalTimestampNanos(i), _) => Value::from(*i),
        // A float32 is the number its shortest round-trip text names (what
        // Java's Float.toString, hence Debezium's JSON, prints): 0.1, not
        // 0.10000000149011612.
        (Avro::Float(f), _) => float(format!("{f}").parse::<f64>().unwrap_or(f64::NAN)),
        (Avro::Double(f), _) => float(*f),
        (Avro::String(s), _) | (Avro::Enum(_, s), _) => Value::String(s.clone()),
        (Avro::Uuid(u), _) => Value::String(u.to_string()),
        (Avro::Decimal(d), Schema::Decimal(decimal)) => {
            let bytes: Vec<u8> = d.try_into().map_err(|e: apache_avro::Error| shape(e.to_string()))?;
            Value::String(decimal_text(&bytes, decimal.scale as u64)?)
        }
        (Avro::BigDecimal(d), _) => {
            let (unscaled, scale) = d.as_bigint_and_exponent();
            let scale = u64::try_from(scale).map_err(|_| bounds(format!("a decimal with negative scale {scale}")))?;
            Value::String(decimal_text(&unscaled.to_signed_bytes_be(), scale)?)
        }
        (Avro::Bytes(b), _) | (Avro::Fixed(_, b), _) => Value::String(base64(b)),
        (Avro::Array(items), Schema::Array(array)) => Value::Array(
            items
                .iter()
                .map(|v| to_json(v, &array.items, names))
                .collect::<Result<_, Bad>>()?,
        ),
        (Avro::Map(entries), Schema::Map(map)) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v, &map.types, names)?)))
                .collect::<Result<Map<_, _>, Bad>>()?,
        ),
        (Avro::Record(fields), Schema::Record(record)) => {
            let mut out = Map::new();
            for (name, field_value) in fields {
                let field_schema = record
                    .fields
                    .iter()
                    .find(|f| &f.name == name)
                    .map(|f| &f.schema)
                    .ok_or_else(|| shape(format!("field {name:?} not in the schema")))?;
                out.insert(name.clone(), to_json(field_value, field_schema, names)?);
            }
            // io.debezium.data.VariableScaleDecimal {scale, value} prints
            // as decimal.handling.mode=string would print the column.
            if record.name.name() == "VariableScaleDecimal" {
                let scale = fields.iter().find_map(|(n, v)| match (n.as_str(), v) {
                    ("scale", Avro::Int(scale)) => Some(*scale),
                    _ => None,
                });
                let unscaled = fields.iter().find_map(|(n, v)| match (n.as_str(), v) {
                    ("value", Avro::Bytes(b)) => Some(b),
                    _ => None,
                });
                if let (Some(scale), Some(unscaled)) = (scale, unscaled) {
                    let scale = u64::try_from(scale)
                        .map_err(|_| bounds(format!("a VariableScaleDecimal with negative scale {scale}")))?;
                    return Ok(Value::String(decimal_text(unscaled, scale)?));
                }
            }
            Value::Object(out)
        }
        (other, schema) => {
            return Err(shape(format!(
                "avro value {} does not fit schema {}",
                shown(other),
                shown(schema)
            )))
        }
    })
}

// Bounds on decimals from input. PostgreSQL's numeric holds up to 131072
// digits before the point and 16383 after, but a key of that size is no key
// a reader builds: beyond these, the record is a dead letter (a scale of
// 70000 used to panic the formatter, 65534 made a 65,540-character key).
/// Unscaled bytes: 128 bytes hold any 308-digit number.
pub(crate) const MAX_DECIMAL_BYTES: usize = 128;
/// Digits after the point.
pub(crate) const MAX_DECIMAL_SCALE: u64 = 1000;

fn bounds(detail: String) -> Bad {
    Bad(DecodeErrorKind::OutOfBounds, detail)
}

/// Big-endian two's complement unscaled value of any length (within
/// [`MAX_DECIMAL_BYTES`]) and a scale, printed as Java's
/// BigDecimal.toPlainString does (Debezium's string mode): exact at any size.
fn decimal_text(unscaled: &[u8], scale: u64) -> Result<String, Bad> {
    if unscaled.len() > MAX_DECIMAL_BYTES {
        return Err(bounds(format!(
            "a decimal of {} bytes is beyond the bound of {MAX_DECIMAL_BYTES} bytes",
            unscaled.len()
        )));
    }
    if scale > MAX_DECIMAL_SCALE {
        return Err(bounds(format!(
            "a decimal scale of {scale} is beyond the bound of {MAX_DECIMAL_SCALE}"
        )));
    }
    let negative = unscaled.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude = unscaled.to_vec();
    if negative {
        // Two's complement: invert and add one (from the last byte).
        let mut carry = true;
        for byte in magnitude.iter_mut().rev() {
            let (sum, overflow) = (!*byte).overflowing_add(u8::from(carry));
            *byte = sum;
            carry = overflow;
        }
    }
    let digits = magnitude_digits(&magnitude);
    let sign = if negative && digits.bytes().any(|d| d != b'0') {
        "-"
    } else {
        ""
    };
    // Bounded by MAX_DECIMAL_SCALE above, so it fits a usize.
    let scale = usize::try_from(scale).unwrap_or(usize::MAX);
    if scale == 0 {
        return Ok(format!("{sign}{digits}"));
    }
    let padded = format!("{digits:0>width$}", width = scale.saturating_add(1));
    let (int, frac) = padded.split_at(padded.len().saturating_sub(scale));
    Ok(format!("{sign}{int}.{frac}"))
}

/// Decimal digits of a big-endian unsigned magnitude (no leading zeros; "0").
fn magnitude_digits(bytes: &[u8]) -> String {
    let mut number: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut digits = Vec::new();
    while !number.is_empty() {
        // Divide by 10, keeping the remainder: one decimal digit.
        let mut remainder: u16 = 0;
        for byte in number.iter_mut() {
            let acc = (remainder << 8) | u16::from(*byte);
            *byte = u8::try_from(acc / 10).unwrap_or(0);
            remainder = acc % 10;
        }
        digits.push(b'0' + u8::try_from(remainder).unwrap_or(0));
        let zeros = number.iter().take_while(|b| **b == 0).count();
        number.drain(..zeros);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// A JSON number for a finite float; Java's spelling of the others, as
/// Debezium's JSON carries them (never null: null means SQL NULL).
fn float(f: f64) -> Value {
    match serde_json::Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".into()),
        None if f > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

/// Debug text of a value or schema, cut short: a detail, not a dump.
fn shown(value: &impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", text.get(..at).unwrap_or_default()),
        None => text,
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_print_like_debezium_string_mode() {
        let text = |b: &[u8], scale| decimal_text(b, scale).ok().unwrap();
        assert_eq!(text(&[0x04, 0xe2], 2), "12.50");
        assert_eq!(text(&[0xfb], 2), "-0.05");
        assert_eq!(text(&[0x04, 0xe2], 0), "1250");
        assert_eq!(text(&[0x00], 3), "0.000");
        assert_eq!(text(&[0x80], 0), "-128");
        assert_eq!(text(&[], 0), "0");
        // Beyond 38 digits (17 bytes): exact, as in Debezium's JSON.
        assert_eq!(text(&[1; 17], 0), "341616807575530379006368233343265341697");
        assert_eq!(text(&[0xff; 17], 1), "-0.1");
    }

    #[test]
    fn decimal_scale_and_length_are_bounded() {
        assert!(matches!(
            decimal_text(&[1], 70000),
            Err(Bad(DecodeErrorKind::OutOfBounds, _))
        ));
        assert!(decimal_text(&[1], MAX_DECIMAL_SCALE).is_ok());
        assert!(matches!(
            decimal_text(&[1; MAX_DECIMAL_BYTES + 1], 0),
            Err(Bad(DecodeErrorKind::OutOfBounds, _))
        ));
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi"), "aGk=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn framing() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]), Some(258));
        assert_eq!(schema_id(&[1, 0, 0, 1, 2]), None);
        assert_eq!(schema_id(&[0, 0]), None);
    }

    #[tokio::test]
    async fn bad_schemas_are_cached_and_said_to_be_invalid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("7.avsc"), "{not a schema").unwrap();
        let schemas = AvroSchemas::new(SchemaSources {
            schemas_dir: Some(dir.path().to_path_buf()),
            timeout: Duration::from_secs(1),
            ..SchemaSources::default()
        })
        .unwrap();
        assert!(matches!(
            schemas.ensure(7).await,
            Err(SchemaError::Invalid { id: 7, .. })
        ));
        // Cached: a fixed file would not be read again within the TTL.
        std::fs::write(dir.path().join("7.avsc"), "\"string\"").unwrap();
        assert!(matches!(
            schemas.ensure(7).await,
            Err(SchemaError::Invalid { id: 7, .. })
        ));
        let error = schemas.decode(&[0, 0, 0, 0, 7, 2], "value").unwrap_err();
        assert_eq!(error.kind, DecodeErrorKind::InvalidSchema);
        assert!(error.detail.contains("not a valid Avro schema"), "{}", error.detail);
        assert!(matches!(schemas.ensure(8).await, Err(SchemaError::NotFound(8))));
        assert_eq!(schemas.cached_failure(8), Some(SchemaError::NotFound(8)));
    }
}
