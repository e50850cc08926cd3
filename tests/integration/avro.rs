//! Avro end to end. The records are encoded by an independent implementation
//! (fastavro, tests/avro/generate.py), never by the daemon's own code, and
//! the registry is an endpoint served by this test harness (Confluent API:
//! GET /schemas/ids/{id}, basic auth).

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{eventually, Daemon};
use cdc_invalidator::config;
use cdc_invalidator::decode::{AvroSchemas, SchemaError, SchemaSources};
use cdc_invalidator::event::KafkaRecord;
use cdc_invalidator::pipeline::{route_with, Routed};
use serde_json::{json, Value};

const SCHEMA_FILES: [(u32, &str); 3] = [
    (1, "shop.public.avro_products-Key.avsc"),
    (2, "shop.public.avro_products-Envelope.avsc"),
    (3, "shop.public.avro_products-Envelope-v2.avsc"),
];

fn schema_text(file: &str) -> String {
    std::fs::read_to_string(format!("{}/schemas/debezium/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

struct Generated {
    key_avro: Vec<u8>,
    value_avro: Vec<u8>,
    key_json: Vec<u8>,
    value_json: Vec<u8>,
}

fn generate(rows: usize, seed: u64) -> Vec<Generated> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = std::process::Command::new("python3")
        .arg(format!("{}/tests/avro/generate.py", env!("CARGO_MANIFEST_DIR")))
        .args([rows.to_string(), seed.to_string(), out.path().display().to_string()])
        .status()
        .expect("python3 with fastavro (scripts/test installs it)");
    assert!(status.success(), "tests/avro/generate.py failed");
    std::fs::read_to_string(out.path())
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let hex = |s: &Value| {
                let s = s.as_str().unwrap();
                (0..s.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                    .collect::<Vec<u8>>()
            };
            Generated {
                key_avro: hex(&v["key_avro"]),
                value_avro: hex(&v["value_avro"]),
                key_json: serde_json::to_vec(&v["key_json"]).unwrap(),
                value_json: serde_json::to_vec(&v["value_json"]).unwrap(),
            }
        })
        .collect()
}

const ENTITY: &str = r#"
[[entity]]
table = "public.avro_products"
namespace = "product"
consistency = "strong"
keys = ["p:{id}", "sku:{sku}", "cat:{category_id}", "price:{price}", "w:{weight}", "ref:{ref}", "d:{release_date}", "u:{updated_at}", "a:{active}"]
"#;

fn settings(extra: &str) -> config::Settings {
    let text = format!(
        "[source]\nbrokers = \"127.0.0.1:9092\"\ngroup_id = \"g\"\ntopics = [\"t\"]\n[redis]\nurl = \"redis://127.0.0.1:6379\"\nversion_ttl = \"1h\"\n{extra}\n{ENTITY}"
    );
    config::parse("avro-test.toml", &text, &|_| None).unwrap()
}

fn record(topic: &str, key: &[u8], value: &[u8]) -> KafkaRecord {
    KafkaRecord {
        topic: topic.into(),
        partition: 0,
        offset: 1,
        key: Some(key.to_vec()),
        value: Some(value.to_vec()),
        timestamp_ms: None,
        headers: Vec::new(),
    }
}

fn targets(routed: Routed) -> BTreeSet<String> {
    match routed {
        Routed::Bump {
            targets,
            escalation: None,
            ..
        } => targets.iter().map(|t| t.to_string()).collect(),
        other => panic!("expected exact targets, got {other:?}"),
    }
}

/// Schema files laid out as `<id>.avsc` for `schemas_dir`.
fn schemas_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (id, file) in SCHEMA_FILES {
        std::fs::write(dir.path().join(format!("{id}.avsc")), schema_text(file)).unwrap();
    }
    dir
}

#[tokio::test]
async fn generated_rows_render_the_same_keys_from_avro_and_from_json() {
    // A property test over rows generated with a fresh seed each run.
    let seed: u64 = rand::random::<u32>() as u64;
    eprintln!("seed {seed} (rerun: tests/avro/generate.py 400 {seed} out.jsonl)");
    let rows = generate(400, seed);
    let dir = schemas_dir();
    let s = settings(&format!("[avro]\nschemas_dir = \"{}\"", dir.path().display()));
    let avro = AvroSchemas::new(s.avro.clone().unwrap()).unwrap();
    for (id, _) in SCHEMA_FILES {
        avro.ensure(id).await.unwrap();
    }
    let now = cdc_invalidator::pipeline::now_us();
    for (i, row) in rows.iter().enumerate() {
        let from_json = route_with(
            &s.graph,
            &s.plan,
            &record("shop.public.avro_products", &row.key_json, &row.value_json),
            now,
            true,
            None,
        );
        let from_avro = route_with(
            &s.graph,
            &s.plan,
            &record("shop.public.avro_products", &row.key_avro, &row.value_avro),
            now,
            true,
            Some(&avro),
        );
        assert_eq!(from_avro.dead_letter, None, "row {i} (seed {seed})");
        let (json_position, avro_position) = match (&from_json.action, &from_avro.action) {
            (Routed::Bump { position: a, .. }, Routed::Bump { position: b, .. }) => (a.clone(), b.clone()),
            other => panic!("row {i}: {other:?}"),
        };
        assert_eq!(json_position, avro_position, "row {i} (seed {seed})");
        assert_eq!(
            targets(from_avro.action),
            targets(from_json.action),
            "row {i} (seed {seed})"
        );
    }
}

