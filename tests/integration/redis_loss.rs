//! Redis losing acknowledged writes (docs/redis-loss.md): a restart from an
//! older snapshot, FLUSHALL and evictions are detected and answered by an
//! epoch and namespace bump; a restart that lost nothing is not a loss.
//! Every test runs its own redis-server.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{eventually, Daemon, PrivateRedis};
use serde_json::json;

struct Setup {
    topic: String,
    table: String,
    cfg: tempfile::NamedTempFile,
}

fn setup(redis: &PrivateRedis) -> Setup {
    let table = common::unique("loss");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let entity = format!(
        "[[entity]]\ntable = \"public.{table}\"\nnamespace = \"item\"\nconsistency = \"strong\"\nmax_cache_ttl = \"10m\"\nkeys = [\"item:{{id}}\"]\n"
    );
    let cfg = common::write_config(&topic, &redis.url(), "ver:", &entity);
    Setup { topic, table, cfg }
}

async fn hget(url: &str, key: &str, field: &str) -> Option<u64> {
    let mut conn = redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    let v: Option<String> = redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(&mut conn)
        .await
        .ok()?;
    v?.parse().ok()
}

async fn command(url: &str, args: &[&str]) -> redis::Value {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// Produces one change of row `id` at `lsn` and waits until its version exceeds `above`.
async fn change(s: &Setup, redis: &PrivateRedis, id: i64, lsn: u64, above: u64) -> u64 {
    common::produce(
        &s.topic,
        &[common::debezium_change(
            &s.table,
            "u",
            lsn,
            id,
            json!({"id": id}),
            common::now_us(),
        )],
    )
    .await;
    let url = redis.url();
    eventually("the change to be applied", Duration::from_secs(60), || {
        let url = url.clone();
        async move { hget(&url, &format!("ver:item:{id}"), "v").await.filter(|v| *v > above) }
    })
    .await
}

async fn loss_count(daemon: &Daemon, reason: &str) -> f64 {
    common::metric_sum(
        &daemon.metrics().await,
        "cdc_invalidator_redis_data_loss_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

/// Waits until the epoch differs from `before` and returns it.
async fn epoch_after(url: &str, before: u64) -> u64 {
    eventually("the epoch to advance", Duration::from_secs(30), || async move {
        hget(url, "ver:epoch", "e").await.filter(|e| *e > before)
    })
    .await
}

/// Waits until the loss counter for `reason` is above `above`.
async fn wait_for_loss(daemon: &Daemon, what: &str, reason: &str, above: f64) {
    eventually(what, Duration::from_secs(10), || async move {
        (loss_count(daemon, reason).await > above).then_some(())
    })
    .await;
}

/// The daemon logged the loss as an error.
fn assert_loss_logged(daemon: &Daemon) {
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("redis lost acknowledged writes")),
        "{}",
        daemon.log_tail()
    );
}

/// A private redis-server without persistence, with `extra` arguments.
async fn redis_without_persistence(extra: &[&str]) -> PrivateRedis {
    let mut args = vec!["--save", "", "--appendonly", "no"];
    args.extend_from_slice(extra);
    PrivateRedis::start_ready_with(&args).await
}

/// A daemon on `redis` that applied a first change of row 1.
struct Running {
    /// Holds the config file: bind it (`s: _config`) while the daemon runs.
    s: Setup,
    daemon: Daemon,
    /// Row 1's version after the first change.
    v1: u64,
    /// The epoch created at the daemon's first contact with this Redis.
    e0: u64,
}

async fn start_and_apply_a_first_change(redis: &PrivateRedis) -> Running {
    let s = setup(redis);
    let daemon = Daemon::start(s.cfg.path());
    let v1 = change(&s, redis, 1, 10, 0).await;
    // First contact with a new Redis: no epoch record yet, created now.
    let e0 = epoch_after(&redis.url(), 0).await;
    Running { s, daemon, v1, e0 }
}

#[tokio::test]
async fn restart_from_an_older_snapshot_bumps_epoch_and_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let dir_text = dir.path().to_str().unwrap().to_owned();
    let mut redis = redis_without_persistence(&["--dir", &dir_text, "--dbfilename", "dump.rdb"]).await;
    let Running { s, daemon, v1, e0 } = start_and_apply_a_first_change(&redis).await;
    let ns0 = hget(&redis.url(), "ver:ns:item", "v")
        .await
        .expect("namespace bumped at first use");

    command(&redis.url(), &["SAVE"]).await;
    let v2 = change(&s, &redis, 1, 20, v1).await;
    // Let a periodic check see the record after the second change too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.crash_and_restart().await;

    let e1 = epoch_after(&redis.url(), e0).await;
    wait_for_loss(&daemon, "the loss to be counted", "rolled_back", 0.0).await;
    // The snapshot really lost the second change: the version went back.
    assert_eq!(hget(&redis.url(), "ver:item:1", "v").await, Some(v1), "v2 was {v2}");
    let ns1 = hget(&redis.url(), "ver:ns:item", "v").await.unwrap();
    assert!(ns1 > ns0, "namespace {ns0} -> {ns1}");
    assert!(e1 > e0);
    assert_loss_logged(&daemon);
    // Applying goes on after the recovery.
    change(&s, &redis, 1, 30, v1).await;
}

