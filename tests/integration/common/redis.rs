//! Redis helpers: the stack's Redis, version records and key counts, and
//! private redis-server processes a test may stop, freeze or restart.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, redis_url};

pub fn redis() -> redis::Client {
    redis::Client::open(redis_url()).expect("redis url")
}

pub async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis from scripts/stack up is reachable (CDC_REDIS_URL)")
}

/// Every version record under `prefix`, as key (without prefix) -> v.
pub async fn versions(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> std::collections::BTreeMap<String, u64> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for key in keys {
        // Not version records of changes: the epoch record, and namespace
        // records only a loss recovery bumped (at a Redis's first use, the
        // daemon cannot tell it from one that lost everything).
        if key == format!("{prefix}epoch") {
            continue;
        }
        if key.starts_with(&format!("{prefix}ns:")) {
            let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query_async(conn).await.unwrap();
            if fields.iter().filter(|f| f.starts_with("p:")).all(|f| f == "p:loss") {
                continue;
            }
        }
        let v: Option<String> = redis::cmd("HGET").arg(&key).arg("v").query_async(conn).await.unwrap();
        out.insert(
            key[prefix.len()..].to_owned(),
            v.and_then(|v| v.parse().ok()).unwrap_or(0),
        );
    }
    out
}

/// Counts version records under a prefix (SCAN, so large counts are fine).
pub async fn count_keys(url: &str, pattern: &str) -> usize {
    let Ok(client) = redis::Client::open(url) else {
        return 0;
    };
    let Ok(Ok(mut conn)) =
        tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection()).await
    else {
        return 0;
    };
    let mut cursor: u64 = 0;
    let mut count = 0;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await
        else {
            return 0;
        };
        count += keys.len();
        if next == 0 {
            return count;
        }
        cursor = next;
    }
}

/// A port that was free a moment ago, for servers that must be told their
/// port (redis-server, Prometheus). Another process may take it in between:
/// the daemon, the auditor and in-process servers bind port 0 instead.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server, so stopping it disturbs no other test.
pub struct PrivateRedis {
    child: Child,
    pub port: u16,
    /// Extra redis-server arguments, kept for `restart`.
    args: Vec<String>,
}

impl PrivateRedis {
    pub fn start(port: u16) -> PrivateRedis {
        PrivateRedis::start_with(port, &["--save", "", "--appendonly", "no"])
    }

    /// A private redis-server with its own arguments (persistence, memory).
    pub fn start_with(port: u16, args: &[&str]) -> PrivateRedis {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        PrivateRedis {
            child: PrivateRedis::spawn(port, &args),
            port,
            args,
        }
    }

    fn spawn(port: u16, args: &[String]) -> Child {
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/stack up)")
    }

    /// kill -9, then the same server again on the same port (it loads
    /// whatever its persistence kept), waiting until it answers.
    pub async fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = PrivateRedis::spawn(self.port, &self.args);
        let url = self.url();
        eventually("the restarted redis to answer", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let mut conn = redis::Client::open(url)
                    .ok()?
                    .get_multiplexed_async_connection()
                    .await
                    .ok()?;
                // PING fails with LOADING while the dataset is read.
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PrivateRedis {
    /// Starts a private redis-server and waits until it answers.
    pub async fn start_ready() -> PrivateRedis {
        PrivateRedis::ready(PrivateRedis::start(free_port())).await
    }

    /// `start_with` on a free port, waiting until it answers.
    pub async fn start_ready_with(args: &[&str]) -> PrivateRedis {
        PrivateRedis::ready(PrivateRedis::start_with(free_port(), args)).await
    }

    pub async fn ready(redis: PrivateRedis) -> PrivateRedis {
        eventually("the private redis to answer", Duration::from_secs(10), || {
            let url = redis.url();
            async move {
                redis::Client::open(url)
                    .ok()?
                    .get_multiplexed_async_connection()
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
        redis
    }
}

/// Sink settings for a test: version records under `prefix` with
/// `version_ttl`, a one-second retry backoff and `WAIT` timeout, no replicas
/// to wait for, the default loss check, not a cluster, a five-second
/// response timeout.
pub fn sink_settings(url: &str, prefix: &str, version_ttl: Duration) -> cdc_invalidator::config::RedisSettings {
    cdc_invalidator::config::RedisSettings {
        url: url.to_owned(),
        sentinel: None,
        response_timeout: Duration::from_secs(5),
        version_prefix: prefix.to_owned(),
        version_ttl,
        max_retry_backoff: Duration::from_secs(1),
        cluster: false,
        loss_check_interval: cdc_invalidator::config::default_loss_check_interval(),
        wait_replicas: 0,
        wait_timeout: Duration::from_secs(1),
    }
}

/// Waits (up to `timeout`, described by `what`) until the version record
/// `key` (prefix included) has a version.
pub async fn wait_for_version_record(
    conn: &redis::aio::MultiplexedConnection,
    what: &str,
    key: &str,
    timeout: Duration,
) {
    eventually(what, timeout, || {
        let mut conn = conn.clone();
        async move {
            let v: Option<String> = redis::cmd("HGET").arg(key).arg("v").query_async(&mut conn).await.ok()?;
            v.map(|_| ())
        }
    })
    .await;
}
