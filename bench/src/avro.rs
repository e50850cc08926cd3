//! The same change events as Debezium's AvroConverter writes them: the
//! Confluent wire format (magic byte 0, 4-byte big-endian schema id, the
//! Avro datum), with Debezium's record names (`<prefix>.public.bench_items.Key`,
//! `.Value`, `.Envelope`, `io.debezium.connector.postgresql.Source`).
//! The schemas are written as `<id>.avsc` files for the daemon's
//! `[avro] schemas_dir` (no registry needed).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Context};
use apache_avro::schema::{Name, ResolvedSchema, Schema};
use apache_avro::types::Value as Avro;
use serde_json::{json, Value};

use crate::gen::{SCHEMA, TABLE};

pub const KEY_SCHEMA_ID: u32 = 1;
pub const VALUE_SCHEMA_ID: u32 = 2;

pub struct AvroEncoder {
    key: Prepared,
    value: Prepared,
}

struct Prepared {
    id: u32,
    schema: Schema,
    names: HashMap<Name, Schema>,
    text: String,
}

impl Prepared {
    fn new(id: u32, json: Value) -> anyhow::Result<Prepared> {
        let text = json.to_string();
        let schema = Schema::parse_str(&text).context("avro schema")?;
        let names = ResolvedSchema::try_from(&schema)?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        Ok(Prepared {
            id,
            schema,
            names,
            text,
        })
    }

    fn encode(&self, payload: &Value) -> anyhow::Result<Vec<u8>> {
        let value = to_avro(payload, &self.schema, &self.names)?;
        #[allow(deprecated)] // the plain datum writer; its successor needs more setup for no gain here
        let datum = apache_avro::to_avro_datum(&self.schema, value)?;
        let mut out = Vec::with_capacity(5 + datum.len());
        out.push(0);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&datum);
        Ok(out)
    }
}

impl AvroEncoder {
    pub fn new(topic_prefix: &str) -> anyhow::Result<AvroEncoder> {
        Ok(AvroEncoder {
            key: Prepared::new(KEY_SCHEMA_ID, key_schema(topic_prefix))?,
            value: Prepared::new(VALUE_SCHEMA_ID, value_schema(topic_prefix))?,
        })
    }

    /// `payload` is what JsonConverter would put under "payload".
    pub fn encode_key(&self, payload: &Value) -> anyhow::Result<Vec<u8>> {
        self.key.encode(payload)
    }

    pub fn encode_value(&self, payload: &Value) -> anyhow::Result<Vec<u8>> {
        self.value.encode(payload)
    }

    /// Writes `1.avsc` (key) and `2.avsc` (value) into `dir`.
    pub fn write_schemas(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for p in [&self.key, &self.value] {
            std::fs::write(dir.join(format!("{}.avsc", p.id)), &p.text)?;
        }
        Ok(())
    }
}

/// JSON (as JsonConverter prints it) to an Avro value of `schema`.
fn to_avro(v: &Value, schema: &Schema, names: &HashMap<Name, Schema>) -> anyhow::Result<Avro> {
    let schema = match schema {
        Schema::Ref { name } => names.get(name).ok_or_else(|| anyhow!("unknown type {name:?}"))?,
        other => other,
    };
    Ok(match (schema, v) {
        (Schema::Union(u), v) => {
            let variants = u.variants();
            let index = if v.is_null() {
                variants.iter().position(|s| matches!(s, Schema::Null))
            } else {
                variants.iter().position(|s| !matches!(s, Schema::Null))
            }
            .ok_or_else(|| anyhow!("no union branch for {v}"))?;
            Avro::Union(u32::try_from(index)?, Box::new(to_avro(v, &variants[index], names)?))
        }
        (Schema::Null, Value::Null) => Avro::Null,
        (Schema::Boolean, Value::Bool(b)) => Avro::Boolean(*b),
        (Schema::Int, Value::Number(n)) => {
            Avro::Int(i32::try_from(n.as_i64().context("int")?).context("int out of range")?)
        }
        (Schema::Long, Value::Number(n)) => Avro::Long(n.as_i64().context("long")?),
        (Schema::String, Value::String(s)) => Avro::String(s.clone()),
        (Schema::Record(r), Value::Object(map)) => Avro::Record(
            r.fields
                .iter()
                .map(|f| {
                    Ok((
                        f.name.clone(),
                        to_avro(map.get(&f.name).unwrap_or(&Value::Null), &f.schema, names)?,
                    ))
                })
                .collect::<anyhow::Result<_>>()?,
        ),
        (s, v) => return Err(anyhow!("cannot encode {v} as {s:?}")),
    })
}

fn opt(name: &str, ty: Value) -> Value {
    json!({"name": name, "type": ["null", ty], "default": null})
}

fn req(name: &str, ty: Value) -> Value {
    json!({"name": name, "type": ty})
}

fn key_schema(prefix: &str) -> Value {
    json!({
        "type": "record", "name": "Key", "namespace": format!("{prefix}.{SCHEMA}.{TABLE}"),
        "fields": [req("id", json!("long"))],
        "connect.name": format!("{prefix}.{SCHEMA}.{TABLE}.Key")
    })
}

fn value_schema(prefix: &str) -> Value {
    let ns = format!("{prefix}.{SCHEMA}.{TABLE}");
    let row = json!({
        "type": "record", "name": "Value", "fields": [
            req("id", json!("long")),
            req("sku", json!("string")),
            opt("category_id", json!("long")),
            opt("stock", json!({"type": "int", "connect.type": "int16"})),
            opt("price", json!("string")),
            opt("active", json!("boolean")),
            opt("updated_at", json!({"type": "string", "connect.version": 1, "connect.name": "io.debezium.time.ZonedTimestamp"})),
            opt("description", json!("string")),
        ],
        "connect.name": format!("{ns}.Value")
    });
    json!({
        "type": "record", "name": "Envelope", "namespace": ns,
        "fields": [
            {"name": "before", "type": ["null", row], "default": null},
            opt("after", json!("Value")),
            req("source", json!({
                "type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
                "fields": [
                    req("version", json!("string")),
                    req("connector", json!("string")),
                    req("name", json!("string")),
                    req("ts_ms", json!("long")),
                    opt("snapshot", json!({"type": "string", "connect.version": 1, "connect.name": "io.debezium.data.Enum",
                        "connect.parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"}})),
                    req("db", json!("string")),
                    opt("sequence", json!("string")),
                    opt("ts_us", json!("long")),
                    opt("ts_ns", json!("long")),
                    req("schema", json!("string")),
                    req("table", json!("string")),
                    opt("txId", json!("long")),
                    opt("lsn", json!("long")),
                    opt("xmin", json!("long")),
                    opt("origin", json!("string")),
                    opt("origin_lsn", json!("long")),
                ],
                "connect.name": "io.debezium.connector.postgresql.Source"
            })),
            opt("transaction", json!({
                "type": "record", "name": "block", "namespace": "event",
                "fields": [req("id", json!("string")), req("total_order", json!("long")), req("data_collection_order", json!("long"))],
                "connect.version": 1, "connect.name": "event.block"
            })),
            req("op", json!("string")),
            opt("ts_ms", json!("long")),
            opt("ts_us", json!("long")),
            opt("ts_ns", json!("long")),
        ],
        "connect.version": 2,
        "connect.name": format!("{ns}.Envelope")
    })
}
