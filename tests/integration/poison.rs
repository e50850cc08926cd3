//! Poison records and a dead-letter store outage: never lose a record, never
//! stall silently. Records are produced straight to a topic named like a
//! Debezium topic, so every kind of bad input can be made on purpose.

use crate::common;

use std::time::Duration;

use crate::common::{eventually, Daemon};
use serde_json::{json, Value};

fn config(
    topics: &[String],
    table: &str,
    prefix: &str,
    (dead_letters, schema): (&str, &str),
) -> tempfile::NamedTempFile {
    let extra = format!(
        "[dead_letters]\nurl = \"{dead_letters}\"\nschema = \"{schema}\"\n[plan]\nmax_record_bytes = 100000\n\
         [[entity]]\ntable = \"public.{table}\"\nnamespace = \"item\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\"]\n"
    );
    common::write_config_for(topics, &common::redis_url(), prefix, &common::unique("group"), &extra)
}

fn change(
    table: &str,
    op: &str,
    lsn: u64,
    key: Option<Value>,
    before: Value,
    after: Value,
) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let value = json!({"before": before, "after": after, "op": op,
        "source": {"connector": "postgresql", "name": "shop", "db": "shop", "schema": "public", "table": table,
                   "lsn": lsn, "sequence": format!("[\"{lsn}\",\"{lsn}\"]"), "ts_ms": 1}});
    (
        key.map(|k| serde_json::to_vec(&k).unwrap()),
        Some(serde_json::to_vec(&value).unwrap()),
    )
}

async fn dead_letter_kinds(schema: &str) -> Vec<(i64, String, String)> {
    let pool = common::pg().await;
    // The schema name is the test's own random identifier.
    sqlx::query_as::<_, (i64, String, String)>(sqlx::AssertSqlSafe(format!(
        "SELECT \"offset\", error_kind, stage FROM {schema}.cdc_dead_letters ORDER BY \"offset\""
    )))
    .fetch_all(&pool)
    .await
    .unwrap_or_default()
}

