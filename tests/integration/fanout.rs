//! Fan-out lookups and escalation through the real chain: a category change
//! invalidates its products (found by SQL), and every case where the exact
//! children or old values cannot be known moves a namespace record instead.

use crate::common;

use std::time::Duration;

use crate::common::{eventually, Daemon};

async fn version(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    let v: Option<String> = redis::cmd("HGET").arg(key).arg("v").query_async(conn).await.unwrap();
    v.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Runs SQL and waits until every listed record moved past its old version.
async fn expect_moved(pool: &sqlx::PgPool, prefix: &str, statement: &str, keys: &[&str]) {
    let mut conn = common::redis_conn().await;
    let mut before = Vec::new();
    for k in keys {
        before.push(version(&mut conn, &format!("{prefix}{k}")).await);
    }
    common::sql(pool, statement).await;
    eventually(
        &format!("{keys:?} to move after {statement}"),
        Duration::from_secs(60),
        || {
            let mut conn = conn.clone();
            let before = before.clone();
            async move {
                for (k, old) in keys.iter().zip(&before) {
                    if version(&mut conn, &format!("{prefix}{k}")).await <= *old {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn fanout_exact_over_limit_failing_and_missing_before_each_move_the_right_records() {
    let categories = common::unique("fcat");
    let products = common::unique("fprod");
    let pool = common::pg().await;
    // Categories keep REPLICA IDENTITY DEFAULT: updates carry no old row.
    common::sql(
        &pool,
        &format!(
            "CREATE TABLE {categories} (id integer PRIMARY KEY, name text NOT NULL);
             CREATE TABLE {products} (id integer PRIMARY KEY, category_id integer NOT NULL);
             INSERT INTO {categories} VALUES (1, 'small'), (2, 'big'), (3, 'broken');
             INSERT INTO {products} VALUES (11, 1), (12, 1), (21, 2), (22, 2), (23, 2), (24, 2), (25, 2), (31, 3);"
        ),
    )
    .await;
    let topic = format!("{}.public.{categories}", common::topic_prefix());
    let prefix = format!("{}:", common::unique("ver"));
    // Category 3's lookup divides by zero: a lookup that keeps failing.
    let extra = format!(
        r#"
[lookup]
url = "{pg}"
timeout = "2s"
attempts = 2
[[entity]]
table = "public.{categories}"
namespace = "category"
consistency = "strong"
keys = ["category:{{id}}", "category-name:{{name}}"]
  [[entity.fanout]]
  query = "SELECT id FROM {products} WHERE category_id = $1 AND 1 / (3 - category_id) IS NOT NULL"
  bind = ["id"]
  keys = ["product:{{id}}"]
  max_rows = 3
  namespace = "product"
"#,
        pg = common::pg_url()
    );
    let cfg = common::write_config(&topic, &common::redis_url(), &prefix, &extra);
    // `check` sees the lookup database: the query prepares, the table is DEFAULT.
    let check = common::cli()
        .args(["check", "--config", cfg.path().to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        report.contains("prepares") && report.contains("REPLICA IDENTITY DEFAULT"),
        "{report}"
    );

    let daemon = Daemon::start(cfg.path());
    daemon.wait_ready().await;

    // Two children, under max_rows: their exact keys. The name template needs
    // the old name, which DEFAULT identity does not log: namespace category.
    expect_moved(
        &pool,
        &prefix,
        &format!("UPDATE {categories} SET name = 'tiny' WHERE id = 1"),
        &[
            "category:1",
            "category-name:tiny",
            "product:11",
            "product:12",
            "ns:category",
        ],
    )
    .await;
    // Five children, over max_rows 3: one bump of the children's namespace.
    let mut conn = common::redis_conn().await;
    let ns_product = version(&mut conn, &format!("{prefix}ns:product")).await;
    expect_moved(
        &pool,
        &prefix,
        &format!("UPDATE {categories} SET name = 'huge' WHERE id = 2"),
        &["category:2", "ns:product"],
    )
    .await;
    assert_eq!(
        version(&mut conn, &format!("{prefix}product:21")).await,
        0,
        "no per-child keys over the limit"
    );
    assert!(version(&mut conn, &format!("{prefix}ns:product")).await > ns_product);
    // A failing lookup (retried, then given up) also escalates to the children's namespace.
    expect_moved(
        &pool,
        &prefix,
        &format!("UPDATE {categories} SET name = 'oops' WHERE id = 3"),
        &["category:3", "ns:product"],
    )
    .await;

    let metrics = daemon.metrics().await;
    for reason in ["missing_before", "fanout_limit", "lookup_failed"] {
        assert!(
            common::metric_sum(
                &metrics,
                "cdc_invalidator_escalations_total",
                &[&format!("reason=\"{reason}\"")]
            ) >= 1.0,
            "{reason}\n{metrics}"
        );
    }
    assert!(common::metric_sum(&metrics, "cdc_invalidator_lookup_seconds_count", &[]) >= 3.0);
    drop(daemon);
    common::sql(&pool, &format!("DROP TABLE {products}; DROP TABLE {categories};")).await;
}

/// Whether a fan-out query of `children` is running in PostgreSQL now.
async fn lookup_running(pool: &sqlx::PgPool, children: &str) -> bool {
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep%' AND query LIKE $1",
    )
    .bind(format!("%{children}%"))
    .fetch_one(pool)
    .await
    .unwrap();
    running > 0
}

#[tokio::test]
async fn a_slow_lookup_holds_up_only_its_own_partition() {
    let parents = common::unique("sparent");
    let children = common::unique("schild");
    let plain = common::unique("splain");
    let pool = common::pg().await;
    // The lookup sleeps only for a parent named 'slow': the first changes
    // resolve at once, so the daemon is known to be caught up before it.
    common::sql(
        &pool,
        &format!(
            "CREATE TABLE {parents} (id integer PRIMARY KEY, name text NOT NULL);
             ALTER TABLE {parents} REPLICA IDENTITY FULL;
             CREATE TABLE {children} (id integer PRIMARY KEY, parent_id integer NOT NULL);
             CREATE TABLE {plain} (id integer PRIMARY KEY, name text NOT NULL);
             INSERT INTO {children} VALUES (11, 1);
             INSERT INTO {parents} VALUES (1, 'quick');
             INSERT INTO {plain} VALUES (1, 'x');"
        ),
    )
    .await;
    let topics = [
        format!("{}.public.{parents}", common::topic_prefix()),
        format!("{}.public.{plain}", common::topic_prefix()),
    ];
    common::chain::wait_for_topics(&topics).await;
    let prefix = format!("{}:", common::unique("ver"));
    let extra = format!(
        r#"
[lookup]
url = "{pg}"
timeout = "60s"
attempts = 1
[[entity]]
table = "public.{parents}"
replica_identity = "full"
consistency = "strong"
keys = ["parent:{{id}}"]
  [[entity.fanout]]
  query = "SELECT id FROM {children} WHERE parent_id = $1 AND (SELECT true FROM pg_sleep(CASE WHEN $2 = 'slow' THEN 20 ELSE 0 END))"
  bind = ["id", "name"]
  keys = ["child:{{id}}"]
  max_rows = 10
[[entity]]
table = "public.{plain}"
consistency = "strong"
keys = ["plain:{{id}}"]
"#,
        pg = common::pg_url()
    );
    let cfg = common::write_config_for(&topics, &common::redis_url(), &prefix, &common::unique("group"), &extra);
    let daemon = Daemon::start(cfg.path());
    daemon.wait_ready().await;
    let mut conn = common::redis_conn().await;
    for key in ["parent:1", "child:11", "plain:1"] {
        let key = format!("{prefix}{key}");
        eventually(&format!("{key} to be bumped"), Duration::from_secs(60), || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move { (version(&mut conn, &key).await > 0).then_some(()) }
        })
        .await;
    }
    let child_before = version(&mut conn, &format!("{prefix}child:11")).await;
    let plain_before = version(&mut conn, &format!("{prefix}plain:1")).await;

    common::sql(&pool, &format!("UPDATE {parents} SET name = 'slow' WHERE id = 1")).await;
    eventually("the slow lookup to run", Duration::from_secs(60), || {
        let (pool, children) = (pool.clone(), children.clone());
        async move { lookup_running(&pool, &children).await.then_some(()) }
    })
    .await;
    // The daemon took the parent's change and waits on its lookup: a change
    // of another table is applied meanwhile.
    common::sql(&pool, &format!("UPDATE {plain} SET name = 'y' WHERE id = 1")).await;
    eventually("plain:1 to move during the lookup", Duration::from_secs(15), || {
        let mut conn = conn.clone();
        let key = format!("{prefix}plain:1");
        async move { (version(&mut conn, &key).await > plain_before).then_some(()) }
    })
    .await;
    assert!(
        lookup_running(&pool, &children).await,
        "plain:1 must move while the lookup still runs"
    );
    assert_eq!(
        version(&mut conn, &format!("{prefix}child:11")).await,
        child_before,
        "the parent's children wait for their lookup"
    );
    // Then the lookup ends and its children are bumped.
    eventually("child:11 to move after the lookup", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        let key = format!("{prefix}child:11");
        async move { (version(&mut conn, &key).await > child_before).then_some(()) }
    })
    .await;
    drop(daemon);
    common::sql(
        &pool,
        &format!("DROP TABLE {parents}; DROP TABLE {children}; DROP TABLE {plain};"),
    )
    .await;
}
