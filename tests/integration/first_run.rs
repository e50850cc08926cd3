//! What a new user meets first: `check` telling the truth about dead letters
//! (the table must exist; no publication may capture it), a taken admin
//! port failing the start, and a `topic_regex` subscription that `run`
//! really subscribes with, picking up a topic created after start.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{eventually, Daemon};
use serde_json::json;

fn cli_output(args: &[&str], config: &std::path::Path) -> (bool, String) {
    let out = common::cli()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run cdc-invalidator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn lines_starting<'a>(text: &'a str, start: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(start)).collect()
}

#[tokio::test]
async fn check_requires_the_dead_letter_table_and_refuses_a_published_one() {
    let pool = common::pg().await;
    // A topic that exists but whose table has no [[entity]]: check names the table.
    let table = common::unique("orphan");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    common::produce(&topic, &[(None, None)]).await;
    let (dl_url, schema) = common::dead_letter_url(&common::pg_address());
    let extra = format!(
        "[dead_letters]\nurl = \"{dl_url}\"\nschema = \"{schema}\"\n\
         [[entity]]\ntable = \"public.someone_else\"\nkeys = [\"x:{{id}}\"]\n"
    );
    let cfg = common::write_config(&topic, &common::redis_url(), "ver:", &extra);

    // Not migrated: the table is missing and check says how to make it.
    let (ok, out) = cli_output(&["check"], cfg.path());
    assert!(!ok, "{out}");
    let missing = lines_starting(&out, "FAIL  dead letters: no table");
    assert_eq!(missing.len(), 1, "{out}");
    assert!(missing[0].contains(&format!("{schema}.cdc_dead_letters")), "{out}");
    assert!(missing[0].contains("cdc-invalidator migrate"), "{out}");
    assert!(
        out.contains(&format!("note  topic {topic}: no [[entity]] for table public.{table};")),
        "{out}"
    );
    assert!(!out.contains("Some("), "{out}");

    // Migrated, and no publication covers the schema: the dead-letter lines pass.
    let (ok, out) = cli_output(&["migrate"], cfg.path());
    assert!(ok, "{out}");
    let (_, out) = cli_output(&["check"], cfg.path());
    assert!(lines_starting(&out, "FAIL  dead letters").is_empty(), "{out}");
    assert!(
        out.contains(&format!(
            "ok    dead letters: no publication captures {schema}.cdc_dead_letters"
        )),
        "{out}"
    );

    // A publication of the dead-letter schema is a failure with the fix in it.
    let publication = common::unique("pub");
    let admin = common::pg_admin().await;
    common::sql(
        &admin,
        &format!("CREATE PUBLICATION {publication} FOR TABLES IN SCHEMA {schema}"),
    )
    .await;
    let (ok, out) = cli_output(&["check"], cfg.path());
    common::sql(&admin, &format!("DROP PUBLICATION {publication}")).await;
    common::sql(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await;
    assert!(!ok, "{out}");
    let captured = lines_starting(&out, "FAIL  dead letters:");
    assert_eq!(captured.len(), 1, "{out}");
    assert!(
        captured[0].contains(&format!("captured by publication {publication}")),
        "{out}"
    );
    assert!(
        captured[0].contains("FOR TABLES IN SCHEMA"),
        "the fix is in the message: {out}"
    );
}

#[tokio::test]
async fn the_stack_publication_leaves_the_default_dead_letter_schema_out() {
    // The stack's own publication (scripts/stack) is what the demo relies on.
    let admin = common::pg_admin().await;
    let (all_tables, schemas): (bool, Vec<String>) = sqlx::query_as(
        "SELECT p.puballtables, coalesce(array_agg(n.nspname::text) FILTER (WHERE n.nspname IS NOT NULL), '{}')
         FROM pg_publication p LEFT JOIN pg_publication_namespace pn ON pn.pnpubid = p.oid
         LEFT JOIN pg_namespace n ON n.oid = pn.pnnspid
         WHERE p.pubname = 'cdc_invalidator' GROUP BY p.puballtables",
    )
    .fetch_one(&admin)
    .await
    .expect("the stack's publication cdc_invalidator exists");
    assert!(!all_tables, "FOR ALL TABLES would capture the dead letters");
    assert_eq!(schemas, vec!["public".to_owned()]);
}

#[tokio::test]
async fn a_taken_admin_port_fails_the_start_and_names_it() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let topic = format!("{}.public.{}", common::topic_prefix(), common::unique("port"));
    let cfg = common::write_config(
        &topic,
        &common::redis_url(),
        "ver:",
        "[[entity]]\ntable = \"public.x\"\nkeys = [\"x:{id}\"]\n",
    );
    let text = std::fs::read_to_string(cfg.path()).unwrap();
    std::fs::write(
        cfg.path(),
        text.replace("127.0.0.1:0\"", &format!("127.0.0.1:{port}\"")),
    )
    .unwrap();
    let mut daemon = Daemon::start(cfg.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon kept running without its admin port\n{}",
            daemon.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "{status:?}");
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains(&format!("cannot listen on admin address 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("(pid {}))", std::process::id())),
        "the holder is this test process: {log}"
    );
    drop(holder);
}

#[tokio::test]
async fn a_regex_subscription_receives_a_topic_created_after_start() {
    let topic_prefix = common::unique("rx");
    let table = "items";
    let topic = format!("{topic_prefix}.public.{table}");
    let prefix = format!("{}:", common::unique("ver"));
    let cfg = common::write_config(
        &topic,
        &common::redis_url(),
        &prefix,
        "[[entity]]\ntable = \"public.items\"\nconsistency = \"strong\"\nkeys = [\"item:{id}\"]\n",
    );
    let text = std::fs::read_to_string(cfg.path()).unwrap().replace(
        &format!("topics = [\"{topic}\"]"),
        &format!("topic_regex = \"{topic_prefix}\\\\.public\\\\..*\""),
    );
    std::fs::write(cfg.path(), text).unwrap();

    let (ok, out) = cli_output(&["check"], cfg.path());
    assert!(!ok, "no topic matches yet: {out}");
    assert!(out.contains("matches no topic"), "{out}");

    let daemon = Daemon::start(cfg.path());
    // Redis connected (set once the subscription is made) and the only thing
    // missing is a partition: the topic does not exist yet.
    eventually("the daemon to subscribe", Duration::from_secs(30), || {
        let admin = daemon.admin.clone();
        async move {
            let (code, body) = common::http_get(&admin, "/readyz").await?;
            (code == 503 && body.contains("no partitions assigned") && !body.contains("redis")).then_some(())
        }
    })
    .await;
    let (key, value) = common::debezium_change(table, "c", 100, 42, json!({"id": 42}), common::now_us());
    common::produce(&topic, &[(key, value)]).await;
    common::wait_for_version_record(
        &common::redis_conn().await,
        "the record of the new topic to bump its key",
        &format!("{prefix}item:42"),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        daemon.log_tail().contains("partitions assigned"),
        "{}",
        daemon.log_tail()
    );

    // check now finds the topic through the same engine run used.
    let (_, out) = cli_output(&["check"], cfg.path());
    assert!(
        out.contains(&format!("ok    topic {topic} -> entity public.items")),
        "{out}"
    );
}

/// Each cause is printed once, by `check` and by `run` alike.
#[test]
fn a_missing_config_file_is_reported_once() {
    for command in ["check", "run"] {
        let out = common::cli()
            .args([command, "--config", "/nonexistent/cdc.toml"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{command}: {text}");
        assert!(text.contains("/nonexistent/cdc.toml"), "{command}: {text}");
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{command}: {text}"
        );
    }
}
