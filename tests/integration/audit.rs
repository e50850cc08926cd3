//! The auditor catches changes that never reached Redis (the daemon runs for
//! one topic only, the auditor watches both: lost), tells them from changes
//! that arrived after the SLO (late) and from changes an epoch or namespace
//! move covers (covered), and keeps running through a Redis outage.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use crate::common::{Daemon, PrivateRedis};
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
    let daemon_cfg = common::write_config(&topic(&served), &common::redis_url(), &prefix, &entities);
    let daemon = Daemon::start(daemon_cfg.path());
    daemon.wait_ready().await;

    // The auditor's config names both topics.
    let audit_cfg = common::write_config(&topic(&served), &common::redis_url(), &prefix, &entities);
    let text = std::fs::read_to_string(audit_cfg.path()).unwrap().replace(
        &format!("topics = [\"{}\"]", topic(&served)),
        &format!("topics = [\"{}\", \"{}\"]", topic(&served), topic(&unserved)),
    );
    std::fs::write(audit_cfg.path(), text).unwrap();
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
            "--recheck-after",
            "3s",
        ])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log.path()).unwrap())
        .spawn()
        .unwrap();
    let audit_address = common::wait_for_bound_address(log.path());
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
                    10 + u64::try_from(round).unwrap(),
                    round,
                    json!({"id": round}),
                    now,
                )),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let metrics = common::http_get(&audit_address, "/metrics")
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
    assert!(
        summary.contains(
            "20 checks, 0 covered by the epoch or a namespace in time, 10 violations: 0 late, 0 covered, 10 lost"
        ),
        "{summary}"
    );
    assert_eq!(log.lines().filter(|l| l.contains("lost: ")).count(), 10, "{log}");
    assert!(summary.contains("0 nines within 2 seconds"), "{summary}");
    assert!(metrics.contains("cdc_invalidator_audit_checks_total"), "{metrics}");
    // Exported from the start, at 0 until the first one.
    assert!(
        metrics.lines().any(|l| l == "cdc_invalidator_audit_covered_total 0"),
        "{metrics}"
    );
    drop(daemon);
}

#[tokio::test]
async fn a_change_applied_after_the_slo_is_late_and_a_redis_outage_is_a_gap() {
    let table = common::unique("late");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let redis = PrivateRedis::start_ready().await;
    let entity =
        format!("[[entity]]\ntable = \"public.{table}\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\"]\n");
    let change = |id: i64| {
        common::debezium_change(
            &table,
            "c",
            10 + u64::try_from(id).unwrap(),
            id,
            json!({"id": id}),
            common::now_us(),
        )
    };
    common::produce(&topic, &[change(0)]).await; // the topic exists before anyone subscribes
                                                 // An epoch record exists, so the daemon's first contact adopts it rather
                                                 // than advancing it: an advance would cover the changes (a reader folding
                                                 // the epoch sees no stale value), and this test is about late ones.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("ver:epoch")
        .arg("e")
        .arg(common::now_us())
        .query_async(&mut conn)
        .await
        .unwrap();
    let audit_cfg = common::write_config(&topic, &redis.url(), "ver:", &entity);
    let log = tempfile::NamedTempFile::new().unwrap();
    let auditor = common::cli()
        .args(["audit", "--config", audit_cfg.path().to_str().unwrap()])
        .args(["--slo", "2s", "--duration", "10s", "--recheck-after", "8s"])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log.path()).unwrap())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Three changes, no daemon yet; Redis frozen while their SLO passes.
    common::produce(&topic, &[change(1), change(2), change(3)]).await;
    redis.signal("-STOP");
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis.signal("-CONT");
    // The daemon comes after the SLO and before the recheck.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let daemon_cfg = common::write_config(&topic, &redis.url(), "ver:", &entity);
    let daemon = Daemon::start(daemon_cfg.path());

    let output = tokio::task::spawn_blocking(move || auditor.wait_with_output().unwrap())
        .await
        .unwrap();
    drop(daemon);
    let summary = String::from_utf8_lossy(&output.stdout).to_string();
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(output.status.code(), Some(1), "{summary}\n{log}");
    // The first change's check met the frozen Redis (a gap, retried): it is
    // a third violation if the retry came before the daemon applied it, a
    // pass if after. Either way nothing is covered or lost.
    let prefix = "3 checks, 0 covered by the epoch or a namespace in time, ";
    assert!(
        summary.contains(&format!("{prefix}3 violations: 3 late, 0 covered, 0 lost"))
            || summary.contains(&format!("{prefix}2 violations: 2 late, 0 covered, 0 lost")),
        "{summary}\n{log}"
    );
    assert!(
        log.contains("redis not readable; checking again shortly"),
        "the outage was a gap: {log}"
    );
}

