//! Shared helpers for integration tests against the real local stack
//! (`scripts/stack up`). Addresses come from the environment with loopback
//! defaults; every test uses its own random table, topic, group and prefix.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

pub fn kafka_brokers() -> String {
    std::env::var("CDC_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("CDC_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn pg_url() -> String {
    std::env::var("CDC_PG_URL").unwrap_or_else(|_| "postgres://cdc:cdc@127.0.0.1:5432/shop".into())
}

/// Debezium's topic.prefix in the stack's connector.
pub fn topic_prefix() -> String {
    std::env::var("CDC_TOPIC_PREFIX").unwrap_or_else(|_| "shop".into())
}

pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}_{:012x}", n & 0xffff_ffff_ffff)
}

pub async fn pg() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&pg_url())
        .await
        .expect("PostgreSQL from scripts/stack up is reachable (CDC_PG_URL)")
}

pub async fn sql(pool: &sqlx::PgPool, statements: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statements.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("SQL failed: {e}\n{statements}"));
}

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
        let v: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("v")
            .query_async(conn)
            .await
            .unwrap();
        out.insert(
            key[prefix.len()..].to_owned(),
            v.and_then(|v| v.parse().ok()).unwrap_or(0),
        );
    }
    out
}

/// Polls `check` until it returns Some or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A daemon process under test, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub admin: String,
    pub log: std::path::PathBuf,
}

impl Daemon {
    pub fn start(config_path: &std::path::Path, admin_port: u16) -> Daemon {
        Daemon::start_with(config_path, admin_port, &[])
    }

    pub fn start_with(config_path: &std::path::Path, admin_port: u16, extra: &[&str]) -> Daemon {
        let log = config_path.with_extension("log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cdc-invalidator"))
            .args(["run", "--config"])
            .arg(config_path)
            .args(extra)
            .env("CDC_LOG", "info,cdc_invalidator=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the daemon");
        Daemon {
            child,
            admin: format!("127.0.0.1:{admin_port}"),
            log,
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not stop within 40s after SIGTERM\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(&self.admin, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    pub async fn wait_ready(&self) {
        let admin = self.admin.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = http_get(&admin, "/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready within 60s\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Minimal HTTP/1.0 GET over loopback; returns (status, body).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sum of a metric's samples whose line contains every `filter` fragment.
pub fn metric_sum(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TCP forwarder on loopback that a test can cut and restore, to make a
/// dependency (here the dead-letter database) go away and come back.
pub struct Proxy {
    pub port: u16,
    target: String,
    stop: Option<tokio_util::sync::CancellationToken>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let mut proxy = Proxy {
            port: free_port(),
            target: target.to_owned(),
            stop: None,
        };
        proxy.up().await;
        proxy
    }

    pub async fn up(&mut self) {
        let stop = tokio_util::sync::CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("proxy port");
        let target = self.target.clone();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let target = target.clone();
                        let token = token.clone();
                        tokio::spawn(async move {
                            let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                            tokio::select! {
                                _ = token.cancelled() => {}
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            }
                        });
                    }
                }
            }
        });
        self.stop = Some(stop);
    }

    /// Closes the listener and every open connection.
    pub async fn down(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// host:port of a postgres:// URL.
pub fn pg_address() -> String {
    let url = pg_url();
    let after_at = url.rsplit('@').next().unwrap();
    after_at.split('/').next().unwrap().to_owned()
}

/// A dead-letter URL through `address`, isolated in its own schema.
pub async fn dead_letter_url(address: &str) -> (String, String) {
    let schema = unique("dl");
    let pool = pg().await;
    sql(&pool, &format!("CREATE SCHEMA {schema}")).await;
    let url = pg_url().replace(&pg_address(), address);
    let sep = if url.contains('?') { '&' } else { '?' };
    (
        format!("{url}{sep}options=-csearch_path%3D{schema}"),
        schema,
    )
}

pub async fn produce(
    topic: &str,
    records: &[(Option<Vec<u8>>, Option<Vec<u8>>)],
) -> Vec<(i32, i64)> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        // One partition order for the whole sequence: same key bytes are not
        // guaranteed, so the tests pin partition 0.
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let mut out = Vec::new();
    for (key, value) in records {
        let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(topic).partition(0);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        let delivered = producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        out.push((delivered.partition, delivered.offset));
    }
    out
}