/// Writes 8,000 keys of 1 KiB under `prefix` (with `EX ttl_s` when given)
/// into a Redis with a small maxmemory, so that it evicts; returns INFO's
/// evicted_keys afterwards.
async fn fill_memory(url: &str, prefix: &str, ttl_s: Option<u64>) -> u64 {
    let filler = "x".repeat(1024);
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for i in 0..8000 {
        let mut set = redis::cmd("SET");
        set.arg(format!("{prefix}:{i}")).arg(&filler);
        if let Some(ttl) = ttl_s {
            set.arg("EX").arg(ttl);
        }
        let _: redis::RedisResult<()> = set.query_async(&mut conn).await;
    }
    let info: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap()
}

#[tokio::test]
async fn flushall_and_evictions_are_losses() {
    let mut redis = redis_without_persistence(&["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-random"]).await;
    let Running {
        s: _config, daemon, e0, ..
    } = start_and_apply_a_first_change(&redis).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let missing_before = loss_count(&daemon, "missing").await;

    command(&redis.url(), &["FLUSHALL"]).await;
    let e1 = epoch_after(&redis.url(), e0).await;
    wait_for_loss(&daemon, "FLUSHALL to be counted", "missing", missing_before).await;
    assert_loss_logged(&daemon);

    // Fill memory past maxmemory with data keys: Redis evicts. allkeys-random
    // may evict the epoch record itself: the daemon then finds it missing
    // before it reads the eviction count. Either is the loss.
    let missing_after_flush = loss_count(&daemon, "missing").await;
    let evicted = fill_memory(&redis.url(), "data", None).await;
    assert!(evicted > 0, "nothing was evicted");
    epoch_after(&redis.url(), e1).await;
    eventually("the eviction to be counted", Duration::from_secs(10), || {
        let daemon = &daemon;
        async move {
            let evicted = loss_count(daemon, "evicted").await >= 1.0;
            let record_evicted = loss_count(daemon, "missing").await > missing_after_flush;
            (evicted || record_evicted).then_some(())
        }
    })
    .await;
    drop(daemon);
    let _ = &mut redis;
}

#[tokio::test]
async fn a_restart_that_lost_nothing_is_not_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let dir_text = dir.path().to_str().unwrap().to_owned();
    let mut redis = PrivateRedis::start_ready_with(&[
        "--dir",
        &dir_text,
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ])
    .await;
    let Running { s, daemon, v1, e0 } = start_and_apply_a_first_change(&redis).await;
    // The first use counts once as "missing"; nothing may be added after it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let total = |text: String| common::metric_sum(&text, "cdc_invalidator_redis_data_loss_total", &[]);
    let metrics = daemon.metrics().await;
    let before = total(metrics.clone());
    assert_eq!(before, 1.0, "first use counts once");
    // The other reasons, and counters nothing incremented yet, are exported at 0.
    for series in [
        "cdc_invalidator_redis_data_loss_total{reason=\"evicted\"} 0",
        "cdc_invalidator_redis_errors_total{kind=\"replicas\"} 0",
        "cdc_invalidator_escalations_total{reason=\"lookup_failed\"} 0",
        "cdc_invalidator_moot_events_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} missing:\n{metrics}");
    }

    redis.crash_and_restart().await;
    let v2 = change(&s, &redis, 1, 20, v1).await;
    // Several periodic checks (1 s) across the reconnect.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(hget(&redis.url(), "ver:epoch", "e").await, Some(e0));
    assert_eq!(total(daemon.metrics().await), before, "{}", daemon.log_tail());
    assert!(v2 > v1);
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("new run_id"),
        "the restart was seen: {}",
        daemon.log_tail()
    );
}

