//! Invalidations named by the application in its own transaction, through
//! the real chain: PostgreSQL logical-decoding messages
//! (`pg_logical_emit_message`) and MariaDB outbox rows, Debezium, Kafka, the
//! daemon and Redis. The same scenarios run on both sources: a commit bumps
//! every named key once, a rollback or a rolled-back savepoint bumps
//! nothing, a message is ordered with its transaction's rows by the guard,
//! a kill -9 and a replay from offset 0 change nothing already applied,
//! concurrent transactions leave a key at the last commit, and hostile
//! contents become dead letters while the daemon goes on. The captured
//! fixtures (tests/fixtures/messages) are decoded and routed without the stack.
//!
//! MariaDB tests are gated like tests/integration/mariadb.rs: skipped
//! without CDC_MARIADB_URL unless CDC_REQUIRE_MARIADB=1.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use cdc_invalidator::event::{KafkaRecord, Position};
use cdc_invalidator::pipeline::{route, Routed};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _};
use serde_json::{json, Value};

use crate::common::chain::{
    expect_bumps_after, guard_positions, items_entity, kill_9_mid_stream, replay_changes_nothing,
    restart_until_caught_up, set, wait_for_seed, wait_for_topics, write_chain_config,
};
use crate::common::{eventually, Daemon};

const PG_SOURCE: &str = "pg:shop";
const MARIADB_SOURCE: &str = "mariadb-gtid:mariadb:0";

fn mariadb_url() -> Option<String> {
    match std::env::var("CDC_MARIADB_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CDC_REQUIRE_MARIADB").as_deref() == Ok("1") => {
            panic!("CDC_REQUIRE_MARIADB=1 but CDC_MARIADB_URL is not set (scripts/stack up --with mariadb)")
        }
        Err(_) => {
            eprintln!("skipped: MariaDB is not up (scripts/stack up --with mariadb exports CDC_MARIADB_URL)");
            None
        }
    }
}

fn message_topic() -> String {
    format!("{}.message", common::topic_prefix())
}

#[derive(Clone)]
enum Db {
    Pg(sqlx::PgPool),
    Maria(sqlx::MySqlPool),
}

/// One source database with a rows table (`id`, `grp`; an entity keyed
/// `item:{id}` and `group:{grp}`, namespace `item`), the way it names
/// invalidations (messages or an outbox table) and a daemon reading both.
struct Bench {
    db: Db,
    table: String,
    /// The MariaDB outbox table; PostgreSQL emits messages instead.
    outbox: Option<String>,
    msg_prefix: String,
    /// The version prefix in Redis.
    prefix: String,
    topics: Vec<String>,
    /// Everything the config holds after `[plan]`, for a replay's config.
    sections: String,
    source: &'static str,
    config: tempfile::NamedTempFile,
    daemon: Option<Daemon>,
}

impl Bench {
    async fn pg(messages_extra: &str, config_extra: &str, daemon_args: &[&str]) -> Bench {
        let pool = common::pg().await;
        let table = common::unique("tmsg");
        let msg_prefix = common::unique("tmsg-p");
        common::sql(
            &pool,
            &format!(
                "CREATE TABLE {table} (id integer PRIMARY KEY, grp integer NOT NULL);
                 ALTER TABLE {table} REPLICA IDENTITY FULL;
                 INSERT INTO {table} VALUES (0, 0);"
            ),
        )
        .await;
        let mut bench = Bench {
            db: Db::Pg(pool),
            table: table.clone(),
            outbox: None,
            msg_prefix,
            prefix: format!("{}:", common::unique("ver")),
            topics: vec![format!("{}.public.{table}", common::topic_prefix()), message_topic()],
            sections: String::new(),
            source: PG_SOURCE,
            config: tempfile::NamedTempFile::new().unwrap(),
            daemon: None,
        };
        // Also makes `<prefix>.message` exist on a fresh stack.
        bench.commit(&[bench.emit(&keys(&["seed"]))]).await;
        bench.sections = format!(
            "{}\n[messages]\nprefix = \"{}\"\ntopics = [\"{}\"]\n{messages_extra}\n{config_extra}",
            items_entity(&format!("public.{table}")),
            bench.msg_prefix,
            message_topic()
        );
        bench.start(daemon_args).await;
        bench
    }

