//! Avro in the Confluent wire format (magic byte 0, 4-byte big-endian schema
//! id, the datum), with schemas from a Confluent-compatible registry
//! (`GET /schemas/ids/{id}`) or from local `.avsc` files. Each schema is
//! prepared once; values are turned into the JSON Debezium's JsonConverter
//! would have written (decimals as in `decimal.handling.mode=string`), so a
//! row renders to the same cache keys whichever way it arrived.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::schema::{Name, Schema};
use apache_avro::types::Value as Avro;
use apache_avro::GenericSingleObjectReader;
use serde_json::{Map, Value};

use super::{DecodeError, DecodeErrorKind};

/// Where schemas come from.
#[derive(Debug, Clone, Default)]
pub struct SchemaSources {
    pub registry_url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Files named `<id>.avsc`, used before (or instead of) the registry.
    pub schemas_dir: Option<PathBuf>,
    pub timeout: Duration,
}

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
    http: reqwest::Client,
    prepared: RwLock<HashMap<u32, Arc<Prepared>>>,
}

/// The schema id of a Confluent-framed payload.
pub fn schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

impl AvroSchemas {
    pub fn new(sources: SchemaSources) -> Result<AvroSchemas, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(sources.timeout.max(Duration::from_millis(100)))
            .build()?;
        Ok(AvroSchemas {
            sources,
            http,
            prepared: RwLock::new(HashMap::new()),
        })
    }

    pub fn is_loaded(&self, id: u32) -> bool {
        self.prepared.read().expect("schema cache lock").contains_key(&id)
    }

    /// Loads schema `id` unless it is cached: from the schema files, then the registry.
    pub async fn ensure(&self, id: u32) -> Result<(), SchemaError> {
        if self.is_loaded(id) {
            return Ok(());
        }
        let text = match self.from_file(id)? {
            Some(text) => text,
            None => self.from_registry(id).await?,
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
            .expect("schema cache lock")
            .insert(id, Arc::new(Prepared { reader, root, names }));
        tracing::info!(schema_id = id, "avro schema loaded");
        Ok(())
    }

    fn from_file(&self, id: u32) -> Result<Option<String>, SchemaError> {
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

    async fn from_registry(&self, id: u32) -> Result<String, SchemaError> {
        let Some(base) = &self.sources.registry_url else {
            return Err(SchemaError::NotFound(id));
        };
        let url = format!("{}/schemas/ids/{id}", base.trim_end_matches('/'));
        let mut request = self
            .http
            .get(&url)
            .header("Accept", "application/vnd.schemaregistry.v1+json, application/json");
        if let Some(user) = &self.sources.username {
            request = request.basic_auth(user, self.sources.password.as_deref());
        }
        let response = request
            .send()
            .await
            .map_err(|e| SchemaError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(SchemaError::NotFound(id));
        }
        if !status.is_success() {
            return Err(SchemaError::Unavailable(format!(
                "GET /schemas/ids/{id} answered {status}"
            )));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| SchemaError::Unavailable(e.without_url().to_string()))?;
        match body.get("schema") {
            Some(Value::String(text)) => Ok(text.clone()),
            _ => Err(SchemaError::Invalid {
                id,
                detail: "the registry answer has no \"schema\" string".into(),
            }),
        }
    }

    /// Decodes one framed payload with its (already loaded) schema into
    /// JsonConverter-shaped JSON.
    pub fn decode(&self, bytes: &[u8], part: &str) -> Result<Value, DecodeError> {
        let id = schema_id(bytes).ok_or_else(|| {
            DecodeError::new(
                DecodeErrorKind::Truncated,
                format!("{part}: {} bytes cannot hold the Confluent framing", bytes.len()),
            )
        })?;
        let prepared = self
            .prepared
            .read()
            .expect("schema cache lock")
            .get(&id)
            .cloned()
            .ok_or_else(|| {
                DecodeError::new(
                    DecodeErrorKind::UnknownSchema,
                    format!("{part}: schema id {id} is not known"),
                )
            })?;
        let mut datum = &bytes[5..];
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
        to_json(&value, &prepared.root, &prepared.names)
            .map_err(|detail| DecodeError::new(DecodeErrorKind::UnexpectedShape, format!("{part}: {detail}")))
    }
}

/// Avro value to the JSON JsonConverter writes, guided by the schema (for
/// decimal scales and named types).
fn to_json(value: &Avro, schema: &Schema, names: &HashMap<Name, Schema>) -> Result<Value, String> {
    let schema = match schema {
        Schema::Ref { name } => names.get(name).ok_or_else(|| format!("unknown named type {name:?}"))?,
        other => other,
    };
    Ok(match (value, schema) {
        (Avro::Union(index, inner), Schema::Union(union)) => {
            let branch = union
                .variants()
                .get(*index as usize)
                .ok_or_else(|| format!("union branch {index} out of range"))?;
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
        (Avro::Float(f), _) => serde_json::Number::from_f64(f64::from(*f))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        (Avro::Double(f), _) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        (Avro::String(s), _) | (Avro::Enum(_, s), _) => Value::String(s.clone()),
        (Avro::Uuid(u), _) => Value::String(u.to_string()),
        (Avro::Decimal(d), Schema::Decimal(decimal)) => {
            let bytes: Vec<u8> = d.try_into().map_err(|e: apache_avro::Error| e.to_string())?;
            Value::String(decimal_text(&bytes, decimal.scale)?)
        }
        (Avro::BigDecimal(d), _) => Value::String(d.to_string()),
        (Avro::Bytes(b), _) | (Avro::Fixed(_, b), _) => Value::String(base64(b)),
        (Avro::Array(items), Schema::Array(array)) => Value::Array(
            items
                .iter()
                .map(|v| to_json(v, &array.items, names))
                .collect::<Result<_, _>>()?,
        ),
        (Avro::Map(entries), Schema::Map(map)) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v, &map.types, names)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
        (Avro::Record(fields), Schema::Record(record)) => {
            let mut out = Map::new();
            for (name, field_value) in fields {
                let field_schema = record
                    .fields
                    .iter()
                    .find(|f| &f.name == name)
                    .map(|f| &f.schema)
                    .ok_or_else(|| format!("field {name:?} not in the schema"))?;
                out.insert(name.clone(), to_json(field_value, field_schema, names)?);
            }
            // io.debezium.data.VariableScaleDecimal {scale, value} prints
            // as decimal.handling.mode=string would print the column.
            if record.name.name() == "VariableScaleDecimal" {
                let scale = out.get("scale").and_then(Value::as_u64);
                let unscaled = fields.iter().find_map(|(n, v)| match (n.as_str(), v) {
                    ("value", Avro::Bytes(b)) => Some(b),
                    _ => None,
                });
                if let (Some(scale), Some(unscaled)) = (scale, unscaled) {
                    return Ok(Value::String(decimal_text(unscaled, scale as usize)?));
                }
            }
            Value::Object(out)
        }
        (other, schema) => return Err(format!("avro value {other:?} does not fit schema {schema:?}")),
    })
}

/// Big-endian two's complement unscaled value and a scale, printed as
/// Java's BigDecimal.toPlainString does (Debezium's string mode).
fn decimal_text(unscaled: &[u8], scale: usize) -> Result<String, String> {
    if unscaled.len() > 16 {
        return Err(format!("a decimal of {} bytes is beyond 38 digits", unscaled.len()));
    }
    let negative = unscaled.first().is_some_and(|b| b & 0x80 != 0);
    let mut buf = [if negative { 0xff } else { 0 }; 16];
    buf[16 - unscaled.len()..].copy_from_slice(unscaled);
    let n = i128::from_be_bytes(buf);
    let digits = n.unsigned_abs().to_string();
    let sign = if n < 0 { "-" } else { "" };
    if scale == 0 {
        return Ok(format!("{sign}{digits}"));
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    Ok(format!("{sign}{int}.{frac}"))
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_print_like_debezium_string_mode() {
        assert_eq!(decimal_text(&[0x04, 0xe2], 2).unwrap(), "12.50");
        assert_eq!(decimal_text(&[0xfb], 2).unwrap(), "-0.05");
        assert_eq!(decimal_text(&[0x04, 0xe2], 0).unwrap(), "1250");
        assert_eq!(decimal_text(&[0x00], 3).unwrap(), "0.000");
        assert!(decimal_text(&[1; 17], 0).is_err());
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
}