async fn version(prefix: &str, key: &str) -> u64 {
    let mut conn = common::redis_conn().await;
    let v: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}{key}"))
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    v.and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn every_kind_of_poison_becomes_a_dead_letter_and_later_records_still_apply() {
    let table = common::unique("poison");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let prefix = format!("{}:", common::unique("ver"));
    let (dl_url, schema) = common::dead_letter_url(&common::pg_address());
    let cfg = config(std::slice::from_ref(&topic), &table, &prefix, (&dl_url, &schema));

    let good = |id: i64, lsn: u64| common::debezium_change(&table, "c", lsn, id, json!({"id": id}), common::now_us());
    let records = vec![
        good(1, 100),
        (
            Some(b"{\"id\":2}".to_vec()),
            Some(b"{\"op\": \"c\", \"after\": {\"id\": 2".to_vec()),
        ),
        change(
            &table,
            "c",
            102,
            Some(json!({"id": 3})),
            Value::Null,
            json!("not a row"),
        ),
        change(&table, "x", 103, Some(json!({"id": 4})), Value::Null, json!({"id": 4})),
        (None, Some(vec![0x05, 0x00, 0x00, 0x00, 0x01, 0x02])),
        (None, Some(vec![0x00, 0x00, 0x00, 0x00, 0x07, 0x02, 0x04])),
        (None, Some(vec![b'{'; 300_000])),
        change(&table, "d", 107, None, Value::Null, Value::Null),
        change(&table, "u", 108, Some(json!({"id": 99})), Value::Null, json!({"id": 5})),
        good(6, 109),
    ];
    // Written before the daemon starts: a real backlog, in one partition.
    let offsets = common::produce(&topic, &records).await;
    let first = offsets[0].1;

    let daemon = Daemon::start_with(cfg.path(), &["--migrate"]);
    eventually(
        "the record after the poison to be applied",
        Duration::from_secs(60),
        || {
            let prefix = prefix.clone();
            async move { (version(&prefix, "item:6").await > 0).then_some(()) }
        },
    )
    .await;
    assert!(version(&prefix, "item:1").await > 0);
    assert!(
        version(&prefix, "ns:item").await > 0,
        "the namespace of the poisoned table was escalated"
    );

    let kinds = dead_letter_kinds(&schema).await;
    let expected = [
        (1, "malformed", "decode"),
        (2, "unexpected_shape", "decode"),
        (3, "unknown_op", "decode"),
        (4, "unknown_magic_byte", "decode"),
        (5, "unsupported_format", "decode"),
        (6, "too_large", "decode"),
        (7, "missing_key", "decode"),
        (8, "key_mismatch", "decode"),
    ];
    let got: Vec<(i64, &str, &str)> = kinds
        .iter()
        .map(|(o, k, s)| (o - first, k.as_str(), s.as_str()))
        .collect();
    assert_eq!(got, expected.to_vec(), "dead letters by offset");

    let metrics = daemon.metrics().await;
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_dead_letters_total", &[]),
        8.0,
        "{metrics}"
    );
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_dead_letters_total", &["kind=\"malformed\""]),
        1.0
    );
    // A dead letter is an outcome of its own, even when it also escalated.
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_events_total", &["outcome=\"dead_letter\""]),
        8.0,
        "{metrics}"
    );
    assert!(
        common::metric_sum(
            &metrics,
            "cdc_invalidator_escalations_total",
            &["reason=\"undecodable\""]
        ) >= 8.0
    );
    drop(daemon);

    // The operator's view: list shows them, replay leaves them pending because
    // they still fail, purge --all removes them.
    let cli = |args: &[&str]| {
        common::cli()
            .args(args)
            .args(["--config", cfg.path().to_str().unwrap()])
            .output()
            .unwrap()
    };
    let check = cli(&["check"]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains("ok    dead letters"), "{report}");
    let list = cli(&["dead-letters", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("8 dead letter(s)") && text.contains("key_mismatch"),
        "{text}"
    );
    let replay = cli(&["dead-letters", "replay"]);
    assert_eq!(
        replay.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );
    let replayed = String::from_utf8_lossy(&replay.stdout);
    assert!(replayed.contains("0 replayed, 8 still failing"), "{replayed}");
    let purge = cli(&["dead-letters", "purge", "--all"]);
    assert!(String::from_utf8_lossy(&purge.stdout).contains("8 dead letter(s) deleted"));
}

#[tokio::test]
async fn dead_letter_store_down_stalls_the_partition_until_it_returns() {
    let table = common::unique("dldown");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let prefix = format!("{}:", common::unique("ver"));
    let mut proxy = common::Proxy::start(&common::pg_address()).await;
    let (dl_url, schema) = common::dead_letter_url(&format!("127.0.0.1:{}", proxy.port));
    let cfg = config(std::slice::from_ref(&topic), &table, &prefix, (&dl_url, &schema));
    let good = |id: i64, lsn: u64| common::debezium_change(&table, "c", lsn, id, json!({"id": id}), common::now_us());

    common::produce(&topic, &[good(1, 100)]).await;
    let daemon = Daemon::start_with(cfg.path(), &["--migrate"]);
    eventually("the first record", Duration::from_secs(60), || {
        let prefix = prefix.clone();
        async move { (version(&prefix, "item:1").await > 0).then_some(()) }
    })
    .await;

    proxy.down().await;
    let offsets = common::produce(&topic, &[(None, Some(b"garbage".to_vec())), good(2, 102)]).await;
    let body = eventually(
        "readiness to name the dead-letter store",
        Duration::from_secs(60),
        || {
            let admin = daemon.admin.clone();
            async move {
                let (code, body) = common::http_get(&admin, "/readyz").await?;
                (code == 503 && body.contains("dead-letter store")).then_some(body)
            }
        },
    )
    .await;
    assert!(body.contains("\"ready\":false"), "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        version(&prefix, "item:2").await,
        0,
        "nothing past the unwritten dead letter is applied"
    );
    let committed = common::committed_offset(&common::group_of(cfg.path()), &topic, 0).unwrap_or(-1);
    assert!(
        committed <= offsets[0].1,
        "committed {committed} past the poison at {}",
        offsets[0].1
    );

    proxy.up().await;
    eventually(
        "the record after the poison once the store is back",
        Duration::from_secs(60),
        || {
            let prefix = prefix.clone();
            async move { (version(&prefix, "item:2").await > 0).then_some(()) }
        },
    )
    .await;
    let kinds = dead_letter_kinds(&schema).await;
    assert_eq!(
        kinds.iter().map(|(o, k, _)| (*o, k.as_str())).collect::<Vec<_>>(),
        vec![(offsets[0].1, "malformed")]
    );
    daemon.wait_ready().await;
}