    async fn mariadb(url: &str, messages_extra: &str, config_extra: &str, daemon_args: &[&str]) -> Bench {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .expect("MariaDB from scripts/stack up --with mariadb is reachable (CDC_MARIADB_URL)");
        let table = common::unique("tmsg");
        let outbox = common::unique("tmsg_outbox");
        let topic_prefix = std::env::var("CDC_MARIADB_TOPIC_PREFIX").unwrap_or_else(|_| "mariadb".into());
        let mut bench = Bench {
            db: Db::Maria(pool),
            table: table.clone(),
            outbox: Some(outbox.clone()),
            msg_prefix: String::new(),
            prefix: format!("{}:", common::unique("ver")),
            topics: vec![
                format!("{topic_prefix}.shop.{table}"),
                format!("{topic_prefix}.shop.{outbox}"),
            ],
            sections: format!(
                "{}\n[messages]\noutbox_tables = [\"shop.{outbox}\"]\n{messages_extra}\n{config_extra}",
                items_entity(&format!("shop.{table}"))
            ),
            source: MARIADB_SOURCE,
            config: tempfile::NamedTempFile::new().unwrap(),
            daemon: None,
        };
        bench
            .run(&[
                format!("CREATE TABLE {table} (id INT PRIMARY KEY, grp INT NOT NULL)"),
                format!("CREATE TABLE {outbox} (id BIGINT AUTO_INCREMENT PRIMARY KEY, content MEDIUMTEXT NOT NULL)"),
                format!("INSERT INTO {table} VALUES (0, 0)"),
            ])
            .await;
        bench.commit(&[bench.emit(&keys(&["seed"]))]).await;
        bench.start(daemon_args).await;
        bench
    }

    /// Writes the config and starts the daemon once the seed is applied.
    async fn start(&mut self, daemon_args: &[&str]) {
        wait_for_topics(&self.topics).await;
        self.config = write_chain_config(&self.topics, &self.sections, &self.prefix, &common::unique("group"));
        let daemon = Daemon::start_with(self.config.path(), daemon_args);
        daemon.wait_ready().await;
        self.daemon = Some(daemon);
        wait_for_seed(&self.prefix, set(&["item:0", "group:0", "seed"])).await;
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon runs")
    }

    /// The statement that names `content` in the current transaction.
    fn emit(&self, content: &str) -> String {
        match &self.outbox {
            None => format!(
                "SELECT pg_logical_emit_message(true, '{}', '{}')",
                self.msg_prefix,
                content.replace('\'', "''")
            ),
            Some(outbox) => format!(
                "INSERT INTO {outbox} (content) VALUES ('{}')",
                content.replace('\\', "\\\\").replace('\'', "''")
            ),
        }
    }

    fn insert(&self, id: i64, grp: i64) -> String {
        format!("INSERT INTO {} VALUES ({id}, {grp})", self.table)
    }

    /// Rows `first..=last`, in 50 groups, in one statement.
    fn insert_range(&self, first: i64, last: i64) -> String {
        match &self.db {
            Db::Pg(_) => format!(
                "INSERT INTO {} SELECT g, g % 50 FROM generate_series({first}, {last}) g",
                self.table
            ),
            // MariaDB's sequence engine: seq_<from>_to_<to> is a table of integers.
            Db::Maria(_) => format!(
                "INSERT INTO {} SELECT seq, seq % 50 FROM seq_{first}_to_{last}",
                self.table
            ),
        }
    }

    async fn connection(&self) -> Conn {
        match &self.db {
            Db::Pg(pool) => Conn::Pg(pool.acquire().await.unwrap()),
            Db::Maria(pool) => Conn::Maria(pool.acquire().await.unwrap()),
        }
    }

    /// Runs the statements in order on one connection.
    async fn run(&self, statements: &[String]) {
        let mut conn = self.connection().await;
        for statement in statements {
            conn.execute(statement).await;
        }
    }

    async fn commit(&self, statements: &[String]) {
        self.transaction(statements, "COMMIT").await;
    }

    async fn transaction(&self, statements: &[String], end: &str) {
        let mut all = vec!["BEGIN".to_owned()];
        all.extend(statements.iter().cloned());
        all.push(end.to_owned());
        self.run(&all).await;
    }

    /// Commits a message naming `fence:<n>` and waits until it is applied:
    /// everything committed before it is in Kafka by then, and on its own
    /// partition (PostgreSQL: one prefix, one partition) applied too.
    async fn fence(&self, n: usize) -> String {
        let key = format!("fence:{n}");
        self.commit(&[self.emit(&keys(&[&key]))]).await;
        let conn = common::redis_conn().await;
        let record = format!("{}{key}", self.prefix);
        eventually(&format!("{key} to be applied"), Duration::from_secs(60), || {
            let mut conn = conn.clone();
            let record = record.clone();
            async move {
                let v: Option<String> = redis::cmd("HGET")
                    .arg(&record)
                    .arg("v")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                v.map(|_| ())
            }
        })
        .await;
        key
    }

    async fn drop_tables(&self) {
        let mut tables = vec![self.table.clone()];
        tables.extend(self.outbox.clone());
        self.run(&[format!("DROP TABLE IF EXISTS {}", tables.join(", "))]).await;
    }
}

/// One connection of either database, for statements that must share it.
enum Conn {
    Pg(sqlx::pool::PoolConnection<sqlx::Postgres>),
    Maria(sqlx::pool::PoolConnection<sqlx::MySql>),
}

impl Conn {
    async fn execute(&mut self, statement: &str) {
        let sql = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()));
        let done = match self {
            Conn::Pg(conn) => sql.execute(&mut **conn).await.map(|_| ()),
            Conn::Maria(conn) => sql.execute(&mut **conn).await.map(|_| ()),
        };
        done.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

