//! The key protocol's guard, against real Redis (docs/architecture.md,
//! "The key protocol").

use crate::common;

use std::time::Duration;

use cdc_invalidator::config::RedisSettings;
use cdc_invalidator::event::Position;
use cdc_invalidator::graph::Target;
use cdc_invalidator::plan::Bump;
use cdc_invalidator::sink::{BumpResult, RedisSink};

async fn sink(prefix: &str, ttl: Duration) -> RedisSink {
    RedisSink::connect(&common::sink_settings(&common::redis_url(), prefix, ttl))
        .await
        .expect("redis from scripts/stack up")
}

fn bump(key: &str, position: Position) -> Bump {
    Bump {
        target: Target::Key(key.to_owned()),
        position,
        commit_time_us: None,
    }
}

/// Applies one bump of `key` at `position` and returns its result.
async fn apply_one(sink: &mut RedisSink, key: &str, position: Position) -> BumpResult {
    sink.apply(&[bump(key, position)]).await.unwrap()[0]
}

#[tokio::test]
async fn redelivery_and_older_positions_are_noops() {
    let prefix = format!("{}:", common::unique("ver"));
    let mut sink = sink(&prefix, Duration::from_secs(600)).await;
    let record = format!("{prefix}product:1");
    let first = apply_one(&mut sink, "product:1", Position::postgres("shop", 10, 20)).await;
    let first_version = first.version.expect("a new record's bump is applied");
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let now_us = u64::try_from(since_epoch.as_micros()).unwrap();
    assert!(
        first_version > now_us - 60_000_000,
        "version {first_version} is server microseconds"
    );

    let again = apply_one(&mut sink, "product:1", Position::postgres("shop", 10, 20)).await;
    assert_eq!(again.version, None, "redelivery must change nothing");
    assert_eq!(sink.version(&record).await.unwrap(), first_version);

    let older = apply_one(&mut sink, "product:1", Position::postgres("shop", 9, 99)).await;
    assert_eq!(older.version, None, "an older position must change nothing");
    assert_eq!(sink.version(&record).await.unwrap(), first_version);

    let newer = apply_one(&mut sink, "product:1", Position::postgres("shop", 10, 21)).await;
    let newer_version = newer.version.expect("a later position is applied");
    assert!(newer_version > first_version);
    assert_eq!(sink.version(&record).await.unwrap(), newer_version);

    // Readers see an integer, never Lua's exponent notation.
    let mut conn = common::redis_conn().await;
    let raw: String = redis::cmd("HGET")
        .arg(&record)
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(raw.chars().all(|c| c.is_ascii_digit()), "v = {raw:?}");
}

#[tokio::test]
async fn two_sources_guard_independently() {
    let prefix = format!("{}:", common::unique("ver"));
    let mut sink = sink(&prefix, Duration::from_secs(600)).await;
    let a = apply_one(&mut sink, "k", Position::postgres("a", 0, 500)).await;
    // Source b's position is numerically lower, but it is another log.
    let b = apply_one(&mut sink, "k", Position::postgres("b", 0, 5)).await;
    assert!(a.applied() && b.applied() && b.version > a.version);
    let a_again = apply_one(&mut sink, "k", Position::postgres("a", 0, 400)).await;
    assert!(!a_again.applied());
}

#[tokio::test]
async fn expired_record_bumped_again_gets_a_larger_version() {
    let prefix = format!("{}:", common::unique("ver"));
    let mut sink = sink(&prefix, Duration::from_millis(300)).await;
    let mut conn = common::redis_conn().await;
    // A reader-visible version far in the future (v+1 dominates server time).
    let record = format!("{prefix}product:9");
    let first = apply_one(&mut sink, "product:9", Position::kafka("t", 0, 1)).await;
    let ttl: i64 = redis::cmd("PTTL").arg(&record).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= 300, "version_ttl applied, got {ttl}");
    common::eventually("the version record to expire", Duration::from_secs(5), || {
        let mut conn = conn.clone();
        let record = record.clone();
        async move {
            let exists: i64 = redis::cmd("EXISTS").arg(&record).query_async(&mut conn).await.unwrap();
            (exists == 0).then_some(())
        }
    })
    .await;
    // The same position again: the guard was forgotten with the record, so it
    // applies, and the new version is still above every earlier one.
    let second = apply_one(&mut sink, "product:9", Position::kafka("t", 0, 1)).await;
    let (first, second) = (first.version.unwrap(), second.version.expect("applied again"));
    assert!(second > first, "{second} > {first}");
}

#[tokio::test]
async fn script_reloads_after_script_flush() {
    let prefix = format!("{}:", common::unique("ver"));
    let mut sink = sink(&prefix, Duration::from_secs(600)).await;
    let mut conn = common::redis_conn().await;
    // What a restart or failover does to the script cache.
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    let r = sink
        .apply(&[
            bump("x", Position::kafka("t", 0, 1)),
            bump("y", Position::kafka("t", 0, 1)),
        ])
        .await
        .unwrap();
    assert!(r.iter().all(|b| b.applied()));
}