#[tokio::test]
async fn bad_avro_frames_have_clear_kinds() {
    let rows = generate(2, 7);
    let dir = schemas_dir();
    let s = settings(&format!("[avro]\nschemas_dir = \"{}\"", dir.path().display()));
    let avro = AvroSchemas::new(s.avro.clone().unwrap()).unwrap();
    for (id, _) in SCHEMA_FILES {
        avro.ensure(id).await.unwrap();
    }
    assert_eq!(avro.ensure(99).await, Err(SchemaError::NotFound(99)));
    let kind = |value: Vec<u8>| {
        route_with(
            &s.graph,
            &s.plan,
            &record("shop.public.avro_products", &rows[0].key_avro, &value),
            0,
            true,
            Some(&avro),
        )
        .dead_letter
        .map(|f| f.kind)
    };
    let good = rows[0].value_avro.clone();
    assert_eq!(kind(good[..good.len() - 7].to_vec()), Some("truncated"));
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[1, 2, 3]);
    assert_eq!(kind(trailing), Some("trailing_bytes"));
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&99u32.to_be_bytes());
    assert_eq!(kind(unknown), Some("unknown_schema"));
    let mut magic = good.clone();
    magic[0] = 7;
    assert_eq!(kind(magic), Some("unknown_magic_byte"));
    assert_eq!(kind(good), None);
}

/// A Confluent-compatible registry endpoint: GET /schemas/ids/{id} with basic auth.
struct Registry {
    port: u16,
    stop: Option<tokio_util::sync::CancellationToken>,
    schemas: Arc<HashMap<u32, String>>,
}

