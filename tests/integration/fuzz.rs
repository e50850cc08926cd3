//! Structure-aware fuzzing of the record path (no hostile record may crash
//! the daemon or be lost silently), on stable Rust in `cargo test`, with a
//! fixed seed and budget: mutations of the captured Debezium fixtures
//! (tests/fixtures/debezium, JSON with and without the schema wrapper) and
//! of Avro records (Confluent framing), headers included, through decode,
//! graph and the dead-letter encoding.
//!
//! Invariants: no panic; every record is applied, skipped as documented,
//! escalated or a dead letter; valid records interleaved with the poison
//! render their exact keys; a dead letter always encodes (no NUL in text).
//!
//! `CDC_FUZZ_CASES` and `CDC_FUZZ_SEED` override the budget and the seed.

use crate::common;

use std::time::{Duration, Instant};

use apache_avro::types::Value as Avro;
use cdc_invalidator::config::{self, Settings};
use cdc_invalidator::dead_letter::Encoded;
use cdc_invalidator::decode::table_from_topic;
use cdc_invalidator::decode::{AvroSchemas, SchemaSources};
use cdc_invalidator::event::{KafkaRecord, UNAVAILABLE_VALUE};
use cdc_invalidator::graph::{Graph, Target};
use cdc_invalidator::pipeline::{route_with, Route, Routed};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};

const CONFIG: &str = r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "fuzz"
topic_regex = "shop\\.public\\.fx_.*"
[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"
[[entity]]
table = "public.fx_products"
namespace = "product"
replica_identity = "full"
keys = ["product:{id}", "sku:{sku}", "category:{category_id}:products"]
[[entity]]
table = "public.fx_orders"
namespace = "order"
replica_identity = "full"
keys = ["order:{id}", "customer:{customer_id}:orders"]
[[entity]]
table = "public.fx_order_items"
keys = ["order:{order_id}:line:{line_no}"]
"#;

const AVRO_ID: u32 = 4101;
const AVRO_KEY_ID: u32 = 4102;
const AVRO_VALUE_SCHEMA: &str = r#"{"type":"record","name":"Envelope","namespace":"shop.public.fx_products","fields":[
 {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
   {"name":"id","type":"int"},
   {"name":"sku","type":"string"},
   {"name":"category_id","type":["null","long"],"default":null},
   {"name":"weight","type":["null","float"],"default":null},
   {"name":"price","type":["null",{"type":"record","name":"VariableScaleDecimal","namespace":"io.debezium.data",
     "fields":[{"name":"scale","type":"int"},{"name":"value","type":"bytes"}]}],"default":null}]}],"default":null},
 {"name":"after","type":["null","Value"],"default":null},
 {"name":"source","type":{"type":"record","name":"Source","namespace":"io.debezium.connector.postgresql","fields":[
   {"name":"connector","type":"string"},{"name":"name","type":"string"},{"name":"schema","type":"string"},
   {"name":"table","type":"string"},{"name":"lsn","type":["null","long"]},{"name":"sequence","type":["null","string"]}]}},
 {"name":"op","type":"string"}]}"#;
const AVRO_KEY_SCHEMA: &str =
    r#"{"type":"record","name":"Key","namespace":"shop.public.fx_products","fields":[{"name":"id","type":"int"}]}"#;

struct Fixture {
    topic: String,
    key: Option<Value>,
    value: Option<Value>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = format!("{}/tests/fixtures/debezium", env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let part = |v: &Value| (!v.is_null()).then(|| v.clone());
        out.push(Fixture {
            topic: json["topic"].as_str().unwrap().to_owned(),
            key: part(&json["key"]),
            value: part(&json["value"]),
        });
    }
    assert!(out.len() >= 8, "the captured fixtures are there");
    out
}

fn to_record(topic: &str, key: Option<Vec<u8>>, value: Option<Vec<u8>>, offset: i64) -> KafkaRecord {
    KafkaRecord {
        topic: topic.to_owned(),
        partition: 0,
        offset,
        key,
        value,
        timestamp_ms: None,
        headers: Vec::new(),
    }
}