fn keys(names: &[&str]) -> String {
    json!({"v": 1, "keys": names}).to_string()
}

/// Every record of `topics` up to the last one in Kafka once `fence_key`
/// was seen, routed by the library with the daemon's config: what each
/// record bumped and at which position, in the order read per partition.
async fn routed_until(config: &Path, topics: &[String], fence_key: &str) -> Vec<(String, Vec<String>, Position)> {
    let settings = cdc_invalidator::config::load(config, &|_| None).unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .set("group.id", common::unique("oracle"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).unwrap();
    let mut routed = Vec::new();
    let mut seen: HashMap<(String, i32), i64> = HashMap::new();
    let mut ends: Option<HashMap<(String, i32), i64>> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(ends) = &ends {
            if ends
                .iter()
                .all(|(tp, end)| *end == 0 || seen.get(tp).is_some_and(|o| *o + 1 >= *end))
            {
                return routed;
            }
        }
        assert!(Instant::now() < deadline, "reading {topics:?} up to {fence_key}");
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        seen.insert((message.topic().to_owned(), message.partition()), message.offset());
        let record: KafkaRecord = cdc_invalidator::source::to_record(&message);
        let r = route(
            &settings.graph,
            &settings.plan,
            &record,
            cdc_invalidator::pipeline::now_us(),
            true,
        );
        if let Routed::Bump { targets, position, .. } = r.action {
            let targets: Vec<String> = targets.iter().map(|t| t.record_key("")).collect();
            let is_fence = targets.iter().any(|t| t == fence_key);
            routed.push((record.topic.clone(), targets, position));
            if is_fence && ends.is_none() {
                let mut found = HashMap::new();
                let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
                for topic in metadata
                    .topics()
                    .iter()
                    .filter(|t| topics.iter().any(|n| n == t.name()))
                {
                    for partition in topic.partitions() {
                        let (_, high) = consumer
                            .fetch_watermarks(topic.name(), partition.id(), Duration::from_secs(10))
                            .unwrap();
                        found.insert((topic.name().to_owned(), partition.id()), high);
                    }
                }
                ends = Some(found);
            }
        }
    }
}

/// The highest position per key, under `source` only.
fn last_positions(routed: &[(String, Vec<String>, Position)], source: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    for (_, targets, position) in routed {
        assert_eq!(position.source, source, "{targets:?}");
        for t in targets {
            let slot = out.entry(t.clone()).or_default();
            if position.ordinal > *slot {
                *slot = position.ordinal.clone();
            }
        }
    }
    out
}

/// The record that bumped `key` (the first such in `routed`).
fn position_of<'r>(routed: &'r [(String, Vec<String>, Position)], key: &str) -> &'r Position {
    &routed
        .iter()
        .find(|(_, targets, _)| targets.iter().any(|t| t == key))
        .unwrap_or_else(|| panic!("no record bumped {key}"))
        .2
}

async fn field(prefix: &str, key: &str, name: &str) -> Option<String> {
    let mut conn = common::redis_conn().await;
    redis::cmd("HGET")
        .arg(format!("{prefix}{key}"))
        .arg(name)
        .query_async(&mut conn)
        .await
        .unwrap()
}

// ---------------------------------------------------------------- scenarios

/// A commit bumps each named key and namespace, and each key of a named
/// row, exactly once; the outcome counters move with them.
async fn commit_bumps_each_named_target_once(bench: &Bench) {
    let metrics = bench.daemon().metrics().await;
    for outcome in ["applied", "skipped", "ignored", "dead_letter", "stalled"] {
        assert!(
            metrics.contains(&format!("cdc_invalidator_messages_total{{outcome=\"{outcome}\"}}")),
            "every outcome is exported from the start: {outcome}\n{metrics}"
        );
    }
    let bumped = |m: &str| common::metric_sum(m, "cdc_invalidator_targets_bumped_total", &[]);
    let applied = |m: &str| common::metric_sum(m, "cdc_invalidator_messages_total", &["outcome=\"applied\""]);
    let (bumped_before, applied_before) = (bumped(&metrics), applied(&metrics));

    let content = json!({"v": 1, "keys": ["count:1", "page:2", "count:1"], "namespaces": ["item"]}).to_string();
    expect_bumps_after(
        &bench.prefix,
        "a committed message",
        bench.commit(&[bench.emit(&content)]),
        set(&["count:1", "page:2", "ns:item"]),
    )
    .await;
    for key in ["count:1", "page:2"] {
        assert_eq!(
            field(&bench.prefix, key, "pv").await,
            None,
            "{key} was bumped more than once"
        );
    }
    let metrics = bench.daemon().metrics().await;
    assert_eq!(bumped(&metrics) - bumped_before, 3.0, "{metrics}");
    assert_eq!(applied(&metrics) - applied_before, 1.0, "{metrics}");

    // A row named by the message: its entity's templates, as if it changed.
    let table = match &bench.db {
        Db::Pg(_) => format!("public.{}", bench.table),
        Db::Maria(_) => format!("shop.{}", bench.table),
    };
    let content =
        json!({"v": 1, "keys": ["count:2"], "rows": [{"entity": table, "row": {"id": 9, "grp": 4}}]}).to_string();
    expect_bumps_after(
        &bench.prefix,
        "a committed message naming a row",
        bench.commit(&[bench.emit(&content)]),
        set(&["count:2", "item:9", "group:4"]),
    )
    .await;
}

