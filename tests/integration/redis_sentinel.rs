//! Redis behind Sentinel, and a connection that goes silent: private
//! servers of their own (a primary, a replica, one Sentinel), so nothing
//! here touches the stack's Redis. Needs only `redis-server` on the PATH.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdc_invalidator::config::{RedisSettings, SentinelSettings};
use cdc_invalidator::event::Position;
use cdc_invalidator::graph::Target;
use cdc_invalidator::plan::Bump;
use cdc_invalidator::sink::RedisSink;

use crate::common::{self, free_port, PrivateRedis};

const MASTER: &str = "cdc-test";

/// One Sentinel with a config file of its own (Sentinel rewrites it).
struct PrivateSentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateSentinel {
    async fn start(primary: u16) -> PrivateSentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {port}\nsentinel resolve-hostnames no\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 5000\n"
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/stack up)");
        let sentinel = PrivateSentinel { child, port, _dir: dir };
        common::eventually("the sentinel to see the replica", Duration::from_secs(20), || async {
            let replicas: Vec<redis::Value> = sentinel
                .command(redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER))
                .await?;
            (!replicas.is_empty()).then_some(())
        })
        .await;
        sentinel
    }

    async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        cmd.query_async(&mut conn).await.ok()
    }

    async fn primary_port(&self) -> Option<u16> {
        let (_host, port): (String, u16) = self
            .command(redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(MASTER))
            .await?;
        Some(port)
    }
}

impl Drop for PrivateSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings(sentinel_port: u16, response_timeout: Duration) -> RedisSettings {
    RedisSettings {
        url: String::new(),
        sentinel: Some(SentinelSettings {
            master_name: MASTER.to_owned(),
            addresses: vec![("127.0.0.1".to_owned(), sentinel_port)],
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            tls: false,
            db: 0,
        }),
        response_timeout,
        ..common::sink_settings("", "ver:", Duration::from_secs(600))
    }
}

fn bump(key: &str, offset: i64) -> Bump {
    Bump {
        target: Target::Key(key.to_owned()),
        position: Position::kafka("t", 0, offset),
        commit_time_us: None,
    }
}

async fn version_on(port: u16, key: &str) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("HGET")
        .arg(format!("ver:{key}"))
        .arg("v")
        .query_async(&mut conn)
        .await
        .ok()?
}

#[tokio::test]
async fn a_sentinel_failover_is_followed_without_a_new_sink() {
    let primary = PrivateRedis::start_ready().await;
    let replica = PrivateRedis::start_ready_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
        &primary.port.to_string(),
    ])
    .await;
    let sentinel = PrivateSentinel::start(primary.port).await;
    let mut sink = RedisSink::connect(&settings(sentinel.port, Duration::from_secs(2)))
        .await
        .expect("the sink finds the primary through the Sentinel");
    let applied = sink
        .apply(&[bump("before", 1)])
        .await
        .expect("applied on the first primary");
    assert!(applied[0].applied());
    assert!(version_on(primary.port, "before").await.is_some());

    redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(MASTER)
        .exec_async(
            &mut redis::Client::open(format!("redis://127.0.0.1:{}", sentinel.port))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        )
        .await
        .expect("SENTINEL FAILOVER");
    common::eventually("the sentinel to name the replica", Duration::from_secs(30), || async {
        (sentinel.primary_port().await? == replica.port).then_some(())
    })
    .await;
    // Sentinel names the new primary before it demotes the old one; a write
    // in between lands on the old primary and is lost when it resyncs (the
    // epoch check's case, docs/redis-loss.md). Here: only once it is demoted.
    common::eventually("the old primary to turn replica", Duration::from_secs(30), || async {
        let client = redis::Client::open(primary.url()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .ok()?;
        info.contains("role:slave").then_some(())
    })
    .await;

    // The same sink: it left the old primary at the Sentinel's
    // +switch-master (or, had it missed that, at the old primary's READONLY).
    let started = Instant::now();
    let mut failures = 0;
    loop {
        match sink.apply(&[bump("after", 2)]).await {
            Ok(results) => {
                assert!(results[0].applied());
                break;
            }
            Err(e) => {
                failures += 1;
                assert!(started.elapsed() < Duration::from_secs(30), "still failing: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(
        version_on(replica.port, "after").await.is_some(),
        "the bump is on the promoted replica ({failures} attempts failed first)"
    );
}

#[tokio::test]
async fn a_silent_connection_fails_within_the_response_timeout_and_is_replaced() {
    let server = PrivateRedis::start_ready().await;
    let mut sink = RedisSink::connect(&RedisSettings {
        response_timeout: Duration::from_secs(1),
        wait_timeout: Duration::from_millis(500),
        ..common::sink_settings(&server.url(), "ver:", Duration::from_secs(600))
    })
    .await
    .unwrap();
    assert!(sink.apply(&[bump("k", 1)]).await.unwrap()[0].applied());
    // The server stops answering every client (the connection stays open,
    // as behind a partition or a hung proxy) for three seconds.
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .exec_async(&mut admin)
        .await
        .unwrap();
    let started = Instant::now();
    let error = sink.apply(&[bump("k", 2)]).await.expect_err("no answer while paused");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "bounded by the response timeout, took {:?}: {error}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let results = sink
        .apply(&[bump("k", 3)])
        .await
        .expect("answers again once the pause ends");
    assert!(results[0].applied());
}