/// A rough figure, printed, not asserted: the cost of the watermark check
/// riding in each batch's pipeline.
#[tokio::test]
async fn epoch_check_cost() {
    use cdc_invalidator::event::Position;
    use cdc_invalidator::graph::Target;
    use cdc_invalidator::plan::Bump;
    use cdc_invalidator::sink::RedisSink;
    let redis = PrivateRedis::start_ready().await;
    let settings = common::sink_settings(&redis.url(), "ver:", Duration::from_secs(600));
    const BATCHES: u64 = 2000;
    for batch_size in [1u64, 100] {
        let mut figures = Vec::new();
        for detect in [false, true] {
            let mut sink = RedisSink::connect(&settings).await.unwrap();
            if detect {
                sink.enable_loss_detection();
                // The first sink meets a new Redis (no epoch record), the next one does not.
                if let Some(reason) = sink.check_loss().await.unwrap() {
                    assert_eq!(reason.label(), "missing");
                    sink.recover(&[]).await.unwrap();
                }
                assert_eq!(sink.check_loss().await.unwrap(), None);
            }
            let started = Instant::now();
            for n in 0..BATCHES {
                let bumps: Vec<Bump> = (0..batch_size)
                    .map(|k| Bump {
                        target: Target::Key(format!("bench:{batch_size}:{detect}:{k}")),
                        position: Position::kafka("t", 0, i64::try_from(n * batch_size + k).unwrap()),
                        commit_time_us: None,
                    })
                    .collect();
                let results = sink.apply(&bumps).await.unwrap();
                assert!(results.iter().all(|r| r.applied()));
                assert_eq!(sink.take_loss(), None);
            }
            figures.push(started.elapsed().as_secs_f64() * 1e6 / BATCHES as f64);
        }
        eprintln!(
            "batches of {batch_size} bump(s): {:.1} us per batch without the epoch check, {:.1} us with it",
            figures[0], figures[1]
        );
    }
}

/// Adds settings to the `[redis]` section of a config `write_config` wrote.
fn redis_settings(cfg: &tempfile::NamedTempFile, lines: &str) {
    let text = std::fs::read_to_string(cfg.path()).unwrap();
    let text = text.replacen("[redis]\n", &format!("[redis]\n{lines}\n"), 1);
    std::fs::write(cfg.path(), text).unwrap();
}

/// A Redis that also holds the cached data under an evicting policy: with
/// eviction notifications on, evicted data keys are not a loss, and an
/// evicted version record still is.
#[tokio::test]
async fn only_evicted_version_records_are_a_loss_when_evictions_are_notified() {
    let redis = redis_without_persistence(&[
        "--maxmemory",
        "4mb",
        // Shortest TTL first: data keys with a shorter TTL than the version
        // records (1h) go first, deterministically.
        "--maxmemory-policy",
        "volatile-ttl",
        "--notify-keyspace-events",
        "Ee",
    ])
    .await;
    let Running {
        s: _config, daemon, e0, ..
    } = start_and_apply_a_first_change(&redis).await;
    let evicted = fill_memory(&redis.url(), "data", Some(60)).await;
    assert!(evicted > 100, "the fill should evict data keys, evicted {evicted}");
    // Several loss checks (1 s apart) see the evictions.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(loss_count(&daemon, "evicted").await, 0.0, "{}", daemon.log_tail());
    assert_eq!(hget(&redis.url(), "ver:epoch", "e").await, Some(e0));
    assert!(hget(&redis.url(), "ver:item:1", "v").await.is_some());

    // Data keys that outlive the version records: now those go first.
    fill_memory(&redis.url(), "long", Some(86_400)).await;
    assert_eq!(
        hget(&redis.url(), "ver:item:1", "v").await,
        None,
        "the version record should be evicted"
    );
    epoch_after(&redis.url(), e0).await;
    wait_for_loss(&daemon, "the version record's eviction to be counted", "evicted", 0.0).await;
}