/// Changes no daemon applies (violations), rechecked after the epoch or the
/// entity's namespace moved: covered, not lost, as a reader folding them
/// sees it. A change nothing moved for stays lost.
#[tokio::test]
async fn changes_an_epoch_or_namespace_move_covers_are_not_lost() {
    let covered = common::unique("covered");
    let other = common::unique("other");
    let topic = |t: &str| format!("{}.public.{t}", common::topic_prefix());
    let prefix = format!("{}:", common::unique("ver"));
    let entities = format!(
        "[[entity]]\ntable = \"public.{covered}\"\nnamespace = \"a\"\nconsistency = \"strong\"\nkeys = [\"a:{{id}}\"]\n\
         [[entity]]\ntable = \"public.{other}\"\nnamespace = \"b\"\nconsistency = \"strong\"\nkeys = [\"b:{{id}}\"]\n"
    );
    let change = |t: &str, id: i64| {
        common::debezium_change(
            t,
            "u",
            10 + u64::try_from(id).unwrap(),
            id,
            json!({"id": id}),
            common::now_us(),
        )
    };
    for t in [&covered, &other] {
        common::produce(&topic(t), &[change(t, 0)]).await; // the topics exist before anyone subscribes
    }
    let cfg = common::write_config(&topic(&covered), &common::redis_url(), &prefix, &entities);
    let text = std::fs::read_to_string(cfg.path()).unwrap().replace(
        &format!("topics = [\"{}\"]", topic(&covered)),
        &format!("topics = [\"{}\", \"{}\"]", topic(&covered), topic(&other)),
    );
    std::fs::write(cfg.path(), text).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let auditor = common::cli()
        .args(["audit", "--config", cfg.path().to_str().unwrap()])
        .args(["--slo", "2s", "--duration", "18s", "--recheck-after", "3s"])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log.path()).unwrap())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut conn = common::redis_conn().await;
    let log_path = log.path().to_owned();
    let violations_logged = |n: usize| {
        let log_path = log_path.clone();
        move || {
            let log_path = log_path.clone();
            async move {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                (log.lines().filter(|l| l.contains("violation: ")).count() >= n).then_some(())
            }
        }
    };

    // One change of each entity; once both are violations (so the auditor
    // read its baselines long before), namespace a moves.
    common::produce(&topic(&covered), &[change(&covered, 1)]).await;
    common::produce(&topic(&other), &[change(&other, 1)]).await;
    common::eventually("two violations", Duration::from_secs(15), violations_logged(2)).await;
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}ns:a"))
        .arg("v")
        .arg(common::now_us())
        .query_async(&mut conn)
        .await
        .unwrap();
    common::eventually("the first two rechecks", Duration::from_secs(15), || {
        let log_path = log_path.clone();
        async move {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            (log.contains("lost: ") && log.contains("covered: ")).then_some(())
        }
    })
    .await;
    // One more of each; then the epoch moves, which covers both.
    common::produce(&topic(&covered), &[change(&covered, 2)]).await;
    common::produce(&topic(&other), &[change(&other, 2)]).await;
    common::eventually("four violations", Duration::from_secs(15), violations_logged(4)).await;
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}epoch"))
        .arg("e")
        .arg(common::now_us())
        .query_async(&mut conn)
        .await
        .unwrap();

    let output = tokio::task::spawn_blocking(move || auditor.wait_with_output().unwrap())
        .await
        .unwrap();
    let summary = String::from_utf8_lossy(&output.stdout).to_string();
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        summary.contains(
            "4 checks, 0 covered by the epoch or a namespace in time, 4 violations: 0 late, 3 covered, 1 lost"
        ),
        "{summary}\n{log}"
    );
    let lost: Vec<&str> = log.lines().filter(|l| l.contains("lost: ")).collect();
    assert_eq!(lost.len(), 1, "{log}");
    assert!(lost[0].contains(&other), "the change nothing covered: {log}");
    assert_eq!(log.lines().filter(|l| l.contains("covered: ")).count(), 3, "{log}");
}