/// Produces one record with raw header bytes: rdkafka's safe API only takes
/// UTF-8 header names, and the point is a name that is not.
async fn produce_with_raw_headers(topic: &str, value: &[u8], headers: &[(&[u8], Option<&[u8]>)]) -> i64 {
    use rdkafka::bindings as rd;
    use rdkafka::message::OwnedHeaders;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .create()
        .unwrap();
    // SAFETY: rd_kafka_headers_new returns an owned list; rd_kafka_header_add
    // copies `size` bytes of name and value. OwnedHeaders is a single
    // non-null pointer to such a list (checked by size below), and takes
    // ownership of it (freed when the record is sent or dropped).
    let owned: OwnedHeaders = unsafe {
        let list = rd::rd_kafka_headers_new(headers.len());
        for (name, value) in headers {
            let (value_ptr, value_len) = match value {
                Some(v) => (v.as_ptr().cast(), isize::try_from(v.len()).unwrap()),
                None => (std::ptr::null(), 0),
            };
            rd::rd_kafka_header_add(
                list,
                name.as_ptr().cast(),
                isize::try_from(name.len()).unwrap(),
                value_ptr,
                value_len,
            );
        }
        assert_eq!(
            std::mem::size_of::<OwnedHeaders>(),
            std::mem::size_of::<*mut rd::rd_kafka_headers_t>()
        );
        std::mem::transmute::<*mut rd::rd_kafka_headers_t, OwnedHeaders>(list)
    };
    let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(0).payload(value).headers(owned);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce")
        .offset
}