/// `redis.wait_replicas`: a batch whose bumps no replica acknowledged is not
/// acknowledged to Kafka; consumption pauses and readiness says why, until
/// the replica catches up.
#[tokio::test]
async fn offsets_wait_for_the_replica_when_wait_replicas_is_set() {
    let primary = PrivateRedis::start_ready().await;
    let replica_port = common::free_port();
    let replica = PrivateRedis::ready(PrivateRedis::start_with(
        replica_port,
        &[
            "--save",
            "",
            "--appendonly",
            "no",
            "--replicaof",
            "127.0.0.1",
            &primary.port.to_string(),
        ],
    ))
    .await;
    eventually("the replica to sync", Duration::from_secs(20), || {
        let url = primary.url();
        async move {
            let info = match command(&url, &["INFO", "replication"]).await {
                redis::Value::BulkString(b) => String::from_utf8(b).ok()?,
                redis::Value::VerbatimString { text, .. } => text,
                _ => return None,
            };
            info.contains("connected_slaves:1").then_some(())
        }
    })
    .await;
    let s = setup(&primary);
    redis_settings(&s.cfg, "wait_replicas = 1\nwait_timeout = \"200ms\"");
    let group = common::group_of(s.cfg.path());
    let daemon = Daemon::start(s.cfg.path());
    let v1 = change(&s, &primary, 1, 10, 0).await;
    // Its replica has it too: the daemon waited for it.
    assert_eq!(hget(&replica.url(), "ver:item:1", "v").await, Some(v1));

    let committed_before = eventually(
        "the first change's offset to be committed",
        Duration::from_secs(20),
        || {
            let (group, topic) = (group.clone(), s.topic.clone());
            async move {
                common::committed_offset(&group, &topic, 0)
                    .filter(|o| *o >= 1)
                    .map(Some)
            }
        },
    )
    .await;

    replica.signal("-STOP");
    // Applied on the primary (bumps are idempotent, so retrying is safe)...
    let v2 = change(&s, &primary, 1, 20, v1).await;
    eventually(
        "readiness to report the replica shortfall",
        Duration::from_secs(15),
        || {
            let daemon = &daemon;
            async move {
                let (status, body) = common::http_get(&daemon.admin, "/readyz").await?;
                (status == 503 && body.contains("replicas")).then_some(())
            }
        },
    )
    .await;
    // ...but not acknowledged while no replica has it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(common::committed_offset(&group, &s.topic, 0), committed_before);
    assert!(
        common::metric_sum(
            &daemon.metrics().await,
            "cdc_invalidator_redis_errors_total",
            &["kind=\"replicas\""]
        ) >= 1.0
    );

    replica.signal("-CONT");
    eventually(
        "the offset to be committed once the replica has the batch",
        Duration::from_secs(30),
        || {
            let group = group.clone();
            let topic = s.topic.clone();
            let before = committed_before;
            async move {
                let now = common::committed_offset(&group, &topic, 0);
                (now > before).then_some(())
            }
        },
    )
    .await;
    assert_eq!(hget(&replica.url(), "ver:item:1", "v").await, Some(v2));
}

/// Every version record of `namespaces` under `prefix`: (v, p:loss).
async fn namespace_records(url: &str, prefix: &str, namespaces: &[String]) -> Vec<(Option<u64>, Option<u64>)> {
    let mut out = Vec::new();
    for ns in namespaces {
        let record = format!("{prefix}ns:{ns}");
        out.push((hget(url, &record, "v").await, hget(url, &record, "p:loss").await));
    }
    out
}