/// Values a hostile or unlucky producer puts where a well-formed one was.
fn poison_value(rng: &mut StdRng) -> Value {
    let pool: Vec<Value> = vec![
        json!(null),
        json!(-1),
        json!(0),
        json!(-0.0),
        json!(1024.0),
        serde_json::from_str("18446744073709551616").unwrap(),
        serde_json::from_str("-99999999999999999999999999999999999999999").unwrap(),
        serde_json::from_str("1e308").unwrap(),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(0.1),
        json!(""),
        json!("\u{0}"),
        json!("a:b{c}%d\n"),
        json!(UNAVAILABLE_VALUE),
        json!("18446744073709551615"),
        json!("[\"18446744073709551615\",\"7000\"]"),
        json!("[\"-1\",\"7\"]"),
        json!("[]"),
        json!("x"),
        json!(true),
        json!([1, 2]),
        json!({"scale": 70000, "value": "AQ=="}),
        json!({"nested": {"deeper": [null]}}),
        json!("c"),
        json!("d"),
        json!("u"),
        json!("t"),
        json!("r"),
        json!("zz"),
        json!("public"),
        json!("fx_orders"),
    ];
    let mut v = pool[rng.random_range(0..pool.len())].clone();
    if rng.random_bool(0.1) {
        v = json!(rng.random::<i64>());
    }
    v
}

/// One structure-aware change somewhere in a JSON tree.
fn mutate_json(v: &mut Value, rng: &mut StdRng, depth: usize) {
    match v {
        Value::Object(map) if !map.is_empty() && depth < 6 && rng.random_bool(0.75) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = &keys[rng.random_range(0..keys.len())];
            match rng.random_range(0..10) {
                0 => {
                    map.remove(k);
                }
                1 => {
                    let name = [
                        "ddl",
                        "tableChanges",
                        "status",
                        "event_count",
                        "op",
                        "__op",
                        "__lsn",
                        "__deleted",
                    ][rng.random_range(0..8)];
                    map.insert(name.into(), poison_value(rng));
                }
                _ => mutate_json(map.get_mut(k).unwrap(), rng, depth + 1),
            }
        }
        Value::Array(items) if !items.is_empty() && depth < 6 && rng.random_bool(0.5) => {
            let i = rng.random_range(0..items.len());
            mutate_json(&mut items[i], rng, depth + 1);
        }
        _ => *v = poison_value(rng),
    }
}

/// Byte-level damage after encoding.
fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut StdRng) {
    match rng.random_range(0..4) {
        0 if !bytes.is_empty() => {
            let i = rng.random_range(0..bytes.len());
            bytes[i] ^= 1 << rng.random_range(0..8);
        }
        1 => bytes.truncate(rng.random_range(0..=bytes.len())),
        2 => {
            let i = rng.random_range(0..=bytes.len());
            bytes.insert(i, [0u8, 0xff, b'"', b'{', b'\\'][rng.random_range(0..5)]);
        }
        _ => {
            let mut extra = vec![0u8; rng.random_range(0..8)];
            rng.fill_bytes(&mut extra);
            bytes.extend(extra);
        }
    }
}

fn random_headers(rng: &mut StdRng) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    (0..rng.random_range(0..4))
        .map(|_| {
            let mut name = vec![0u8; rng.random_range(0..6)];
            rng.fill_bytes(&mut name);
            if rng.random_bool(0.3) {
                name = b"h\xff\xfe".to_vec();
            }
            let value = rng.random_bool(0.8).then(|| {
                let mut v = vec![0u8; rng.random_range(0..12)];
                rng.fill_bytes(&mut v);
                v
            });
            (name, value)
        })
        .collect()
}

fn unwrap_schema(v: &Value) -> Value {
    match v.get("payload") {
        Some(payload) if v.get("schema").is_some() => payload.clone(),
        _ => v.clone(),
    }
}

/// A well-formed Avro change of fx_products; `id` and `sku` name its keys.
fn avro_change(
    id: i32,
    sku: &str,
    category: Option<i64>,
    weight: f32,
    scale: i32,
    unscaled: Vec<u8>,
    lsn: i64,
) -> Avro {
    let row = Avro::Record(vec![
        ("id".into(), Avro::Int(id)),
        ("sku".into(), Avro::String(sku.into())),
        (
            "category_id".into(),
            match category {
                Some(c) => Avro::Union(1, Box::new(Avro::Long(c))),
                None => Avro::Union(0, Box::new(Avro::Null)),
            },
        ),
        ("weight".into(), Avro::Union(1, Box::new(Avro::Float(weight)))),
        (
            "price".into(),
            Avro::Union(
                1,
                Box::new(Avro::Record(vec![
                    ("scale".into(), Avro::Int(scale)),
                    ("value".into(), Avro::Bytes(unscaled)),
                ])),
            ),
        ),
    ]);
    common::avro_insert(
        "fx_products",
        row,
        Avro::Union(1, Box::new(Avro::Long(lsn))),
        Avro::Union(1, Box::new(Avro::String(format!("[\"{lsn}\",\"{lsn}\"]")))),
    )
}

