//! The records the decode benchmarks decode: the generated update (JSON
//! with schemas, as `bench/run` produces it), the same change without the
//! JsonConverter wrapper, the same change flattened by
//! `ExtractNewRecordState`, and the captured Debezium fixture.

use serde_json::{json, Value};

use crate::gen::{Generator, Mix};
use cdc_invalidator::event::KafkaRecord;

const TOPIC: &str = "bench.public.bench_items";

/// The generated update, committed `now_us`.
pub fn generated(now_us: i64) -> KafkaRecord {
    let mut g = Generator::new("bench", 3, 1000, 0.0, Mix::default(), 1);
    let r = g.unique_update(42, now_us);
    r.into_kafka(TOPIC, 1, Some(1_795_697_046_074))
}

fn payload(bytes: &[u8]) -> Value {
    let mut whole: Value = serde_json::from_slice(bytes).expect("generated JSON");
    whole["payload"].take()
}

/// The generated update as JsonConverter writes it with `schemas.enable=false`.
pub fn generated_unwrapped(now_us: i64) -> KafkaRecord {
    let mut record = generated(now_us);
    record.key = Some(serde_json::to_vec(&payload(record.key.as_deref().unwrap())).unwrap());
    record.value = Some(serde_json::to_vec(&payload(record.value.as_deref().unwrap())).unwrap());
    record
}

/// The generated update flattened (`add.fields=op,table,lsn,source.ts_ms`),
/// without schemas.
pub fn generated_flattened(now_us: i64) -> KafkaRecord {
    let mut record = generated_unwrapped(now_us);
    let envelope: Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
    let mut row = envelope["after"].clone();
    let source = &envelope["source"];
    let row_fields = row.as_object_mut().expect("after image");
    row_fields.insert("__op".into(), json!("u"));
    row_fields.insert("__table".into(), source["table"].clone());
    row_fields.insert("__lsn".into(), source["lsn"].clone());
    row_fields.insert("__source_ts_ms".into(), source["ts_ms"].clone());
    record.value = Some(serde_json::to_vec(&row).unwrap());
    record
}

/// `tests/fixtures/debezium/update_full_fk_move.json`, compact as
/// JsonConverter writes it.
pub fn fixture() -> KafkaRecord {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/debezium/update_full_fk_move.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture");
    let f: Value = serde_json::from_str(&text).expect("fixture JSON");
    KafkaRecord {
        topic: f["topic"].as_str().unwrap().to_owned(),
        partition: i32::try_from(f["partition"].as_i64().unwrap()).unwrap(),
        offset: f["offset"].as_i64().unwrap(),
        key: Some(serde_json::to_vec(&f["key"]).unwrap()),
        value: Some(serde_json::to_vec(&f["value"]).unwrap()),
        timestamp_ms: Some(1_795_697_046_600),
        headers: Vec::new(),
    }
}

/// Every input, named.
pub fn all(now_us: i64) -> Vec<(&'static str, KafkaRecord)> {
    vec![
        ("generated_update", generated(now_us)),
        ("generated_update_unwrapped", generated_unwrapped(now_us)),
        ("generated_update_flattened", generated_flattened(now_us)),
        ("fixture_update_full", fixture()),
    ]
}
