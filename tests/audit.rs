//! The auditor catches changes that never reached Redis: the daemon runs for
//! one topic only, the auditor watches both.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Daemon;
use serde_json::json;

#[tokio::test]
async fn auditor_flags_exactly_the_topic_the_daemon_does_not_serve() {
    let served = common::unique("served");
    let unserved = common::unique("unserved");
    let topic = |t: &str| format!("{}.public.{t}", common::topic_prefix());
    let prefix = format!("{}:", common::unique("ver"));
    let entities = format!(
        "[[entity]]\ntable = \"public.{served}\"\nnamespace = \"s\"\nconsistency = \"strong\"\nkeys = [\"s:{{id}}\"]\n\
         [[entity]]\ntable = \"public.{unserved}\"\nnamespace = \"u\"\nconsistency = \"strong\"\nkeys = [\"u:{{id}}\"]\n"
    );
    // Create both topics before anyone subscribes.
    let now = common::now_us();
    for t in [&served, &unserved] {
        common::produce_many(
            &topic(t),
            std::iter::once(common::debezium_change(t, "c", 1, 0, json!({"id": 0}), now)),
        )
        .await;
    }
    let admin_port = common::free_port();
    let daemon_cfg = common::write_config(&topic(&served), &common::redis_url(), &prefix, admin_port, &entities);
    let daemon = Daemon::start(daemon_cfg.path(), admin_port);
    daemon.wait_ready().await;

    // The auditor's config names both topics.
    let audit_cfg = common::write_config(
        &topic(&served),
        &common::redis_url(),
        &prefix,
        common::free_port(),
        &entities,
    );
    let text = std::fs::read_to_string(audit_cfg.path()).unwrap().replace(
        &format!("topics = [\"{}\"]", topic(&served)),
        &format!("topics = [\"{}\", \"{}\"]", topic(&served), topic(&unserved)),
    );
    std::fs::write(audit_cfg.path(), text).unwrap();
    let audit_port = common::free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let auditor = common::cli()
        .args([
            "audit",
            "--config",
            audit_cfg.path().to_str().unwrap(),
            "--slo",
            "2s",
            "--duration",
            "12s",
        ])
        .args(["--listen", &format!("127.0.0.1:{audit_port}")])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log.path()).unwrap())
        .spawn()
        .unwrap();
    // Let the auditor join and get its partitions before the changes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for round in 1..=10i64 {
        let now = common::now_us();
        for t in [&served, &unserved] {
            common::produce_many(
                &topic(t),
                std::iter::once(common::debezium_change(
                    t,
                    "u",
                    10 + round as u64,
                    round,
                    json!({"id": round}),
                    now,
                )),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let metrics = common::http_get(&format!("127.0.0.1:{audit_port}"), "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let output = tokio::task::spawn_blocking(move || auditor.wait_with_output().unwrap())
        .await
        .unwrap();
    let summary = String::from_utf8_lossy(&output.stdout).to_string();
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "violations make the exit code 1\n{summary}\n{log}"
    );
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("violation: ")).collect();
    assert_eq!(
        violations.len(),
        10,
        "one violation per unserved change\n{summary}\n{log}"
    );
    assert!(
        violations.iter().all(|l| l.contains(&unserved) && !l.contains(&served)),
        "{log}"
    );
    assert!(summary.contains("20 checks, 10 violations"), "{summary}");
    assert!(summary.contains("0 nines within 2 seconds"), "{summary}");
    assert!(metrics.contains("cdc_invalidator_audit_checks_total"), "{metrics}");
    drop(daemon);
}