fn key_targets(route: &Route) -> Vec<String> {
    match &route.action {
        Routed::Bump { targets, .. } => targets
            .iter()
            .map(|t| match t {
                Target::Key(k) => format!("key {k}"),
                Target::Namespace(n) => format!("namespace {n}"),
            })
            .collect(),
        other => panic!("expected a bump, got {other:?}"),
    }
}

#[derive(Default, Debug)]
struct Tally {
    applied: u64,
    escalated: u64,
    skipped: u64,
    dead_letters: u64,
    stalls: u64,
    moot: u64,
    valid_checked: u64,
}

/// Checks one mutated record's route against the invariants.
fn account(graph: &Graph, route: &Route, record: &KafkaRecord, tally: &mut Tally, case: u64) {
    if let Some(failure) = &route.dead_letter {
        tally.dead_letters += 1;
        let encoded = Encoded::of(record, failure);
        assert!(
            !encoded.detail.contains('\0'),
            "case {case}: NUL in the dead-letter detail"
        );
        let view = encoded.headers.as_object().expect("headers view is an object");
        assert!(
            view.iter()
                .all(|(k, v)| !k.contains('\0') && !v.as_str().unwrap_or_default().contains('\0')),
            "case {case}: NUL in the dead-letter headers view"
        );
        assert_eq!(encoded.header_names.len(), record.headers.len(), "case {case}");
        assert!(!failure.kind.is_empty());
    }
    match &route.action {
        Routed::Bump { escalation, .. } => {
            if escalation.is_some() {
                tally.escalated += 1;
            } else {
                tally.applied += 1;
            }
        }
        Routed::Moot => tally.moot += 1,
        Routed::Stall { .. } => tally.stalls += 1,
        Routed::Skip => {
            tally.skipped += 1;
            // Documented skips: tombstones, snapshots, logical messages,
            // records kept as dead letters, and anything (heartbeats,
            // transaction metadata, schema changes, unknown tables) off the
            // topics of configured tables. A configured table's row is never
            // skipped silently.
            let configured_topic = table_from_topic(&record.topic).is_some_and(|t| graph.entity(&t).is_some());
            let documented =
                route.dead_letter.is_some() || matches!(route.op, "tombstone" | "r" | "m") || !configured_topic;
            assert!(documented, "case {case}: undocumented skip {route:?}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_records_never_panic_and_are_always_accounted_for() {
    let cases: u64 = std::env::var("CDC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("CDC_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let settings: Settings = config::parse("fuzz.toml", CONFIG, &|_| None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{AVRO_ID}.avsc")), AVRO_VALUE_SCHEMA).unwrap();
    std::fs::write(dir.path().join(format!("{AVRO_KEY_ID}.avsc")), AVRO_KEY_SCHEMA).unwrap();
    let avro = AvroSchemas::new(SchemaSources {
        schemas_dir: Some(dir.path().to_path_buf()),
        timeout: Duration::from_secs(1),
        ..SchemaSources::default()
    })
    .unwrap();
    avro.ensure(AVRO_ID).await.unwrap();
    avro.ensure(AVRO_KEY_ID).await.unwrap();
    let value_schema = apache_avro::Schema::parse_str(AVRO_VALUE_SCHEMA).unwrap();
    let key_schema = apache_avro::Schema::parse_str(AVRO_KEY_SCHEMA).unwrap();

    let fixtures = fixtures();
    // The keys each unmutated fixture renders: what a valid record among the
    // poison must still render exactly.
    let expected: Vec<Option<Vec<String>>> = fixtures
        .iter()
        .map(|f| {
            let record = to_record(
                &f.topic,
                f.key.as_ref().map(|k| serde_json::to_vec(k).unwrap()),
                f.value.as_ref().map(|v| serde_json::to_vec(v).unwrap()),
                0,
            );
            let route = route_with(&settings.graph, &settings.plan, &record, now(), true, Some(&avro));
            matches!(route.action, Routed::Bump { .. }).then(|| key_targets(&route))
        })
        .collect();
    assert!(expected.iter().filter(|e| e.is_some()).count() >= 4, "{expected:?}");

    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let started = Instant::now();
    for case in 0..cases {
        let offset = i64::try_from(case).unwrap();
        // Every ninth mutation also has a valid record beside it, keys checked exactly.
        if case % 9 == 0 {
            if rng.random_bool(0.5) {
                let i = rng.random_range(0..fixtures.len());
                let f = &fixtures[i];
                if let Some(want) = &expected[i] {
                    let record = to_record(
                        &f.topic,
                        f.key.as_ref().map(|k| serde_json::to_vec(k).unwrap()),
                        f.value.as_ref().map(|v| serde_json::to_vec(v).unwrap()),
                        offset,
                    );
                    let route = route_with(&settings.graph, &settings.plan, &record, now(), true, Some(&avro));
                    assert_eq!(&key_targets(&route), want, "case {case}: valid fixture {i}");
                    tally.valid_checked += 1;
                }
            } else {
                let id = rng.random_range(-5..1_000_000);
                let sku = ["A-1", "a:b", "50%", "{x}", "é\n"][rng.random_range(0..5)];
                let weight = [0.1f32, -0.0, 1024.0, 3.4e38][rng.random_range(0..4)];
                let value = common::confluent_framed(
                    AVRO_ID,
                    &value_schema,
                    avro_change(id, sku, Some(7), weight, 2, vec![0x04, 0xe2], 100 + offset),
                );
                let key = common::confluent_framed(
                    AVRO_KEY_ID,
                    &key_schema,
                    Avro::Record(vec![("id".into(), Avro::Int(id))]),
                );
                let record = to_record("shop.public.fx_products", Some(key), Some(value), offset);
                let route = route_with(&settings.graph, &settings.plan, &record, now(), true, Some(&avro));
                let sku_key = cdc_invalidator::graph::escape(sku);
                assert_eq!(
                    key_targets(&route),
                    vec![
                        format!("key product:{id}"),
                        format!("key sku:{sku_key}"),
                        "key category:7:products".to_owned(),
                    ],
                    "case {case}: valid avro record"
                );
                tally.valid_checked += 1;
            }
        }
        let mut record = if rng.random_bool(0.7) {
            // JSON: a fixture, wrapped or not, mutated in its structure
            // and sometimes in its bytes.
            let f = &fixtures[rng.random_range(0..fixtures.len())];
            let wrapped = rng.random_bool(0.5);
            let mut value = f.value.clone().map(|v| if wrapped { v } else { unwrap_schema(&v) });
            let mut key = f.key.clone().map(|k| if wrapped { k } else { unwrap_schema(&k) });
            for _ in 0..rng.random_range(1..4) {
                match (rng.random_range(0..5), &mut value, &mut key) {
                    (0, _, Some(k)) => mutate_json(k, &mut rng, 0),
                    (_, Some(v), _) => mutate_json(v, &mut rng, 0),
                    _ => {}
                }
            }
            let mut value_bytes = value.map(|v| serde_json::to_vec(&v).unwrap());
            if rng.random_bool(0.15) {
                if let Some(bytes) = value_bytes.as_mut() {
                    mutate_bytes(bytes, &mut rng);
                }
            }
            let topic = match rng.random_range(0..20) {
                0 => "shop.transaction".to_owned(),
                1 => "shop".to_owned(),
                2 => "__debezium-heartbeat.shop".to_owned(),
                3 => "shop.public.fx_orders".to_owned(),
                _ => f.topic.clone(),
            };
            to_record(
                &topic,
                key.map(|k| serde_json::to_vec(&k).unwrap()),
                value_bytes,
                offset,
            )
        } else {
            // Avro: hostile field values, then sometimes damaged bytes.
            let scale = [2, 0, -1, 1000, 1001, 65534, 70000, i32::MAX][rng.random_range(0..8)];
            let mut unscaled = vec![0u8; [0, 1, 17, 40, 129, 300][rng.random_range(0..6)]];
            rng.fill_bytes(&mut unscaled);
            let lsn = [5, -1, 0, i64::MAX, i64::MIN][rng.random_range(0..5)];
            let weight = f32::from_bits(rng.random::<u32>());
            let value = avro_change(rng.random(), "s\0:{", None, weight, scale, unscaled, lsn);
            let mut bytes = common::confluent_framed(AVRO_ID, &value_schema, value);
            if rng.random_bool(0.4) {
                mutate_bytes(&mut bytes, &mut rng);
            }
            if rng.random_bool(0.05) && bytes.len() >= 5 {
                // Unknown schema ids.
                bytes.splice(1..5, rng.random::<u32>().to_be_bytes());
            }
            to_record("shop.public.fx_products", None, Some(bytes), offset)
        };
        record.headers = random_headers(&mut rng);
        let route = route_with(&settings.graph, &settings.plan, &record, now(), true, Some(&avro));
        account(&settings.graph, &route, &record, &mut tally, case);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "fuzz: {cases} mutated records (seed {seed}), valid ones beside them, in {elapsed:.2?}, {:.0} records/s: {tally:?}",
        cases as f64 / elapsed.as_secs_f64()
    );
    assert!(tally.dead_letters > 0 && tally.escalated > 0 && tally.applied > 0 && tally.skipped > 0);
    assert!(tally.valid_checked >= cases / 20, "{tally:?}");
}

fn now() -> i64 {
    // A fixed "now" near the fixtures' capture: records are never moot.
    1_795_697_045_824_411
}