/// Three replicas' sinks on one Redis (the stack's, or CDC_REDIS_URL; a
/// prefix of their own). Each detects the same loss; recovering
/// concurrently, they advance the epoch once between them, and every
/// namespace carries that epoch. A later loss advances it once more, also
/// when the replicas notice it one after another.
#[tokio::test]
async fn replicas_detecting_the_same_loss_advance_the_epoch_once() {
    use cdc_invalidator::sink::epoch::LossReason;
    use cdc_invalidator::sink::RedisSink;
    let url = common::redis_url();
    let prefix = format!("{}:", common::unique("ver"));
    let record = format!("{prefix}epoch");
    let namespaces: Vec<String> = vec!["product".into(), "category".into()];
    let settings = common::sink_settings(&url, &prefix, Duration::from_secs(600));
    let mut sinks = Vec::new();
    for _ in 0..3 {
        let mut sink = RedisSink::connect(&settings).await.unwrap();
        sink.enable_loss_detection();
        sinks.push(sink);
    }
    // All recover at once: each has detected the loss before any recovers.
    async fn recover_all(sinks: &mut [RedisSink], namespaces: &[String]) -> Vec<String> {
        futures::future::join_all(sinks.iter_mut().map(|sink| sink.recover(namespaces)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }
    async fn detect_all(sinks: &mut [RedisSink]) -> Vec<Option<LossReason>> {
        let mut found = Vec::new();
        for sink in sinks.iter_mut() {
            found.push(sink.check_loss().await.unwrap());
        }
        found
    }

    // First contact with a prefix nobody used: the record is missing for all three.
    assert_eq!(detect_all(&mut sinks).await, vec![Some(LossReason::Missing); 3]);
    let first = recover_all(&mut sinks, &namespaces).await;
    // Epochs are max(e + 1, TIME): a second advance could not return the
    // same value, so three equal answers are one advance.
    assert!(first.iter().all(|e| *e == first[0]), "{first:?}");
    let e1: u64 = first[0].parse().unwrap();
    assert_eq!(hget(&url, &record, "e").await, Some(e1));
    let after_first = namespace_records(&url, &prefix, &namespaces).await;
    assert!(
        after_first.iter().all(|(v, p)| v.is_some() && *p == Some(e1)),
        "{after_first:?}"
    );
    assert_eq!(detect_all(&mut sinks).await, vec![None; 3]);

    // A rollback: the record goes back to a copy taken before the latest checks.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let snapshot: Vec<u8> = redis::cmd("DUMP").arg(&record).query_async(&mut conn).await.unwrap();
    assert_eq!(detect_all(&mut sinks).await, vec![None; 3]);
    let _: () = redis::cmd("RESTORE")
        .arg(&record)
        .arg(0)
        .arg(snapshot)
        .arg("REPLACE")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(detect_all(&mut sinks).await, vec![Some(LossReason::RolledBack); 3]);
    let second = recover_all(&mut sinks, &namespaces).await;
    assert!(second.iter().all(|e| *e == second[0]), "{second:?}");
    let e2: u64 = second[0].parse().unwrap();
    assert!(e2 > e1, "a later loss advances the epoch again: {e1} -> {e2}");
    let after_second = namespace_records(&url, &prefix, &namespaces).await;
    for ((v1, _), (v2, p2)) in after_first.iter().zip(&after_second) {
        assert!(v2 > v1 && *p2 == Some(e2), "{after_first:?} -> {after_second:?}");
    }
    assert_eq!(detect_all(&mut sinks).await, vec![None; 3]);

    // A third loss, noticed one replica after another: the first advances,
    // the later ones adopt its epoch and their namespace bumps are no-ops.
    let _: () = redis::cmd("DEL").arg(&record).query_async(&mut conn).await.unwrap();
    assert_eq!(sinks[0].check_loss().await.unwrap(), Some(LossReason::Missing));
    let e3 = sinks[0].recover(&namespaces).await.unwrap();
    let after_third = namespace_records(&url, &prefix, &namespaces).await;
    for sink in &mut sinks[1..] {
        // Its own watermark is gone with the record: a loss for it too.
        assert_eq!(sink.check_loss().await.unwrap(), Some(LossReason::RolledBack));
        assert_eq!(sink.recover(&namespaces).await.unwrap(), e3);
    }
    assert!(e3.parse::<u64>().unwrap() > e2);
    assert_eq!(hget(&url, &record, "e").await, e3.parse().ok());
    assert_eq!(namespace_records(&url, &prefix, &namespaces).await, after_third);
    assert_eq!(detect_all(&mut sinks).await, vec![None; 3]);
}
