//! Positions of real MariaDB change events (tests/fixtures/mariadb/stream.json,
//! captured by scripts/capture-fixtures-mariadb from MariaDB 10.11 through
//! Debezium's MariaDB connector): the guard order must be exactly the commit
//! order, across concurrent transactions, a binlog rotation and a connector
//! restart in the middle of a transaction.

use std::collections::{BTreeMap, HashMap};

use cdc_invalidator::config;
use cdc_invalidator::decode::decode_json as decode;
use cdc_invalidator::event::{ChangeEvent, Decoded, KafkaRecord, Op, Position};
use cdc_invalidator::graph::{Derivation, EscalationReason};
use serde_json::Value;

fn stream() -> Value {
    let path = format!("{}/tests/fixtures/mariadb/stream.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// One captured record: where it was in Kafka, what it decodes to, and the
/// (commit, statement row) the capture script tagged it with.
struct Captured {
    record: KafkaRecord,
    decoded: Decoded,
    commit: Option<u64>,
    seq: Option<u64>,
}

fn records(stream: &Value) -> Vec<Captured> {
    stream["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let bytes = |v: &Value| (!v.is_null()).then(|| serde_json::to_vec(v).unwrap());
            let record = KafkaRecord {
                topic: r["topic"].as_str().unwrap().to_owned(),
                partition: i32::try_from(r["partition"].as_i64().unwrap()).unwrap(),
                offset: r["offset"].as_i64().unwrap(),
                key: bytes(&r["key"]),
                value: bytes(&r["value"]),
                timestamp_ms: None,
                headers: Vec::new(),
            };
            let decoded = decode(&record).unwrap_or_else(|e| panic!("{}@{}: {e}", record.topic, record.offset));
            Captured {
                record,
                decoded,
                commit: r["commit"].as_u64(),
                seq: r["seq"].as_u64(),
            }
        })
        .collect()
}

fn changes(stream: &Value) -> Vec<(ChangeEvent, u64, u64, KafkaRecord)> {
    records(stream)
        .into_iter()
        .filter_map(|c| match c.decoded {
            Decoded::Change(ev) => Some((ev, c.commit.unwrap(), c.seq.unwrap(), c.record)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_fixture_is_what_the_tests_need() {
    let s = stream();
    assert_eq!(s["server_variables"]["BINLOG_FORMAT"], "ROW");
    assert_eq!(s["server_variables"]["BINLOG_ROW_IMAGE"], "FULL");
    assert_eq!(s["server_variables"]["GTID_STRICT_MODE"], "ON");
    assert_eq!(
        s["connector"]["class"],
        "io.debezium.connector.mariadb.MariaDbConnector"
    );
    let all = records(&s);
    let tombstones = all.iter().filter(|c| c.decoded == Decoded::Tombstone).count();
    assert_eq!(tombstones, 2, "one per delete");
    let ops: Vec<Op> = changes(&s).iter().map(|(ev, ..)| ev.op).collect();
    for op in [Op::Create, Op::Update, Op::Delete, Op::Truncate] {
        assert!(ops.contains(&op), "no {op:?} in the fixture");
    }
}

#[test]
fn guard_order_is_commit_order_across_concurrency_and_rotation() {
    let s = stream();
    let mut changes = changes(&s);
    changes.sort_by_key(|(_, commit, seq, _)| (*commit, *seq));
    for pair in changes.windows(2) {
        let ((a, ca, sa, ra), (b, cb, sb, rb)) = (&pair[0], &pair[1]);
        assert_eq!(
            a.position.source, b.position.source,
            "one guard source for the whole server"
        );
        assert!(
            a.position.ordinal < b.position.ordinal,
            "commit {ca} row {sa} ({}@{}: {}) must sort before commit {cb} row {sb} ({}@{}: {})",
            ra.topic,
            ra.offset,
            a.position,
            rb.topic,
            rb.offset,
            b.position
        );
    }
    assert_eq!(changes[0].0.position.source, "mariadb-gtid:mariadb:0");
}

/// What the capture shows, and why the position is the GTID's sequence
/// number, then file, position and row.
#[test]
fn evidence_for_the_position_rule() {
    let s = stream();
    let changes = changes(&s);
    let source = |commit: u64, seq: u64| -> BTreeMap<String, Value> {
        let (_, _, _, record) = changes
            .iter()
            .find(|(_, c, q, _)| (*c, *q) == (commit, seq))
            .unwrap_or_else(|| panic!("no commit {commit} row {seq}"));
        let value: Value = serde_json::from_slice(record.value.as_ref().unwrap()).unwrap();
        serde_json::from_value(value["payload"]["source"].clone()).unwrap()
    };
    let file = |src: &BTreeMap<String, Value>| src["file"].as_str().unwrap().to_owned();
    let pos = |src: &BTreeMap<String, Value>| src["pos"].as_u64().unwrap();
    let gtid = |src: &BTreeMap<String, Value>| src["gtid"].as_str().unwrap().to_owned();

    // 1. A GTID names a transaction, not a row: commit 4 creates product 3
    //    and deletes it again, both under one GTID. Ordering by GTID alone
    //    would turn the delete into a guard no-op.
    assert_eq!(gtid(&source(4, 1)), gtid(&source(4, 4)));
    assert!(pos(&source(4, 1)) < pos(&source(4, 4)));

    // 2. Concurrent transactions: session A's UPDATE ran first but B
    //    committed first (commit 5). The binlog, GTIDs included, is written
    //    at commit: B's rows come first in both.
    let (b, a) = (source(5, 0), source(6, 0));
    assert!(pos(&b) < pos(&a) && file(&b) == file(&a));
    let seq_no = |g: String| g.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    assert!(seq_no(gtid(&b)) < seq_no(gtid(&a)));

    // 3. FLUSH BINARY LOGS between commits 6 and 7: the position starts over
    //    in the next file. Only the file number keeps coordinates ordered; the
    //    GTID sequence number goes on regardless.
    let (before, after) = (source(6, 0), source(7, 0));
    assert_ne!(file(&before), file(&after));
    assert!(pos(&after) < pos(&before), "positions restart after a rotation");
    assert_eq!(seq_no(gtid(&after)), seq_no(gtid(&before)) + 1);
}

/// The bulk transaction (commit 11): its rows, restart included, in the
/// compact form the fixture keeps for all of them.
#[test]
fn a_restart_mid_transaction_keeps_every_row_in_order() {
    let s = stream();
    let bulk = &s["bulk"];
    let rows = bulk["rows"].as_u64().unwrap();
    let sent_after = bulk["restart_sent_after"].as_u64().unwrap();
    assert!(
        sent_after > 0 && sent_after < rows,
        "the restart was sent mid-transaction"
    );
    let mut by_id: HashMap<u64, Vec<Position>> = HashMap::new();
    for entry in bulk["all"].as_array().unwrap() {
        let e = entry.as_array().unwrap();
        let id = e[2].as_u64().unwrap();
        let gtid: Vec<u64> = e[3].as_str().unwrap().split('-').map(|p| p.parse().unwrap()).collect();
        let file = e[4].as_str().unwrap().rsplit('.').next().unwrap().parse().unwrap();
        let position = Position::mariadb_gtid(
            "mariadb",
            gtid[0],
            gtid[2],
            file,
            e[5].as_u64().unwrap(),
            e[6].as_u64().unwrap(),
        );
        by_id.entry(id).or_default().push(position);
    }
    assert_eq!(by_id.len() as u64, rows, "every row reached Kafka");
    // A redelivered row carries the position of its first delivery: the guard
    // makes the second a no-op.
    for positions in by_id.values() {
        assert!(positions.windows(2).all(|w| w[0] == w[1]), "{positions:?}");
    }
    // The rows were inserted in id order: their positions are in the same order.
    let mut ids: Vec<&u64> = by_id.keys().collect();
    ids.sort();
    for pair in ids.windows(2) {
        assert!(by_id[pair[0]][0] < by_id[pair[1]][0], "row {} vs {}", pair[0], pair[1]);
    }
    // And the full records at both ends of it decode to the same positions.
    for (ev, commit, _, _) in changes(&s) {
        if commit == 11 {
            let id = ev.after.as_ref().unwrap()["id"].as_u64().unwrap();
            assert_eq!(ev.position, by_id[&id][0]);
        }
    }
}

/// The guard applied in any interleaving of the partitions (Kafka orders
/// records only within one) bumps each change once, and a replay from offset
/// 0 bumps nothing.
#[test]
fn guards_apply_each_change_once_in_any_partition_interleaving() {
    let s = stream();
    let changes = changes(&s);
    let key = |ev: &ChangeEvent| format!("{}:{:?}", ev.table, ev.key);
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
        let mut guards: HashMap<String, String> = HashMap::new();
        let mut applied = 0;
        for pass in 0..2 {
            for partition in order {
                for (ev, ..) in changes.iter().filter(|(_, _, _, r)| r.partition == partition) {
                    let guard = guards.entry(key(ev)).or_default();
                    if ev.position.ordinal > *guard {
                        *guard = ev.position.ordinal.clone();
                        assert_eq!(pass, 0, "a replay bumped {}", key(ev));
                        applied += 1;
                    }
                }
            }
        }
        assert_eq!(applied, changes.len(), "every change applied exactly once ({order:?})");
    }
}

const CONFIG: &str = r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "fixtures"
topic_regex = "mariadb\\.shop\\.fx_.*"
[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"
[[entity]]
table = "shop.fx_products"
namespace = "product"
replica_identity = "full"
keys = ["product:{id}", "category:{category_id}:products"]
[[entity]]
table = "shop.fx_categories"
namespace = "category"
replica_identity = "full"
keys = ["category:{id}"]
"#;

fn targets(ev: &ChangeEvent) -> (Vec<String>, Option<EscalationReason>) {
    let settings = config::parse("fixtures.toml", CONFIG, &|_| None).unwrap();
    match settings.graph.derive(ev) {
        Derivation::Targets {
            targets, escalation, ..
        } => (
            targets.into_iter().map(|t| t.target.record_key("")).collect(),
            escalation,
        ),
        other => panic!("expected targets, got {other:?}"),
    }
}

#[test]
fn full_row_images_render_both_sides_and_truncate_bumps_the_namespace() {
    let s = stream();
    let changes = changes(&s);
    let find = |commit: u64, seq: u64| &changes.iter().find(|(_, c, q, _)| (*c, *q) == (commit, seq)).unwrap().0;
    // Commit 4 moves product 1 from category 1 to 2: binlog_row_image=FULL
    // gives the whole old row.
    let moved = find(4, 2);
    assert_eq!(moved.table, "shop.fx_products");
    assert_eq!(
        targets(moved),
        (
            vec![
                "product:1".into(),
                "category:2:products".into(),
                "category:1:products".into()
            ],
            None
        )
    );
    // Commit 4 also deletes product 3: the old row has its category.
    assert_eq!(
        targets(find(4, 4)),
        (vec!["product:3".into(), "category:1:products".into()], None)
    );
    let truncate = find(10, 0);
    assert_eq!(truncate.op, Op::Truncate);
    assert_eq!(targets(truncate).0, vec!["ns:category"]);
}