#[tokio::test]
async fn acl_user_from_the_url_is_used() {
    let user = common::unique("acl");
    let prefix = format!("{user}:");
    let mut conn = common::redis_conn().await;
    // Allowed only its own keys and the commands the daemon needs (the
    // minimal ACL documented in examples/shop/config.toml).
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                &user,
                "on",
                ">s3cret",
                &format!("~{prefix}*"),
                "+evalsha",
                "+script|load",
                "+ping",
                "+hget",
                "+hmget",
                "+hset",
                "+time",
                "+pexpire",
            ][..],
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    let url = common::redis_url().replacen("redis://", &format!("redis://{user}:s3cret@"), 1);
    let settings = common::sink_settings(&url, &prefix, Duration::from_secs(60));
    let mut sink = RedisSink::connect(&settings).await.expect("ACL user connects");
    assert!(apply_one(&mut sink, "k", Position::kafka("t", 0, 1)).await.applied());

    let wrong = RedisSettings {
        url: url.replace("s3cret", "wrong"),
        ..settings
    };
    let error = RedisSink::connect(&wrong)
        .await
        .err()
        .expect("a wrong password is refused")
        .to_string();
    assert!(
        !error.contains("wrong"),
        "the password must not appear in errors: {error}"
    );
    let _: () = redis::cmd("ACL")
        .arg(&["DELUSER", &user][..])
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A private redis-server speaking only TLS, with a certificate made here.
#[tokio::test]
async fn tls_through_a_rediss_url() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
    ]);
    let port = common::free_port();
    let mut server = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--tls-cert-file",
            "cert.pem",
            "--tls-key-file",
            "key.pem",
            "--tls-ca-cert-file",
            "cert.pem",
            "--tls-auth-clients",
            "no",
        ])
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    // The certificate is self-signed: `#insecure` skips verification (a real
    // deployment trusts its CA through the system store instead).
    let settings = common::sink_settings(
        &format!("rediss://127.0.0.1:{port}/#insecure"),
        "ver:",
        Duration::from_secs(60),
    );
    let mut sink = None;
    for _ in 0..50 {
        if let Ok(s) = RedisSink::connect(&settings).await {
            sink = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sink = sink.expect("a TLS connection");
    assert!(apply_one(&mut sink, "k", Position::kafka("t", 0, 1)).await.applied());
    // The same server refuses plaintext: the bump above really went over TLS.
    let plain = RedisSettings {
        url: format!("redis://127.0.0.1:{port}"),
        ..settings
    };
    assert!(tokio::time::timeout(Duration::from_secs(8), RedisSink::connect(&plain))
        .await
        .map_or(true, |r| r.is_err()));
    let _ = server.kill();
    let _ = server.wait();
}

/// Many bumps per script call (sink::BUMPS_PER_CALL) keep every target's own
/// result: applied or guard no-op, each with its own version, in order, and
/// an applied bump keeps the version it replaced in `pv`.
#[tokio::test]
async fn a_large_batch_answers_per_target_across_script_calls() {
    let prefix = format!("{}:", common::unique("ver"));
    let mut sink = sink(&prefix, Duration::from_secs(600)).await;
    let count = cdc_invalidator::sink::BUMPS_PER_CALL * 2 + 5;
    let keys: Vec<String> = (0..count).map(|i| format!("item:{i}")).collect();
    // Every third key already saw a later position: its bump is a no-op.
    let seen: Vec<Bump> = keys
        .iter()
        .step_by(3)
        .map(|k| bump(k, Position::postgres("shop", 50, 0)))
        .collect();
    let first = sink.apply(&seen).await.unwrap();
    assert!(first.iter().all(|r| r.applied()));
    let batch: Vec<Bump> = keys
        .iter()
        .map(|k| bump(k, Position::postgres("shop", 40, 0)))
        .collect();
    let results = sink.apply(&batch).await.unwrap();
    assert_eq!(results.len(), count);
    let mut conn = common::redis_conn().await;
    for (i, (key, result)) in keys.iter().zip(&results).enumerate() {
        let record = format!("{prefix}{key}");
        let (v, pv): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(&record)
            .arg("v")
            .arg("pv")
            .query_async(&mut conn)
            .await
            .unwrap();
        if i % 3 == 0 {
            assert_eq!(result.version, None, "{key} had seen a later position");
            assert_eq!(first[i / 3].version, v, "{key}: a no-op keeps the version");
            assert_eq!(pv, None, "{key}: created by one bump, it has no previous version");
        } else {
            assert!(result.applied(), "{key} is new");
            assert_eq!(result.version, v, "{key}: the reply is this key's version");
            assert_eq!(pv, None, "{key}: created by this bump");
        }
    }
    // A second applied bump records the version it replaced.
    let again = sink
        .apply(&[bump(&keys[1], Position::postgres("shop", 41, 0))])
        .await
        .unwrap();
    let pv: Option<u64> = redis::cmd("HGET")
        .arg(format!("{prefix}{}", keys[1]))
        .arg("pv")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(again[0].applied());
    assert_eq!(pv, results[1].version);
}
