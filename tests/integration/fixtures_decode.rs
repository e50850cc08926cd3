//! Decoding and graph rendering of records captured from the real Debezium
//! 3.6.1 in the stack (tests/fixtures/debezium, captured by
//! scripts/capture-fixtures; its README gives the SQL behind each file).

use cdc_invalidator::config;
use cdc_invalidator::decode::decode_json as decode;
use cdc_invalidator::event::{ChangeEvent, Decoded, KafkaRecord, Op};
use cdc_invalidator::graph::{Derivation, EscalationReason};
use serde_json::Value;

const CONFIG: &str = r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "fixtures"
topic_regex = "shop\\.public\\.fx_.*"
[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"
[[entity]]
table = "public.fx_products"
namespace = "product"
keys = ["product:{id}", "sku:{sku}", "category:{category_id}:products", "product:{id}:text:{description}"]
[[entity]]
table = "public.fx_orders"
namespace = "order"
replica_identity = "full"
keys = ["order:{id}", "customer:{customer_id}:orders"]
[[entity]]
table = "public.fx_order_items"
keys = ["order:{order_id}:line:{line_no}"]
"#;

fn fixture(name: &str) -> KafkaRecord {
    let path = format!("{}/tests/fixtures/debezium/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let bytes = |v: &Value| (!v.is_null()).then(|| serde_json::to_vec(v).unwrap());
    KafkaRecord {
        topic: json["topic"].as_str().unwrap().to_owned(),
        partition: i32::try_from(json["partition"].as_i64().unwrap()).unwrap(),
        offset: json["offset"].as_i64().unwrap(),
        key: bytes(&json["key"]),
        value: bytes(&json["value"]),
        timestamp_ms: None,
        headers: Vec::new(),
    }
}

fn change(name: &str) -> ChangeEvent {
    match decode(&fixture(name)).unwrap() {
        Decoded::Change(event) => event,
        other => panic!("{name}: expected a change, got {other:?}"),
    }
}

fn keys(name: &str) -> (Vec<String>, Option<EscalationReason>) {
    let settings = config::parse("fixtures.toml", CONFIG, &|_| None).unwrap();
    match settings.graph.derive(&change(name)) {
        Derivation::Targets {
            targets, escalation, ..
        } => (
            targets.into_iter().map(|t| t.target.record_key("")).collect(),
            escalation,
        ),
        other => panic!("{name}: expected targets, got {other:?}"),
    }
}

#[test]
fn insert_decodes_with_exact_position_time_and_big_integers() {
    let event = change("insert");
    assert_eq!(event.op, Op::Create);
    assert_eq!(event.table, "public.fx_products");
    assert_eq!(event.key.as_ref().unwrap()["id"], 1);
    // source.sequence = ["27371152","27665088"]
    assert_eq!(event.position.source, "pg:shop");
    assert_eq!(
        event.position.ordinal,
        format!("{:020}{:020}", 27371152u64, 27665088u64)
    );
    assert!(
        event.commit_time_us.unwrap() > 1_700_000_000_000_000,
        "ts_us is microseconds"
    );
    // 2^53 + 1 survives: no float on the way.
    assert_eq!(
        keys("insert").0,
        vec![
            "product:1",
            "sku:FX-0001",
            "category:9007199254740993:products",
            // A `:` in a text value is escaped (docs/key-rendering.md).
            "product:1:text:Café crème%3A a short description"
        ]
    );
}

#[test]
fn update_under_replica_identity_default_has_no_before_and_escalates() {
    let event = change("update_default");
    assert_eq!(event.op, Op::Update);
    assert!(event.before.is_none());
    let (targets, escalation) = keys("update_default");
    assert_eq!(escalation, Some(EscalationReason::MissingBefore));
    assert!(targets.contains(&"ns:product".to_owned()), "{targets:?}");
}

#[test]
fn toast_placeholder_in_a_templated_column_escalates() {
    let event = change("toast_update");
    assert_eq!(
        event.after.as_ref().unwrap()["description"],
        "__debezium_unavailable_value"
    );
    let (targets, escalation) = keys("toast_update");
    assert!(escalation.is_some());
    assert!(targets.contains(&"ns:product".to_owned()));
    assert!(!targets.iter().any(|t| t.contains("__debezium")), "{targets:?}");
}

#[test]
fn delete_under_default_never_renders_filler_values() {
    // Debezium fills NOT NULL non-key columns with "" here (sku).
    let event = change("delete_default");
    assert_eq!(event.op, Op::Delete);
    assert_eq!(event.before.as_ref().unwrap()["sku"], "");
    let (targets, escalation) = keys("delete_default");
    assert_eq!(escalation, Some(EscalationReason::MissingBefore));
    assert!(!targets.contains(&"sku:".to_owned()), "{targets:?}");
    assert!(targets.contains(&"product:1".to_owned()) && targets.contains(&"ns:product".to_owned()));
}

#[test]
fn foreign_key_move_under_full_identity_invalidates_both_sides() {
    let (targets, escalation) = keys("update_full_fk_move");
    assert_eq!(escalation, None);
    assert_eq!(targets, vec!["order:10", "customer:200:orders", "customer:100:orders"]);
}

#[test]
fn delete_under_full_identity_and_its_tombstone() {
    let (targets, escalation) = keys("delete_full");
    assert_eq!(escalation, None);
    assert!(targets.iter().any(|t| t.starts_with("customer:")), "{targets:?}");
    assert_eq!(decode(&fixture("delete_full_tombstone")).unwrap(), Decoded::Tombstone);
}

#[test]
fn composite_key_and_nulls() {
    assert_eq!(keys("composite_pk_insert").0, vec!["order:10:line:1"]);
    let (targets, _) = keys("nulls_insert");
    assert!(
        !targets.iter().any(|t| t.starts_with("category:")),
        "a NULL category names no list: {targets:?}"
    );
}