/// Through the real broker and dead-letter store: a header name that is not
/// UTF-8 (rdkafka 0.39's accessor panicked on it, a crash loop), a NUL in a
/// header value (PostgreSQL's jsonb refused it and every partition paused),
/// and positions Debezium cannot write (`lsn: -1` poisoned the guard): all
/// dead letters, kept losslessly, and the valid change after them applies.
#[tokio::test]
async fn hostile_headers_and_positions_are_dead_letters_and_never_stop_the_daemon() {
    let table = common::unique("hostile");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let prefix = format!("{}:", common::unique("ver"));
    let (dl_url, schema) = common::dead_letter_url(&common::pg_address());
    let cfg = config(std::slice::from_ref(&topic), &table, &prefix, (&dl_url, &schema));

    let garbage_offset =
        produce_with_raw_headers(&topic, b"{not json", &[(b"h\xff\xfe", Some(b"v\0w")), (b"plain", None)]).await;
    let negative_lsn = json!({"before": null, "after": {"id": 3}, "op": "u",
        "source": {"connector": "postgresql", "name": "shop", "db": "shop", "schema": "public", "table": table,
                   "lsn": -1, "ts_ms": 1}});
    let overflowing = json!({"before": null, "after": {"id": 3}, "op": "u",
        "source": {"connector": "postgresql", "name": "shop", "db": "shop", "schema": "public", "table": table,
                   "lsn": 7000, "sequence": "[\"18446744073709551615\",\"7000\"]", "ts_ms": 1}});
    let offsets = common::produce(
        &topic,
        &[
            (
                Some(b"{\"id\":3}".to_vec()),
                Some(serde_json::to_vec(&negative_lsn).unwrap()),
            ),
            (
                Some(b"{\"id\":3}".to_vec()),
                Some(serde_json::to_vec(&overflowing).unwrap()),
            ),
            common::debezium_change(&table, "u", 500, 3, json!({"id": 3}), common::now_us()),
        ],
    )
    .await;

    let daemon = Daemon::start_with(cfg.path(), &["--migrate"]);
    eventually("the valid change after the poison", Duration::from_secs(60), || {
        let prefix = prefix.clone();
        async move { (version(&prefix, "item:3").await > 0).then_some(()) }
    })
    .await;
    daemon.wait_ready().await;

    // The guard holds the valid position, never one from the poison.
    let mut conn = common::redis_conn().await;
    let guard: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}item:3"))
        .arg("p:pg:shop")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(guard.as_deref(), Some("0000000000000000050000000000000000000500"));

    let kinds = dead_letter_kinds(&schema).await;
    assert_eq!(
        kinds.iter().map(|(o, k, _)| (*o, k.as_str())).collect::<Vec<_>>(),
        vec![
            (garbage_offset, "malformed"),
            (offsets[0].1, "bad_position"),
            (offsets[1].1, "bad_position")
        ]
    );
    let pool = common::pg().await;
    let (names, values): (Vec<Vec<u8>>, Vec<Option<Vec<u8>>>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT header_names, header_values FROM {schema}.cdc_dead_letters WHERE \"offset\" = $1"
    )))
    .bind(garbage_offset)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(names, vec![b"h\xff\xfe".to_vec(), b"plain".to_vec()]);
    assert_eq!(values, vec![Some(b"v\0w".to_vec()), None]);
    let metrics = daemon.metrics().await;
    assert_eq!(
        common::metric_sum(
            &metrics,
            "cdc_invalidator_dead_letters_total",
            &["kind=\"bad_position\""]
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_stalled_partitions", &[]),
        0.0
    );
}