/// A rolled-back transaction and a rolled-back savepoint bump nothing; what
/// comes after the savepoint in the same transaction does.
async fn rollbacks_bump_nothing(bench: &Bench) {
    expect_bumps_after(
        &bench.prefix,
        "a rolled-back transaction, then a fence",
        async {
            bench
                .transaction(&[bench.emit(&keys(&["rolled:back"])), bench.insert(50, 50)], "ROLLBACK")
                .await;
            bench.commit(&[bench.emit(&keys(&["fence:rollback"]))]).await;
        },
        set(&["fence:rollback"]),
    )
    .await;
    expect_bumps_after(
        &bench.prefix,
        "a rolled-back savepoint, then a message after it",
        bench.commit(&[
            "SAVEPOINT s".into(),
            bench.emit(&keys(&["savepoint:rolled:back"])),
            bench.insert(51, 51),
            "ROLLBACK TO SAVEPOINT s".into(),
            bench.emit(&keys(&["after:savepoint"])),
        ]),
        set(&["after:savepoint"]),
    )
    .await;
}

/// Rows and a message of one transaction: the message's position lies
/// between the rows around it, under the same guard source and
/// transaction, and every key ends at its last change's position.
async fn message_is_ordered_with_its_rows(bench: &Bench) {
    bench
        .commit(&[
            bench.insert(5, 7),
            bench.emit(&keys(&["item:5", "count:7"])),
            format!("UPDATE {} SET grp = 8 WHERE id = 5", bench.table),
        ])
        .await;
    let fence = bench.fence(1).await;
    let routed = routed_until(bench.config.path(), &bench.topics, &fence).await;
    let insert = position_of(&routed, "group:7");
    let message = position_of(&routed, "count:7");
    let update = position_of(&routed, "group:8");
    for p in [insert, message, update] {
        assert_eq!(p.source, bench.source);
        // One transaction: the same last commit LSN (PostgreSQL) or GTID
        // sequence number (MariaDB) leads every position.
        assert_eq!(p.ordinal[..20], insert.ordinal[..20], "{insert} {p}");
    }
    assert!(
        insert.ordinal < message.ordinal,
        "insert {insert} before message {message}"
    );
    // PostgreSQL puts a message at the end of its WAL record, the start of
    // the next: the update right after it may share its LSN (harmless: both
    // are applied after the commit). A MariaDB outbox row has its own.
    assert!(
        message.ordinal <= update.ordinal,
        "message {message} not after update {update}"
    );
    if bench.outbox.is_some() {
        assert!(message.ordinal < update.ordinal);
    }
    let expected = last_positions(&routed, bench.source);
    let guards = guard_positions(&bench.prefix, bench.source).await;
    for key in ["item:5", "group:7", "group:8", "count:7"] {
        assert_eq!(guards[key].1, expected[key], "{key}");
    }
    assert_eq!(guards["count:7"].1, message.ordinal);
    assert_eq!(
        guards["item:5"].1, update.ordinal,
        "item:5 ends at the update, its last change"
    );
}

/// Concurrent transactions naming the same key: A names it first and
/// commits last; the key's record ends at A's commit every round.
async fn concurrent_transactions_leave_the_last_commit(bench: &Bench, other: &Bench) {
    const ROUNDS: usize = 4;
    for round in 0..ROUNDS {
        // A begins and names the key, B names it and commits, then A commits.
        let mut a = bench.connection().await;
        a.execute("BEGIN").await;
        a.execute(&bench.emit(&keys(&["shared", &format!("a:{round}")]))).await;
        other
            .commit(&[other.emit(&keys(&["shared", &format!("b:{round}")]))])
            .await;
        a.execute("COMMIT").await;
    }
    let fence = bench.fence(2).await;
    let routed = routed_until(bench.config.path(), &bench.topics, &fence).await;
    let guards = guard_positions(&bench.prefix, bench.source).await;
    for round in 0..ROUNDS {
        let a = position_of(&routed, &format!("a:{round}"));
        let b = position_of(&routed, &format!("b:{round}"));
        assert!(a.ordinal > b.ordinal, "round {round}: A committed last ({a} vs {b})");
    }
    let last = format!("a:{}", ROUNDS - 1);
    assert_eq!(
        guards["shared"].1, guards[&last].1,
        "the shared key ends at the last commit's position"
    );
    assert_eq!(guards["shared"].1, last_positions(&routed, bench.source)["shared"]);
}

