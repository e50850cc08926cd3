//! The key-rendering vectors (tests/vectors/keys.json, docs/key-rendering.md)
//! through every path a value takes: a Debezium JSON change (with and without
//! the schema wrapper), a Debezium Avro change (Confluent framing), and a
//! fan-out lookup row from the real PostgreSQL (sqlx). Each must render the
//! vector's text exactly.

use crate::common;

use std::time::Duration;

use apache_avro::types::Value as Avro;
use cdc_invalidator::config::{self, Settings};
use cdc_invalidator::decode::{AvroSchemas, SchemaSources};
use cdc_invalidator::event::KafkaRecord;
use cdc_invalidator::graph::{Fanout, Target, Template};
use cdc_invalidator::lookup::Lookups;
use cdc_invalidator::pipeline::{route_with, Routed};
use serde_json::{json, Value};

const CONFIG: &str = r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "vectors"
topics = ["shop.public.vec"]
[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"
[[entity]]
table = "public.vec"
keys = ["v:{c}"]
"#;

fn vectors() -> Vec<Value> {
    let path = format!("{}/tests/vectors/keys.json", env!("CARGO_MANIFEST_DIR"));
    let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let list = all["vectors"].as_array().unwrap().clone();
    assert!(list.len() >= 20);
    list
}

fn settings() -> Settings {
    config::parse("vectors.toml", CONFIG, &|_| None).unwrap()
}

fn rendered(settings: &Settings, record: &KafkaRecord, avro: Option<&AvroSchemas>) -> Vec<Target> {
    let route = route_with(&settings.graph, &settings.plan, record, 0, true, avro);
    match route.action {
        Routed::Bump { targets, .. } => targets,
        other => panic!("expected a bump, got {other:?} ({:?})", route.dead_letter),
    }
}

fn source() -> Value {
    json!({"connector": "postgresql", "name": "shop", "db": "shop", "schema": "public", "table": "vec",
           "lsn": 10, "sequence": "[\"10\",\"10\"]", "ts_us": 1})
}

#[test]
fn json_path_renders_every_vector() {
    let settings = settings();
    for v in vectors() {
        let want = vec![Target::Key(format!("v:{}", v["text"].as_str().unwrap()))];
        let payload = json!({"before": null, "after": {"id": 1, "c": v["json"]}, "source": source(), "op": "c"});
        for value in [
            payload.clone(),
            json!({"schema": {"type": "struct", "name": "shop.public.vec.Envelope"}, "payload": payload}),
        ] {
            let record = KafkaRecord {
                topic: "shop.public.vec".into(),
                partition: 0,
                offset: 0,
                key: Some(br#"{"id":1}"#.to_vec()),
                value: Some(serde_json::to_vec(&value).unwrap()),
                timestamp_ms: None,
                headers: Vec::new(),
            };
            assert_eq!(
                rendered(&settings, &record, None),
                want,
                "json path, vector {}",
                v["name"]
            );
        }
    }
}

fn avro_field(spec: &Value) -> (Value, Avro) {
    let hex = |s: &str| {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
    };
    let value = &spec["value"];
    match spec["type"].as_str().unwrap() {
        "long" => (json!("long"), Avro::Long(value.as_i64().unwrap())),
        "int" => (json!("int"), Avro::Int(i32::try_from(value.as_i64().unwrap()).unwrap())),
        "double" => (json!("double"), Avro::Double(value.as_f64().unwrap())),
        // A float vector's value is a float32 printed as JSON: narrowing the
        // parsed f64 rounds back to exactly that float32, which is the point.
        #[allow(clippy::cast_possible_truncation)]
        "float" => (json!("float"), Avro::Float(value.as_f64().unwrap() as f32)),
        "boolean" => (json!("boolean"), Avro::Boolean(value.as_bool().unwrap())),
        "string" => (json!("string"), Avro::String(value.as_str().unwrap().into())),
        "date" => (
            json!({"type": "int", "logicalType": "date"}),
            Avro::Date(i32::try_from(value.as_i64().unwrap()).unwrap()),
        ),
        "VariableScaleDecimal" => (
            json!({"type": "record", "name": "VariableScaleDecimal", "namespace": "io.debezium.data",
                   "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}]}),
            Avro::Record(vec![
                (
                    "scale".into(),
                    Avro::Int(i32::try_from(spec["scale"].as_i64().unwrap()).unwrap()),
                ),
                ("value".into(), Avro::Bytes(hex(spec["unscaled"].as_str().unwrap()))),
            ]),
        ),
        other => panic!("no avro type {other}"),
    }
}

#[tokio::test]
async fn avro_path_renders_every_vector() {
    let settings = settings();
    let dir = tempfile::tempdir().unwrap();
    let key_schema =
        r#"{"type":"record","name":"Key","namespace":"shop.public.vec","fields":[{"name":"id","type":"int"}]}"#;
    std::fs::write(dir.path().join("1.avsc"), key_schema).unwrap();
    let mut cases = Vec::new();
    for (i, v) in vectors().into_iter().enumerate() {
        let id = 100 + u32::try_from(i).unwrap();
        let (field_type, field_value) = avro_field(&v["avro"]);
        let schema = json!({"type": "record", "name": "Envelope", "namespace": "shop.public.vec", "fields": [
            {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [
                {"name": "id", "type": "int"}, {"name": "c", "type": field_type}]}], "default": null},
            {"name": "after", "type": ["null", "Value"], "default": null},
            {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
              "fields": [{"name": "connector", "type": "string"}, {"name": "name", "type": "string"},
                         {"name": "schema", "type": "string"}, {"name": "table", "type": "string"},
                         {"name": "lsn", "type": "long"}, {"name": "sequence", "type": "string"}]}},
            {"name": "op", "type": "string"}]});
        std::fs::write(dir.path().join(format!("{id}.avsc")), schema.to_string()).unwrap();
        cases.push((id, schema, field_value, v));
    }
    let avro = AvroSchemas::new(SchemaSources {
        schemas_dir: Some(dir.path().to_path_buf()),
        timeout: Duration::from_secs(1),
        ..SchemaSources::default()
    })
    .unwrap();
    avro.ensure(1).await.unwrap();
    let key_schema = apache_avro::Schema::parse_str(key_schema).unwrap();
    for (id, schema, field_value, v) in cases {
        avro.ensure(id).await.unwrap();
        let schema = apache_avro::Schema::parse_str(&schema.to_string()).unwrap();
        let row = Avro::Record(vec![("id".into(), Avro::Int(1)), ("c".into(), field_value)]);
        let envelope = common::avro_insert("vec", row, Avro::Long(10), Avro::String("[\"10\",\"10\"]".into()));
        let record = KafkaRecord {
            topic: "shop.public.vec".into(),
            partition: 0,
            offset: 0,
            key: Some(common::confluent_framed(
                1,
                &key_schema,
                Avro::Record(vec![("id".into(), Avro::Int(1))]),
            )),
            value: Some(common::confluent_framed(id, &schema, envelope)),
            timestamp_ms: None,
            headers: Vec::new(),
        };
        let want = vec![Target::Key(format!("v:{}", v["text"].as_str().unwrap()))];
        assert_eq!(
            rendered(&settings, &record, Some(&avro)),
            want,
            "avro path, vector {}",
            v["name"]
        );
    }
}

/// Needs the stack's PostgreSQL (CDC_PG_URL).
#[tokio::test]
async fn lookup_path_renders_every_vector_from_the_real_postgresql() {
    let lookups = Lookups::connect_lazy(&common::pg_url(), Duration::from_secs(10), 1).unwrap();
    let template = Template::parse("v:{c}").unwrap();
    for v in vectors() {
        let fanout = Fanout {
            query: format!("SELECT {} AS c", v["sql"].as_str().unwrap()),
            bind: Vec::new(),
            keys: vec![template.clone()],
            max_rows: 1,
            namespace: None,
        };
        let rows = lookups.run(&fanout, &[]).await.unwrap();
        assert_eq!(rows.len(), 1, "{}", fanout.query);
        let key = template.render(&rows[0]).unwrap();
        assert_eq!(
            key.as_deref(),
            Some(format!("v:{}", v["text"].as_str().unwrap()).as_str()),
            "lookup path, vector {} ({})",
            v["name"],
            fanout.query
        );
    }
}