/// A dead letter the store is up for but refuses (here a CHECK constraint,
/// SQLSTATE 23514) is no outage. Only its partition stalls, at the record,
/// with a true readiness reason and the stalled metric; the other
/// partitions keep going.
#[tokio::test]
async fn a_refused_dead_letter_stalls_its_partition_only() {
    let table = common::unique("refused");
    let stalled_topic = format!("{}.public.{table}", common::topic_prefix());
    let other_topic = format!("other{}.public.{table}", common::topic_prefix());
    let prefix = format!("{}:", common::unique("ver"));
    let (dl_url, schema) = common::dead_letter_url(&common::pg_address());
    // Two topics of the same table.
    let cfg = config(
        &[stalled_topic.clone(), other_topic.clone()],
        &table,
        &prefix,
        (&dl_url, &schema),
    );
    let good = |id: i64, lsn: u64| common::debezium_change(&table, "c", lsn, id, json!({"id": id}), common::now_us());
    common::produce(&stalled_topic, &[good(1, 100)]).await;
    common::produce(&other_topic, &[good(2, 101)]).await;
    let daemon = Daemon::start_with(cfg.path(), &["--migrate"]);
    for key in ["item:1", "item:2"] {
        eventually("the first records", Duration::from_secs(60), || {
            let prefix = prefix.clone();
            async move { (version(&prefix, key).await > 0).then_some(()) }
        })
        .await;
    }
    let pool = common::pg().await;
    common::sql(
        &pool,
        &format!(
            "ALTER TABLE {schema}.cdc_dead_letters ADD CONSTRAINT refuse_malformed CHECK (error_kind <> 'malformed')"
        ),
    )
    .await;

    // One produce, so one batch in all likelihood: a dead letter the store
    // accepts (another table's record) right before the one it refuses. The
    // batch's statement is refused as a whole; the accepted row must still
    // be written, and only the refused record stalls.
    let accepted = change(
        "other_table",
        "u",
        102,
        Some(json!({"id": 13})),
        Value::Null,
        json!({"id": 13}),
    );
    let produced = common::produce(
        &stalled_topic,
        &[accepted, (None, Some(b"{oops".to_vec())), good(3, 103)],
    )
    .await;
    let poison = &produced[1..];
    let body = eventually(
        "readiness to name the stalled partition",
        Duration::from_secs(60),
        || {
            let admin = daemon.admin.clone();
            async move {
                let (code, body) = common::http_get(&admin, "/readyz").await?;
                (code == 503 && body.contains("dead_letter_refused")).then_some(body)
            }
        },
    )
    .await;
    assert!(
        body.contains(&format!("{stalled_topic}/0 stalled at offset {}", poison[0].1)),
        "{body}"
    );
    assert!(
        !body.contains("dead-letter store unreachable"),
        "the store is up: {body}"
    );

    // The stalled partition takes nothing more, while the other is not
    // paused: its next record applies. (item:3, right behind the refused
    // record, may have been bumped already: a batch handed to the applier
    // before the refusal came back still applies, which is harmless, but
    // its offset is never committed.)
    common::produce(&stalled_topic, &[good(5, 105)]).await;
    common::produce(&other_topic, &[good(4, 104)]).await;
    eventually("the other partition to keep going", Duration::from_secs(60), || {
        let prefix = prefix.clone();
        async move { (version(&prefix, "item:4").await > 0).then_some(()) }
    })
    .await;
    assert_eq!(
        version(&prefix, "item:5").await,
        0,
        "nothing taken past the refused record"
    );
    let committed = common::committed_offset(&common::group_of(cfg.path()), &stalled_topic, 0).unwrap_or(-1);
    assert!(committed <= poison[0].1, "committed {committed} past {}", poison[0].1);
    let metrics = daemon.metrics().await;
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_stalled_partitions", &[]),
        1.0,
        "{metrics}"
    );
    let kinds = dead_letter_kinds(&schema).await;
    assert!(
        kinds
            .iter()
            .any(|(offset, kind, _)| *offset == produced[0].1 && kind != "malformed"),
        "the accepted dead letter beside the refused one was written: {kinds:?}"
    );
    assert!(
        kinds.iter().all(|(_, kind, _)| kind != "malformed"),
        "the refused row is not in the table: {kinds:?}"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("dead_letter_refused")),
        "{}",
        daemon.log_tail()
    );
}

/// Through the real broker: flattened rows whose columns look like
/// schema-change or transaction records are rows (applied), a record naming
/// another table and a NULL primary key are dead letters that escalate, and
/// nothing is skipped silently.
#[tokio::test]
async fn look_alike_rows_apply_and_wrong_table_or_null_key_are_dead_letters() {
    let table = common::unique("lookalike");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let prefix = format!("{}:", common::unique("ver"));
    let (dl_url, schema) = common::dead_letter_url(&common::pg_address());
    let cfg = config(std::slice::from_ref(&topic), &table, &prefix, (&dl_url, &schema));
    let row = |v: Value| {
        (
            Some(serde_json::to_vec(&json!({"id": v["id"]})).unwrap()),
            Some(serde_json::to_vec(&v).unwrap()),
        )
    };
    let records = vec![
        row(json!({"id": 11, "ddl": "CREATE TABLE x()", "tableChanges": []})),
        row(json!({"id": 12, "status": "END", "event_count": 3})),
        change(
            "other_table",
            "u",
            300,
            Some(json!({"id": 13})),
            Value::Null,
            json!({"id": 13}),
        ),
        change(
            &table,
            "c",
            301,
            Some(json!({"id": null})),
            Value::Null,
            json!({"id": null}),
        ),
        common::debezium_change(&table, "c", 302, 14, json!({"id": 14}), common::now_us()),
    ];
    let offsets = common::produce(&topic, &records).await;
    let daemon = Daemon::start_with(cfg.path(), &["--migrate"]);
    eventually("the last record", Duration::from_secs(60), || {
        let prefix = prefix.clone();
        async move { (version(&prefix, "item:14").await > 0).then_some(()) }
    })
    .await;
    assert!(
        version(&prefix, "item:11").await > 0,
        "a row with ddl/tableChanges columns is a row"
    );
    assert!(
        version(&prefix, "item:12").await > 0,
        "a row with status/event_count columns is a row"
    );
    assert_eq!(
        version(&prefix, "item:13").await,
        0,
        "another table's record bumps nothing of this one's keys"
    );
    assert!(version(&prefix, "ns:item").await > 0, "the poisoned entity escalated");
    let kinds = dead_letter_kinds(&schema).await;
    assert_eq!(
        kinds.iter().map(|(o, k, _)| (*o, k.as_str())).collect::<Vec<_>>(),
        vec![(offsets[2].1, "table_mismatch"), (offsets[3].1, "missing_key")]
    );
    let metrics = daemon.metrics().await;
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_events_total", &["outcome=\"skipped\""]),
        0.0,
        "{metrics}"
    );
}

