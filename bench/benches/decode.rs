//! Decode-only microbenchmark: the daemon's `decode::decode` of one Kafka
//! record against a plain `serde_json::from_slice::<Value>` of the same
//! bytes (key and value, as decode parses both), and, to show where the
//! remaining cost lies, a parse that skips the JsonConverter `schema` half
//! without building it, and the daemon's whole per-record routing
//! (decode + key templates), all single-threaded.
//!
//! Inputs (`cdc_bench::decode_inputs`): a record from the benchmark
//! generator (`public.bench_items` update, REPLICA IDENTITY FULL) with
//! schemas, without them and flattened, and the captured Debezium 3.6.1
//! fixture `tests/fixtures/debezium/update_full_fk_move.json`.
//!
//!   cargo bench -p cdc-bench --bench decode

// A benchmark, run by hand: a panic on a broken setup is the run failing
// loudly, which is what it should do. The cast lints still hold (Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;

use cdc_bench::daemon_config::DaemonConfig;
use cdc_bench::gen::{Generator, Mix};
use cdc_invalidator::decode::decode;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

/// The JsonConverter wrapper with the schema skipped, not built.
#[derive(Deserialize)]
struct Wrapped {
    #[allow(dead_code)]
    schema: IgnoredAny,
    payload: Value,
}

fn benches(c: &mut Criterion) {
    let settings = DaemonConfig::parse_only().settings().expect("config");
    // Committed now: the route benchmark must not take the cheaper moot path.
    for (name, record) in cdc_bench::decode_inputs::all(cdc_bench::now_us()) {
        let key = record.key.clone().unwrap();
        let value = record.value.clone().unwrap();
        assert!(matches!(
            decode(&record, None),
            Ok(cdc_invalidator::event::Decoded::Change(_))
        ));
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes((key.len() + value.len()) as u64));
        group.bench_function("daemon_decode", |b| b.iter(|| decode(black_box(&record), None)));
        let wrapped = value.starts_with(b"{\"schema\"");
        group.bench_function("serde_json_value", |b| {
            b.iter(|| {
                let k: Value = serde_json::from_slice(black_box(&key)).unwrap();
                let v: Value = serde_json::from_slice(black_box(&value)).unwrap();
                (k, v)
            })
        });
        if wrapped {
            group.bench_function("serde_json_skip_schema", |b| {
                b.iter(|| {
                    let k: Wrapped = serde_json::from_slice(black_box(&key)).unwrap();
                    let v: Wrapped = serde_json::from_slice(black_box(&value)).unwrap();
                    (k.payload, v.payload)
                })
            });
        }
        if name == "generated_update" {
            let now = cdc_invalidator::pipeline::now_us();
            group.bench_function("daemon_route", |b| {
                b.iter(|| {
                    cdc_invalidator::pipeline::route(&settings.graph, &settings.plan, black_box(&record), now, false)
                })
            });
        }
        group.finish();
    }

    // The same generated update in Avro (Confluent framing, schemas from .avsc files).
    let dir = std::env::temp_dir().join(format!("cdc-bench-decode-avsc-{}", std::process::id()));
    let mut g = Generator::new("bench", 3, 1000, 0.0, Mix::default(), 1)
        .with_avro()
        .expect("avro schemas");
    g.avro().unwrap().write_schemas(&dir).unwrap();
    let r = g.unique_update(42, cdc_bench::now_us());
    let record = r.into_kafka("bench.public.bench_items", 1, Some(1_795_697_046_074));
    let schemas = cdc_invalidator::decode::AvroSchemas::new(cdc_invalidator::decode::SchemaSources {
        schemas_dir: Some(dir.clone()),
        timeout: std::time::Duration::from_secs(5),
        ..Default::default()
    })
    .expect("schemas");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        schemas.ensure(cdc_bench::avro::KEY_SCHEMA_ID).await.unwrap();
        schemas.ensure(cdc_bench::avro::VALUE_SCHEMA_ID).await.unwrap();
    });
    assert!(matches!(
        decode(&record, Some(&schemas)),
        Ok(cdc_invalidator::event::Decoded::Change(_))
    ));
    let mut group = c.benchmark_group("generated_update_avro");
    group.throughput(Throughput::Bytes(
        (record.key.as_ref().unwrap().len() + record.value.as_ref().unwrap().len()) as u64,
    ));
    group.bench_function("daemon_decode", |b| {
        b.iter(|| decode(black_box(&record), Some(&schemas)))
    });
    group.finish();
    std::fs::remove_dir_all(&dir).ok();
}

criterion_group!(decode_benches, benches);
criterion_main!(decode_benches);
