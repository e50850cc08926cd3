//! Shared helpers for integration tests against the real local stack
//! (`scripts/stack up`). Addresses come from the environment with loopback
//! defaults; every test uses its own random table, topic, group and prefix.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

/// Kafka Connect's REST API of the stack.
pub fn connect_url() -> String {
    std::env::var("CDC_CONNECT_URL").unwrap_or_else(|_| "http://127.0.0.1:8083".into())
}

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

/// The stack's superuser (trust authentication on loopback), for what the
/// replication role may not do, such as creating a schema publication.
pub async fn pg_admin() -> sqlx::PgPool {
    let url = format!("postgres://postgres@{}/shop", pg_address());
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("the stack's PostgreSQL superuser (scripts/stack up)")
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

/// The binary under test. scripts/test exports the stack's addresses, and
/// these variables override config files: each test's own config must win.
pub fn cli() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cdc-invalidator"));
    for name in [
        "CDC_REDIS_URL",
        "CDC_KAFKA_BROKERS",
        "CDC_KAFKA_GROUP",
        "CDC_ADMIN_LISTEN",
        "CDC_DEAD_LETTERS_URL",
        "CDC_LOOKUP_URL",
        "CDC_CONNECT_URL",
    ] {
        command.env_remove(name);
    }
    command
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
        let child = cli()
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
    let mut stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
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
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
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

/// A dead-letter URL through `address` and a schema of the test's own
/// (`[dead_letters] schema`; `migrate` creates it).
pub fn dead_letter_url(address: &str) -> (String, String) {
    (pg_url().replace(&pg_address(), address), unique("dl"))
}

/// A Kafka record to produce: key and value bytes.
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

pub async fn produce(topic: &str, records: &[KeyValue]) -> Vec<(i32, i64)> {
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

/// A Debezium-shaped PostgreSQL change record, for tests that produce
/// straight to Kafka: (key, value) bytes.
pub fn debezium_change(
    table: &str,
    op: &str,
    lsn: u64,
    id: i64,
    after: serde_json::Value,
    commit_time_us: i64,
) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let value = serde_json::json!({"before": null, "after": after, "op": op,
        "source": {"connector": "postgresql", "name": "shop", "db": "shop", "schema": "public", "table": table,
                   "lsn": lsn, "sequence": format!("[\"{lsn}\",\"{lsn}\"]"), "ts_us": commit_time_us}});
    (
        Some(serde_json::to_vec(&serde_json::json!({"id": id})).unwrap()),
        Some(serde_json::to_vec(&value).unwrap()),
    )
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// Produces many records quickly (no per-record await), all to partition 0.
pub async fn produce_many(topic: &str, records: impl Iterator<Item = (Option<Vec<u8>>, Option<Vec<u8>>)>) -> usize {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    let mut count = 0;
    for (key, value) in records {
        let key = key.unwrap_or_default();
        let value = value.unwrap_or_default();
        let record = FutureRecord::to(topic).partition(0).key(&key).payload(&value);
        pending.push(producer.send_result(record).expect("enqueue"));
        count += 1;
        if pending.len() >= 10_000 {
            for p in pending.drain(..) {
                p.await.expect("delivery").map_err(|(e, _)| e).expect("produce");
            }
        }
    }
    for p in pending {
        p.await.expect("delivery").map_err(|(e, _)| e).expect("produce");
    }
    count
}

/// Writes a daemon config for one produced topic and one entity.
pub fn write_config(topic: &str, redis: &str, prefix: &str, admin_port: u16, extra: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(
        file.path(),
        format!(
            r#"
[source]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{topic}"]
[source.librdkafka]
"topic.metadata.refresh.interval.ms" = "1000"
[redis]
url = "{redis}"
version_prefix = "{prefix}"
version_ttl = "1h"
max_retry_backoff = "500ms"
[admin]
listen = "127.0.0.1:{admin_port}"
{extra}
"#,
            brokers = kafka_brokers(),
            group = unique("group"),
        ),
    )
    .unwrap();
    file
}

/// Peak resident memory of a process in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
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

/// The consumer group a config written by `write_config` uses.
pub fn group_of(config: &std::path::Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    text.lines()
        .find(|l| l.starts_with("group_id"))
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap()
        .to_owned()
}

/// The committed offset of a group on one partition (None: nothing committed).
pub fn committed_offset(group: &str, topic: &str, partition: i32) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed.elements()[0].offset().to_raw().filter(|o| *o >= 0)
}

/// A Debezium insert of `row` into `public.<table>` as an Avro record: no
/// before image, op "c"; `lsn` and `sequence` come typed as the test's schema
/// declares them (plain, or inside a union).
pub fn avro_insert(
    table: &str,
    row: apache_avro::types::Value,
    lsn: apache_avro::types::Value,
    sequence: apache_avro::types::Value,
) -> apache_avro::types::Value {
    use apache_avro::types::Value as Avro;
    Avro::Record(vec![
        ("before".into(), Avro::Union(0, Box::new(Avro::Null))),
        ("after".into(), Avro::Union(1, Box::new(row))),
        (
            "source".into(),
            Avro::Record(vec![
                ("connector".into(), Avro::String("postgresql".into())),
                ("name".into(), Avro::String("shop".into())),
                ("schema".into(), Avro::String("public".into())),
                ("table".into(), Avro::String(table.into())),
                ("lsn".into(), lsn),
                ("sequence".into(), sequence),
            ]),
        ),
        ("op".into(), Avro::String("c".into())),
    ])
}

/// An Avro datum in the Confluent wire format: magic byte 0, the schema id
/// (big-endian), the datum.
// The writer API that replaces to_avro_datum needs a schema-owning builder;
// this is a test helper.
#[allow(deprecated)]
pub fn confluent_framed(id: u32, schema: &apache_avro::Schema, value: apache_avro::types::Value) -> Vec<u8> {
    let mut out = vec![0];
    out.extend(id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(schema, value).unwrap());
    out
}