/// Many transactions of a row and a message each, a kill -9 mid-stream, a
/// restart (nothing applied before the kill is bumped again) and a replay
/// from offset 0 (nothing changes at all).
async fn kill_9_and_replay_change_nothing_applied(mut bench: Bench) {
    // Thousands of keys in large transactions (as end_to_end's kill test),
    // so the kill lands mid-stream: Debezium delivers them over seconds.
    const TRANSACTIONS: i64 = 60;
    const ROWS: i64 = 50;
    let writer = {
        let statements: Vec<Vec<String>> = (0..TRANSACTIONS)
            .map(|tx| {
                let (first, last) = (tx * ROWS + 1, (tx + 1) * ROWS);
                let named: Vec<String> = (first..=last)
                    .map(|i| format!("msg:{i}"))
                    .chain([format!("count:{}", tx % 10)])
                    .collect();
                let named: Vec<&str> = named.iter().map(String::as_str).collect();
                vec![bench.insert_range(first, last), bench.emit(&keys(&named))]
            })
            .collect();
        let writer = Bench::detached(&bench);
        tokio::spawn(async move {
            for tx in statements {
                writer.commit(&tx).await;
                // Spread over about 3 s: a daemon that applies faster than
                // the kill is decided must still find transactions after it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut daemon = bench.daemon.take().unwrap();
    kill_9_mid_stream(&mut daemon, &bench.prefix).await;
    let at_kill = guard_positions(&bench.prefix, bench.source).await;
    writer.await.unwrap();
    let total = usize::try_from(2 * TRANSACTIONS * ROWS).unwrap();
    assert!(
        at_kill.len() < total,
        "killed too late to prove anything ({} keys applied)",
        at_kill.len()
    );
    bench.commit(&[bench.emit(&keys(&["fence:kill"]))]).await;
    let routed = routed_until(bench.config.path(), &bench.topics, "fence:kill").await;
    let expected = last_positions(&routed, bench.source);
    let (mut daemon, _) =
        restart_until_caught_up(bench.config.path(), &bench.prefix, bench.source, &expected, &at_kill).await;
    assert_eq!(daemon.terminate().code(), Some(0), "{}", daemon.log_tail());
    let metrics = replay_changes_nothing(&bench.topics, &bench.sections, &bench.prefix, routed.len()).await;
    assert!(
        common::metric_sum(&metrics, "cdc_invalidator_messages_total", &["outcome=\"applied\""]) >= TRANSACTIONS as f64,
        "{metrics}"
    );
    assert!(
        common::metric_sum(&metrics, "cdc_invalidator_guard_noops_total", &[]) >= (2 * TRANSACTIONS * ROWS) as f64,
        "{metrics}"
    );
}

async fn dead_letter_kinds(schema: &str) -> Vec<(String, String)> {
    let pool = common::pg().await;
    // The schema name is the test's own random identifier.
    sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(format!(
        "SELECT error_kind, stage FROM {schema}.cdc_dead_letters \
         ORDER BY topic, (convert_from(key, 'UTF8')::jsonb #> '{{payload,id}}')::bigint NULLS FIRST, \"offset\""
    )))
    .fetch_all(&pool)
    .await
    .unwrap_or_default()
}

/// Hostile contents, each written by the application: every one becomes a
/// dead letter with its kind, nothing of them is bumped, the daemon stays
/// ready, and what follows still applies.
async fn hostile_contents_become_dead_letters(bench: &Bench, hostile: &[(String, &str)], schema: &str) {
    expect_bumps_after(
        &bench.prefix,
        "hostile contents, then a fence",
        async {
            for (statement, _) in hostile {
                bench.run(std::slice::from_ref(statement)).await;
            }
            bench.commit(&[bench.emit(&keys(&["fence:hostile"]))]).await;
        },
        set(&["fence:hostile"]),
    )
    .await;
    let daemon = bench.daemon();
    daemon.wait_ready().await;
    let expected: Vec<(String, String)> = hostile
        .iter()
        .map(|(_, kind)| (kind.to_string(), "message".to_owned()))
        .collect();
    let kinds = eventually("the dead letters to be written", Duration::from_secs(30), || async {
        let kinds = dead_letter_kinds(schema).await;
        (kinds.len() >= expected.len()).then_some(kinds)
    })
    .await;
    assert_eq!(kinds, expected);
    let metrics = daemon.metrics().await;
    let count = hostile.len() as f64;
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_messages_total", &["outcome=\"dead_letter\""]),
        count,
        "{metrics}"
    );
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_dead_letters_total", &["stage=\"message\""]),
        count,
        "{metrics}"
    );
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_stalled_partitions", &[]),
        0.0,
        "{metrics}"
    );
}

fn dead_letter_config() -> (String, String) {
    let (url, schema) = common::dead_letter_url(&common::pg_address());
    (
        format!("[dead_letters]\nurl = \"{url}\"\nschema = \"{schema}\"\n"),
        schema,
    )
}