impl Registry {
    async fn start() -> Registry {
        let schemas = Arc::new(
            SCHEMA_FILES
                .iter()
                .map(|(id, f)| (*id, schema_text(f)))
                .collect::<HashMap<_, _>>(),
        );
        // Bound on port 0 and kept: nothing can take the port in between.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let mut registry = Registry {
            port: listener.local_addr().unwrap().port(),
            stop: None,
            schemas,
        };
        registry.serve(listener);
        registry
    }

    /// Serves again on the same port after `down`.
    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        use axum::extract::{Path, State};
        use axum::http::{HeaderMap, StatusCode};
        let stop = tokio_util::sync::CancellationToken::new();
        let app = axum::Router::new()
            .route(
                "/schemas/ids/{id}",
                axum::routing::get(
                    |State(schemas): State<Arc<HashMap<u32, String>>>, Path(id): Path<u32>, headers: HeaderMap| async move {
                        // "registry:s3cret", base64-encoded.
                        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Basic cmVnaXN0cnk6czNjcmV0") {
                            return (StatusCode::UNAUTHORIZED, "{\"error_code\":401}".to_owned());
                        }
                        match schemas.get(&id) {
                            Some(text) => (StatusCode::OK, serde_json::json!({ "schema": text }).to_string()),
                            None => (StatusCode::NOT_FOUND, "{\"error_code\":40403,\"message\":\"Schema not found\"}".to_owned()),
                        }
                    },
                ),
            )
            .with_state(self.schemas.clone());
        let token = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
        self.stop = Some(stop);
    }

    async fn down(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn sources(url: &str, password: &str) -> SchemaSources {
    SchemaSources {
        registry_url: Some(url.to_owned()),
        username: Some("registry".into()),
        password: Some(password.into()),
        schemas_dir: None,
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn registry_client_authenticates_caches_and_tells_outages_from_unknown_ids() {
    let mut registry = Registry::start().await;
    let client = AvroSchemas::new(sources(&registry.url(), "s3cret")).unwrap();
    client.ensure(2).await.unwrap();
    assert_eq!(client.ensure(42).await, Err(SchemaError::NotFound(42)));
    let wrong = AvroSchemas::new(sources(&registry.url(), "nope")).unwrap();
    assert!(matches!(wrong.ensure(2).await, Err(SchemaError::Unavailable(e)) if e.contains("401")));

    registry.down().await;
    // Known ids keep working from the cache; unknown ones are an outage, not a loss.
    client.ensure(2).await.unwrap();
    assert!(matches!(client.ensure(3).await, Err(SchemaError::Unavailable(_))));
    registry.up().await;
    client.ensure(3).await.unwrap();
}

#[tokio::test]
async fn daemon_reads_avro_through_the_registry_and_survives_its_outage() {
    let rows = generate(30, 11);
    // A random topic prefix, so the topic still carries the records' own
    // table (public.avro_products): a record of another table is a dead letter.
    let topic = format!("{}.public.avro_products", common::unique("t"));
    let prefix = format!("{}:", common::unique("ver"));
    let mut registry = Registry::start().await;
    // A JSON topic beside it: it must keep flowing while the registry is down.
    let json_table = common::unique("json_items");
    let json_topic = format!("{}.public.{json_table}", common::topic_prefix());
    let extra = format!(
        "[avro]\nregistry_url = \"{}\"\nusername = \"registry\"\npassword = \"s3cret\"\ntimeout = \"1s\"\n\
         [[entity]]\ntable = \"public.avro_products\"\nnamespace = \"product\"\nconsistency = \"strong\"\nkeys = [\"p:{{id}}\", \"price:{{price}}\", \"w:{{weight}}\"]\n\
         [[entity]]\ntable = \"public.{json_table}\"\nconsistency = \"strong\"\nkeys = [\"j:{{id}}\"]\n",
        registry.url()
    );
    let json_change = |id: i64| {
        common::debezium_change(
            &json_table,
            "c",
            u64::try_from(id).unwrap(),
            id,
            json!({"id": id}),
            common::now_us(),
        )
    };
    common::produce(&json_topic, &[json_change(1)]).await;
    let cfg = common::write_config(&topic, &common::redis_url(), &prefix, &extra);
    let text = std::fs::read_to_string(cfg.path()).unwrap().replace(
        &format!("topics = [\"{topic}\"]"),
        &format!("topics = [\"{topic}\", \"{json_topic}\"]"),
    );
    std::fs::write(cfg.path(), text).unwrap();
    // Rows whose envelope uses schema 2 first; the v2 rows (schema 3) come
    // later, while the registry is down.
    let (v1, v2): (Vec<&Generated>, Vec<&Generated>) = rows.iter().partition(|r| r.value_avro[4] == 2);
    common::produce_many(
        &topic,
        v1.iter()
            .map(|r| (Some(r.key_avro.clone()), Some(r.value_avro.clone()))),
    )
    .await;
    let daemon = Daemon::start(cfg.path());
    daemon.wait_ready().await;

    // What the JSON twin of each row says must be bumped.
    let s = config::load(cfg.path(), &|_| None).unwrap();
    let expected = |rows: &[&Generated]| -> BTreeSet<String> {
        rows.iter()
            .flat_map(|r| {
                let json = route_with(
                    &s.graph,
                    &s.plan,
                    &record(&topic, &r.key_json, &r.value_json),
                    0,
                    true,
                    None,
                );
                match json.action {
                    Routed::Bump { targets, .. } => targets.into_iter().map(|t| t.record_key("")).collect::<Vec<_>>(),
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    };
    let mut want_v1 = expected(&v1);
    want_v1.insert("j:1".to_owned());
    let mut conn = common::redis_conn().await;
    eventually("the avro rows to be applied", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        let want = want_v1.clone();
        let prefix = prefix.clone();
        async move {
            let have: BTreeSet<String> = common::versions(&mut conn, &prefix).await.into_keys().collect();
            (have == want).then_some(())
        }
    })
    .await;

    registry.down().await;
    common::produce_many(
        &topic,
        v2.iter()
            .map(|r| (Some(r.key_avro.clone()), Some(r.value_avro.clone()))),
    )
    .await;
    eventually("readiness to name the registry", Duration::from_secs(30), || {
        let admin = daemon.admin.clone();
        async move {
            let (code, body) = common::http_get(&admin, "/readyz").await?;
            (code == 503 && body.contains("schema registry")).then_some(())
        }
    })
    .await;
    // The Avro partition waits for its schema; the JSON topic goes on.
    common::produce(&json_topic, &[json_change(2)]).await;
    eventually(
        "the JSON record while the registry is down",
        Duration::from_secs(30),
        || {
            let mut conn = conn.clone();
            let prefix = prefix.clone();
            async move {
                common::versions(&mut conn, &prefix)
                    .await
                    .contains_key("j:2")
                    .then_some(())
            }
        },
    )
    .await;
    let (code, body) = common::http_get(&daemon.admin, "/readyz").await.unwrap();
    assert!(
        code == 503 && body.contains("schema registry"),
        "still waiting for the schema: {body}"
    );
    registry.up().await;
    let mut want_all = want_v1.clone();
    want_all.insert("j:2".to_owned());
    want_all.extend(expected(&v2));
    eventually(
        "the evolved-schema rows after the registry returns",
        Duration::from_secs(60),
        || {
            let mut conn = conn.clone();
            let want = want_all.clone();
            let prefix = prefix.clone();
            async move {
                let have: BTreeSet<String> = common::versions(&mut conn, &prefix).await.into_keys().collect();
                (have == want).then_some(())
            }
        },
    )
    .await;
    daemon.wait_ready().await;
    let metrics = daemon.metrics().await;
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_dead_letters_total", &[]),
        0.0,
        "{metrics}"
    );
    let _ = &mut conn;
}