/// A version record Redis refuses to bump (another application wrote a
/// string where the daemon keeps a hash: WRONGTYPE) cannot be fixed by
/// retrying: the daemon says so (log, `kind="refused"`, readiness), commits
/// nothing past it, and applies everything once an operator removes the key.
#[tokio::test]
async fn a_version_record_redis_refuses_holds_offsets_until_an_operator_fixes_it() {
    let table = common::unique("refused");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let redis = common::PrivateRedis::start_ready().await;
    let extra = format!("[[entity]]\ntable = \"public.{table}\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\"]\n");
    let cfg = common::write_config(&topic, &redis.url(), "ver:", &extra);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("ver:item:1")
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .unwrap();
    let now = common::now_us();
    common::produce(
        &topic,
        &[
            common::debezium_change(&table, "u", 10, 1, json!({"id": 1}), now),
            common::debezium_change(&table, "u", 11, 2, json!({"id": 2}), now),
        ],
    )
    .await;
    let daemon = Daemon::start(cfg.path());
    let body = eventually("readiness to name the refusal", Duration::from_secs(60), || {
        let admin = daemon.admin.clone();
        async move {
            common::http_get(&admin, "/readyz")
                .await
                .filter(|(code, body)| *code == 503 && body.contains("WRONGTYPE"))
                .map(|(_, body)| body)
        }
    })
    .await;
    assert!(body.contains("redis"), "{body}");
    let metrics = daemon.metrics().await;
    assert!(
        common::metric_sum(&metrics, "cdc_invalidator_redis_errors_total", &["kind=\"refused\""]) >= 1.0,
        "{metrics}"
    );
    let group = common::group_of(cfg.path());
    assert_eq!(
        common::committed_offset(&group, &topic, 0),
        None,
        "nothing committed past the refusal"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("retrying cannot fix this"), "{}", daemon.log_tail());

    let _: () = redis::cmd("DEL")
        .arg("ver:item:1")
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually("both bumps applied and committed", Duration::from_secs(60), || {
        let (group, topic) = (group.clone(), topic.clone());
        let mut conn = conn.clone();
        async move {
            let v1: Option<u64> = redis::cmd("HGET")
                .arg("ver:item:1")
                .arg("v")
                .query_async(&mut conn)
                .await
                .ok()?;
            let v2: Option<u64> = redis::cmd("HGET")
                .arg("ver:item:2")
                .arg("v")
                .query_async(&mut conn)
                .await
                .ok()?;
            (v1.is_some() && v2.is_some() && common::committed_offset(&group, &topic, 0) == Some(2)).then_some(())
        }
    })
    .await;
}