/// Contents every source can carry, and the kind each must be refused with.
fn hostile_contents(bench: &Bench) -> Vec<(String, &'static str)> {
    let huge: Vec<String> = (0..20_000).map(|i| format!("k:{i}")).collect();
    let refused = |content: String, kind: &'static str| (bench.emit(&content), kind);
    vec![
        refused("{oops".into(), "malformed"),
        refused("[1,2]".into(), "wrong_type"),
        refused(r#"{"v":1,"keys":[42]}"#.into(), "wrong_type"),
        refused(r#"{"v":1,"keys":["a"],"also":1}"#.into(), "unknown_field"),
        refused(r#"{"v":2,"keys":["a"]}"#.into(), "bad_version"),
        refused(keys(&["epoch"]), "reserved_key"),
        refused(keys(&["ns:item"]), "reserved_key"),
        refused(keys(&["item:{id}"]), "invalid_key"),
        refused(r#"{"v":1,"keys":["a\u0000b"]}"#.into(), "invalid_key"),
        refused(keys(&[""]), "empty_name"),
        refused(keys(&["a", "b", "c", "d", "e", "f"]), "too_many_keys"),
        refused(json!({"v": 1, "keys": huge}).to_string(), "too_many_keys"),
        refused(r#"{"v":1,"namespaces":["nope"]}"#.into(), "unknown_namespace"),
        refused(
            r#"{"v":1,"rows":[{"entity":"public.nope","row":{"id":1}}]}"#.into(),
            "unknown_entity",
        ),
        refused(r#"{"v":1}"#.into(), "names_nothing"),
    ]
}

// ---------------------------------------------------------------- PostgreSQL

#[tokio::test]
async fn pg_commit_bumps_each_named_key_namespace_and_row_once() {
    let bench = Bench::pg("", "", &[]).await;
    commit_bumps_each_named_target_once(&bench).await;
    // Another prefix on the same topic is skipped and counted.
    let other = Bench {
        msg_prefix: common::unique("tmsg-other"),
        ..Bench::detached(&bench)
    };
    let skipped = |m: &str| common::metric_sum(m, "cdc_invalidator_messages_total", &["outcome=\"skipped\""]);
    let before = skipped(&bench.daemon().metrics().await);
    expect_bumps_after(
        &bench.prefix,
        "a message of another prefix, then a fence",
        async {
            other.commit(&[other.emit(&keys(&["other:1"]))]).await;
            bench.commit(&[bench.emit(&keys(&["fence:other"]))]).await;
        },
        set(&["fence:other"]),
    )
    .await;
    assert!(skipped(&bench.daemon().metrics().await) - before >= 1.0);
    bench.drop_tables().await;
}

#[tokio::test]
async fn pg_rollback_and_rolled_back_savepoint_bump_nothing() {
    let bench = Bench::pg("", "", &[]).await;
    rollbacks_bump_nothing(&bench).await;
    bench.drop_tables().await;
}

#[tokio::test]
async fn pg_message_and_rows_of_one_transaction_are_ordered_by_guard_positions() {
    let bench = Bench::pg("", "", &[]).await;
    message_is_ordered_with_its_rows(&bench).await;
    bench.drop_tables().await;
}

#[tokio::test]
async fn pg_concurrent_transactions_naming_one_key_leave_it_at_the_last_commit() {
    let bench = Bench::pg("", "", &[]).await;
    let other = Bench::detached(&bench);
    concurrent_transactions_leave_the_last_commit(&bench, &other).await;
    bench.drop_tables().await;
}

#[tokio::test]
async fn pg_kill_9_mid_stream_and_replay_from_zero_change_nothing_applied() {
    let bench = Bench::pg("", "", &[]).await;
    let table = Bench::detached(&bench);
    kill_9_and_replay_change_nothing_applied(bench).await;
    table.drop_tables().await;
}

#[tokio::test]
async fn pg_hostile_messages_become_dead_letters_and_the_daemon_goes_on() {
    let (dead_letters, schema) = dead_letter_config();
    let bench = Bench::pg("max_keys_per_message = 5", &dead_letters, &["--migrate"]).await;
    let mut hostile = hostile_contents(&bench);
    // What only a message can be: not transactional, or not UTF-8 at all.
    hostile.push((
        format!(
            "SELECT pg_logical_emit_message(false, '{}', '{}')",
            bench.msg_prefix,
            keys(&["not:transactional"])
        ),
        "not_transactional",
    ));
    hostile.push((
        format!(
            "SELECT pg_logical_emit_message(true, '{}', '\\xff'::bytea)",
            bench.msg_prefix
        ),
        "malformed",
    ));
    hostile_contents_become_dead_letters(&bench, &hostile, &schema).await;
    bench.drop_tables().await;
}

impl Bench {
    /// Another handle on the same database and names, without a daemon.
    fn detached(bench: &Bench) -> Bench {
        Bench {
            db: bench.db.clone(),
            table: bench.table.clone(),
            outbox: bench.outbox.clone(),
            msg_prefix: bench.msg_prefix.clone(),
            prefix: bench.prefix.clone(),
            topics: bench.topics.clone(),
            sections: bench.sections.clone(),
            source: bench.source,
            config: tempfile::NamedTempFile::new().unwrap(),
            daemon: None,
        }
    }
}

/// The reader crate's helper (readers/rust, `emit`): what it names commits
/// with the transaction's rows, and nothing of a rolled-back one.
#[tokio::test]
async fn pg_reader_helper_names_invalidations_in_the_transaction() {
    use cdc_cache::emit::{emit, Invalidation};
    let bench = Bench::pg("", "", &[]).await;
    let Db::Pg(pool) = bench.db.clone() else {
        unreachable!("a PostgreSQL bench")
    };
    let named = Invalidation::new().keys(["helper:1"]).namespaces(["item"]);
    let transaction = |end: &'static str| {
        let pool = pool.clone();
        let named = named.clone();
        let (table, prefix) = (bench.table.clone(), bench.msg_prefix.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO {table} VALUES (60, 61)")))
                .execute(&mut *tx)
                .await
                .unwrap();
            emit(&mut tx, &prefix, &named).await.unwrap();
            match end {
                "commit" => tx.commit().await.unwrap(),
                _ => tx.rollback().await.unwrap(),
            }
        }
    };
    expect_bumps_after(
        &bench.prefix,
        "a rolled-back transaction through the helper, then a fence",
        async {
            transaction("rollback").await;
            bench.commit(&[bench.emit(&keys(&["fence:helper"]))]).await;
        },
        set(&["fence:helper"]),
    )
    .await;
    expect_bumps_after(
        &bench.prefix,
        "a committed transaction through the helper",
        transaction("commit"),
        set(&["helper:1", "ns:item", "item:60", "group:61"]),
    )
    .await;
    bench.drop_tables().await;
}

// ---------------------------------------------------------------- MariaDB outbox

#[tokio::test]
async fn mariadb_outbox_commit_rollback_savepoint_order_and_ignored_changes() {
    let Some(url) = mariadb_url() else { return };
    let bench = Bench::mariadb(&url, "", "", &[]).await;
    commit_bumps_each_named_target_once(&bench).await;
    rollbacks_bump_nothing(&bench).await;
    message_is_ordered_with_its_rows(&bench).await;
    // Updates and deletes of outbox rows (the clean-up) bump nothing and are counted.
    let outbox = bench.outbox.clone().unwrap();
    let ignored = |m: &str| common::metric_sum(m, "cdc_invalidator_messages_total", &["outcome=\"ignored\""]);
    let before = ignored(&bench.daemon().metrics().await);
    expect_bumps_after(
        &bench.prefix,
        "an update and a delete of outbox rows, then a fence",
        async {
            bench
                .run(&[
                    format!("UPDATE {outbox} SET content = '{}'", keys(&["updated"])),
                    format!("DELETE FROM {outbox}"),
                ])
                .await;
            bench.commit(&[bench.emit(&keys(&["fence:cleanup"]))]).await;
        },
        set(&["fence:cleanup"]),
    )
    .await;
    assert!(ignored(&bench.daemon().metrics().await) - before >= 2.0);
    bench.drop_tables().await;
}

/// The reader crate's outbox helper against MariaDB.
#[tokio::test]
async fn mariadb_reader_helper_inserts_the_outbox_row_in_the_transaction() {
    use cdc_cache::emit::{insert_outbox_mysql, Invalidation};
    let Some(url) = mariadb_url() else { return };
    let bench = Bench::mariadb(&url, "", "", &[]).await;
    let Db::Maria(pool) = bench.db.clone() else {
        unreachable!("a MariaDB bench")
    };
    let outbox = bench.outbox.clone().unwrap();
    expect_bumps_after(
        &bench.prefix,
        "a committed transaction through the outbox helper",
        async {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {} VALUES (60, 61)",
                bench.table
            )))
            .execute(&mut *tx)
            .await
            .unwrap();
            let named = Invalidation::new().keys(["helper:1"]).namespaces(["item"]);
            insert_outbox_mysql(&mut tx, &outbox, &named).await.unwrap();
            tx.commit().await.unwrap();
        },
        set(&["helper:1", "ns:item", "item:60", "group:61"]),
    )
    .await;
    bench.drop_tables().await;
}

#[tokio::test]
async fn mariadb_outbox_concurrent_transactions_leave_the_last_commit() {
    let Some(url) = mariadb_url() else { return };
    let bench = Bench::mariadb(&url, "", "", &[]).await;
    let other = Bench::detached(&bench);
    concurrent_transactions_leave_the_last_commit(&bench, &other).await;
    bench.drop_tables().await;
}

#[tokio::test]
async fn mariadb_outbox_kill_9_mid_stream_and_replay_from_zero_change_nothing_applied() {
    let Some(url) = mariadb_url() else { return };
    let bench = Bench::mariadb(&url, "", "", &[]).await;
    let tables = Bench::detached(&bench);
    kill_9_and_replay_change_nothing_applied(bench).await;
    tables.drop_tables().await;
}

#[tokio::test]
async fn mariadb_outbox_hostile_rows_become_dead_letters_and_the_daemon_goes_on() {
    let Some(url) = mariadb_url() else { return };
    let (dead_letters, schema) = dead_letter_config();
    let bench = Bench::mariadb(&url, "max_keys_per_message = 5", &dead_letters, &["--migrate"]).await;
    let hostile = hostile_contents(&bench);
    hostile_contents_become_dead_letters(&bench, &hostile, &schema).await;
    bench.drop_tables().await;
}

// ---------------------------------------------------------------- captured fixtures

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/messages/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn to_record(v: &Value) -> KafkaRecord {
    let bytes = |v: &Value| (!v.is_null()).then(|| serde_json::to_vec(v).unwrap());
    KafkaRecord {
        topic: v["topic"].as_str().unwrap().to_owned(),
        partition: i32::try_from(v["partition"].as_i64().unwrap()).unwrap(),
        offset: v["offset"].as_i64().unwrap(),
        key: bytes(&v["key"]),
        value: bytes(&v["value"]),
        timestamp_ms: None,
        headers: Vec::new(),
    }
}

fn fixture_settings() -> cdc_invalidator::config::Settings {
    let text = r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "g"
topics = ["shop.message", "shop-schemaless.message", "shop.public.fxm_products", "shop.public.fxm_outbox",
          "mariadb.shop.fxm_products", "mariadb.shop.fxm_outbox"]
[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"
[messages]
outbox_tables = ["public.fxm_outbox", "shop.fxm_outbox"]
[[entity]]
table = "public.fxm_products"
namespace = "product"
keys = ["product:{id}", "category:{category_id}:products"]
[[entity]]
table = "shop.fxm_products"
keys = ["product:{id}", "category:{category_id}:products"]
"#;
    cdc_invalidator::config::parse("fixtures.toml", text, &|_| None).unwrap()
}

/// What one targets-bumping record bumped and at which position.
type Bumped = Option<(Vec<String>, Position)>;

/// (op label, what it bumped, the dead letter's kind) of one fixture record.
fn routed_fixture(record: &Value) -> (&'static str, Bumped, Option<&'static str>) {
    let s = fixture_settings();
    let r = route(&s.graph, &s.plan, &to_record(record), 0, true);
    let bumped = match r.action {
        Routed::Bump { targets, position, .. } => Some((targets.iter().map(|t| t.record_key("")).collect(), position)),
        Routed::Skip => None,
        other => panic!("{other:?}"),
    };
    (r.op, bumped, r.dead_letter.map(|f| f.kind))
}

#[test]
fn fixtures_transaction_message_sits_between_its_rows() {
    let tx = fixture("transaction.json");
    let routed: Vec<_> = tx["records"].as_array().unwrap().iter().map(routed_fixture).collect();
    let ops: Vec<&str> = routed.iter().map(|r| r.0).collect();
    assert_eq!(ops, ["c", "m", "u"]);
    let positions: Vec<&Position> = routed.iter().map(|r| &r.1.as_ref().unwrap().1).collect();
    assert_eq!(routed[1].1.as_ref().unwrap().0, vec!["category:3:count"]);
    for p in &positions {
        assert_eq!(p.source, PG_SOURCE);
        assert_eq!(
            p.ordinal[..20],
            positions[0].ordinal[..20],
            "one transaction, one last commit LSN"
        );
    }
    assert!(
        positions[0] < positions[1] && positions[1] <= positions[2],
        "{positions:?}"
    );
}

#[test]
fn fixtures_non_transactional_savepoint_and_schemaless_messages() {
    let (op, bumped, kind) = routed_fixture(&fixture("non_transactional.json"));
    assert_eq!((op, bumped, kind), ("m", None, Some("not_transactional")));
    let (_, bumped, _) = routed_fixture(&fixture("after_savepoint.json"));
    assert_eq!(bumped.unwrap().0, vec!["after:savepoint"]);
    let (_, bumped, kind) = routed_fixture(&fixture("schemaless.json"));
    let (targets, position) = bumped.unwrap();
    assert_eq!((targets, kind), (vec!["category:3:count".to_owned()], None));
    assert_eq!(position.source, "pg:shop-schemaless");
}

#[test]
fn fixtures_outbox_inserts_bump_and_clean_ups_are_ignored() {
    for (file, source) in [
        ("outbox_postgres.json", PG_SOURCE),
        ("outbox_mariadb.json", MARIADB_SOURCE),
    ] {
        let records = fixture(file)["records"].as_array().unwrap().clone();
        let routed: Vec<_> = records.iter().map(routed_fixture).collect();
        let product = routed[0].1.as_ref().unwrap();
        let outbox = routed[1].1.as_ref().unwrap();
        assert_eq!(outbox.0, vec!["category:3:count"], "{file}");
        assert_eq!(outbox.1.source, source);
        assert!(
            product.1 < outbox.1,
            "{file}: the outbox row after the product row of its transaction"
        );
        // The clean-up (and, in MariaDB, an update) bumps nothing; the tombstone is skipped.
        for (op, bumped, kind) in &routed[2..] {
            assert_eq!((bumped, kind), (&None, &None), "{file} {op}");
        }
        let ops: BTreeMap<&str, usize> = routed.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.0).or_default() += 1;
            m
        });
        assert_eq!(ops.get("d"), Some(&1), "{file}: {ops:?}");
    }
}
