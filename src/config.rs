//! Strict configuration: one TOML file, unknown fields are errors, every
//! error names the file, the line and the field. `load` reads and parses,
//! `RawConfig::validate` turns the raw form into runtime [`Settings`].

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::graph::{Consistency, Entity, Fanout, Graph, Template};

/// Environment variables that override addresses and secrets, so the same
/// checked-in file serves every environment.
pub(crate) const ENV_KAFKA_BROKERS: &str = "CDC_KAFKA_BROKERS";
pub(crate) const ENV_KAFKA_GROUP: &str = "CDC_KAFKA_GROUP";
pub(crate) const ENV_REDIS_URL: &str = "CDC_REDIS_URL";
pub(crate) const ENV_ADMIN_LISTEN: &str = "CDC_ADMIN_LISTEN";
pub(crate) const ENV_DEAD_LETTERS_URL: &str = "CDC_DEAD_LETTERS_URL";
pub(crate) const ENV_LOOKUP_URL: &str = "CDC_LOOKUP_URL";
pub(crate) const ENV_SCHEMA_REGISTRY_URL: &str = "CDC_SCHEMA_REGISTRY_URL";
pub(crate) const ENV_SCHEMA_REGISTRY_USER: &str = "CDC_SCHEMA_REGISTRY_USER";
pub(crate) const ENV_SCHEMA_REGISTRY_PASSWORD: &str = "CDC_SCHEMA_REGISTRY_PASSWORD";
pub(crate) const ENV_INSTANCE_ID: &str = "CDC_INSTANCE_ID";
pub(crate) const ENV_CONNECT_URL: &str = "CDC_CONNECT_URL";
pub(crate) const ENV_GROUP_PROTOCOL: &str = "CDC_GROUP_PROTOCOL";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path:?}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}:{line}: field `{field}`: {message}")]
    Invalid {
        path: String,
        line: usize,
        field: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) source: Spanned<RawSource>,
    pub(crate) redis: Spanned<RawRedis>,
    #[serde(default)]
    pub(crate) admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    pub(crate) plan: Option<Spanned<RawPlan>>,
    #[serde(default)]
    pub(crate) dead_letters: Option<Spanned<RawDeadLetters>>,
    #[serde(default)]
    pub(crate) lookup: Option<Spanned<RawLookup>>,
    #[serde(default)]
    pub(crate) avro: Option<Spanned<RawAvro>>,
    #[serde(default)]
    pub(crate) notices: Option<Spanned<RawNotices>>,
    #[serde(default)]
    pub(crate) connect: Option<Spanned<RawConnect>>,
    #[serde(default, rename = "entity")]
    pub(crate) entities: Vec<Spanned<RawEntity>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub(crate) brokers: Spanned<String>,
    pub(crate) group_id: Spanned<String>,
    #[serde(default)]
    pub(crate) topics: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) topic_regex: Option<Spanned<String>>,
    /// Passed to librdkafka as they are (security.protocol, sasl.*, ssl.*, ...).
    #[serde(default)]
    pub(crate) librdkafka: BTreeMap<String, Spanned<String>>,
    /// Static group membership (`group.instance.id`): a replica restarted
    /// within the session timeout gets its partitions back at once. "auto"
    /// is `<hostname>-<admin port>`.
    #[serde(default)]
    pub(crate) instance_id: Option<Spanned<String>>,
    /// Kafka's consumer group protocol: "classic" (JoinGroup/SyncGroup,
    /// cooperative-sticky) or "consumer" (KIP-848: the broker assigns,
    /// session and heartbeat are broker settings).
    #[serde(default)]
    pub(crate) group_protocol: Option<Spanned<String>>,
    /// Topics whose high watermarks say whether the source is alive
    /// (Debezium heartbeat topics, `__debezium-heartbeat.<prefix>`); by
    /// default the subscribed topics.
    #[serde(default)]
    pub(crate) liveness_topics: Option<Spanned<Vec<String>>>,
    /// Readiness fails and the idle-topics gauge rises when a watched topic
    /// has had no new record for longer than this.
    #[serde(default)]
    pub(crate) max_idle: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    /// redis://, rediss:// (TLS); user and password in the URL for ACL users.
    pub(crate) url: Spanned<String>,
    #[serde(default = "default_version_prefix")]
    pub(crate) version_prefix: Spanned<String>,
    pub(crate) version_ttl: Spanned<String>,
    #[serde(default)]
    pub(crate) max_retry_backoff: Option<Spanned<String>>,
    /// The URL names one seed node of a Redis Cluster; the rest is discovered.
    #[serde(default)]
    pub(crate) cluster: bool,
    /// How often an idle daemon checks the epoch record for lost writes
    /// (every applied batch checks it too).
    #[serde(default)]
    pub(crate) loss_check_interval: Option<Spanned<String>>,
    /// Replicas that must acknowledge a batch's bumps (Redis `WAIT`) before
    /// its offsets may be stored; 0 (the default) waits for none.
    #[serde(default)]
    pub(crate) wait_replicas: Option<Spanned<u32>>,
    /// How long one `WAIT` may block before the batch is retried.
    #[serde(default)]
    pub(crate) wait_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Spanned<String>,
    /// How often the readiness probe pings Redis and the dead-letter store.
    #[serde(default)]
    pub(crate) probe_interval: Option<Spanned<String>>,
    /// How long one ping may take before the dependency counts as down.
    #[serde(default)]
    pub(crate) probe_timeout: Option<Spanned<String>>,
}

/// Kafka Connect's REST API, to watch the named connectors' status.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConnect {
    pub(crate) url: Spanned<String>,
    pub(crate) connectors: Spanned<Vec<String>>,
    #[serde(default)]
    pub(crate) poll_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotices {
    #[serde(default)]
    pub(crate) redis_channel: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) kafka_topic: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) kafka_schema_id: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAvro {
    /// Confluent-compatible schema registry (Confluent, Apicurio's ccompat API, Karapace).
    #[serde(default)]
    pub(crate) registry_url: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) username: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) password: Option<Spanned<String>>,
    /// Directory of `<schema id>.avsc` files, read before asking the registry.
    #[serde(default)]
    pub(crate) schemas_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLookup {
    /// PostgreSQL URL, or `mysql://` / `mariadb://` for MySQL-family
    /// databases; ideally a read replica.
    pub(crate) url: Spanned<String>,
    #[serde(default)]
    pub(crate) timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) attempts: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFanout {
    pub(crate) query: Spanned<String>,
    pub(crate) bind: Spanned<Vec<String>>,
    pub(crate) keys: Spanned<Vec<String>>,
    #[serde(default)]
    pub(crate) max_rows: Option<Spanned<usize>>,
    #[serde(default)]
    pub(crate) namespace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeadLetters {
    /// PostgreSQL URL; the table comes from `cdc-invalidator migrate`.
    pub(crate) url: Spanned<String>,
    /// Schema holding the dead-letter table and its migration history.
    #[serde(default)]
    pub(crate) schema: Option<Spanned<String>>,
}

/// Dead letters get a schema of their own so that a publication of the
/// captured schemas never includes them: a captured dead letter is itself a
/// change event, and a large one can fail the Debezium task for every table.
pub(crate) const DEFAULT_DEAD_LETTER_SCHEMA: &str = "cdc_invalidator";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlan {
    #[serde(default)]
    pub(crate) max_batch_records: Option<Spanned<usize>>,
    #[serde(default)]
    pub(crate) max_batch_bytes: Option<Spanned<usize>>,
    #[serde(default)]
    pub(crate) max_record_bytes: Option<Spanned<usize>>,
    #[serde(default)]
    pub(crate) escalate_above_lag: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) eventual_linger: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) clock_skew_margin: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEntity {
    pub(crate) table: Spanned<String>,
    #[serde(default)]
    pub(crate) namespace: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) consistency: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) max_cache_ttl: Option<Spanned<String>>,
    pub(crate) keys: Spanned<Vec<String>>,
    #[serde(default)]
    pub(crate) invalidate_on_snapshot: bool,
    #[serde(default)]
    pub(crate) replica_identity: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) fanout: Vec<Spanned<RawFanout>>,
}

// Readers serve stale data from a Redis that lost writes until the daemon
// notices: an idle daemon looks once a second (one small script call and
// one INFO), so the window stays about a second without loading Redis.
pub fn default_loss_check_interval() -> Duration {
    Duration::from_secs(1)
}

// Readers of the key protocol default to `ver:` (docs/architecture.md, "The
// key protocol").
fn default_version_prefix() -> Spanned<String> {
    Spanned::new(0..0, "ver:".to_owned())
}

/// Runtime settings, produced only by [`RawConfig::validate`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: SourceSettings,
    pub(crate) redis: RedisSettings,
    pub(crate) admin_listen: std::net::SocketAddr,
    pub(crate) probe: ProbeSettings,
    pub plan: PlanSettings,
    /// Where the dead-letter table lives; without it, records that cannot be
    /// decoded escalate or stall.
    pub(crate) dead_letters: Option<DeadLetterSettings>,
    pub(crate) lookup: Option<LookupSettings>,
    /// Where Avro schemas come from; None reads JSON only.
    pub avro: Option<crate::decode::SchemaSources>,
    pub(crate) notices: Option<NoticeSettings>,
    /// Connector status watch; None watches nothing.
    pub(crate) connect: Option<ConnectSettings>,
    pub graph: Graph,
}

/// `[notices]`: where applied bumps are announced (`sink::notice`).
#[derive(Debug, Clone, Default)]
pub struct NoticeSettings {
    pub(crate) redis_channel: Option<String>,
    pub(crate) kafka_topic: Option<String>,
    /// The notice schema's registry id; registered under `<topic>-value`
    /// when a registry is configured and this is not set.
    pub(crate) kafka_schema_id: Option<u32>,
}

#[derive(Debug, Clone)]
pub(crate) struct ConnectSettings {
    /// Base URL of a Kafka Connect worker's REST API.
    pub(crate) url: String,
    pub(crate) connectors: Vec<String>,
    pub(crate) poll_interval: Duration,
}

/// Connect's REST API answers in milliseconds; a connector that FAILED is
/// reported within this (and the alert's `for`).
pub(crate) const DEFAULT_CONNECT_POLL_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub(crate) brokers: String,
    pub group_id: String,
    pub(crate) subscription: Subscription,
    pub(crate) librdkafka: BTreeMap<String, String>,
    /// `group.instance.id` when static membership is on.
    pub(crate) instance_id: Option<String>,
    pub(crate) group_protocol: GroupProtocol,
    pub(crate) liveness: LivenessSettings,
}

/// Kafka's consumer group protocol (`group.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum GroupProtocol {
    /// JoinGroup/SyncGroup with the cooperative-sticky assignor: works with
    /// every broker the daemon supports, so it stays the default.
    #[default]
    Classic,
    /// KIP-848 (Kafka 4.0 or newer): the broker computes assignments and
    /// each member heartbeats on its own, with no group-wide barrier.
    Consumer,
}

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

/// librdkafka refuses these with `group.protocol=consumer` (the broker owns
/// the session, the heartbeat and the assignor there); refused at load so
/// the error names the line instead of failing at consumer creation.
const CLASSIC_ONLY_RDKAFKA_SETTINGS: &[&str] = &["session.timeout.ms", "heartbeat.interval.ms", "group.protocol.type"];

#[derive(Debug, Clone)]
pub(crate) struct LivenessSettings {
    /// None: the subscribed topics.
    pub(crate) topics: Option<Vec<String>>,
    pub(crate) max_idle: Option<Duration>,
    pub(crate) interval: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct ProbeSettings {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

// Readiness should turn within seconds of an outage, without the probe
// itself becoming load: one PING and one catalog query every 2 s.
pub(crate) fn default_probe_interval() -> Duration {
    Duration::from_secs(2)
}

// A healthy Redis or PostgreSQL on the same network answers in
// milliseconds; a second without an answer is an outage for readiness.
pub(crate) fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}

// Watermarks of the watched topics are read this often: Debezium's
// heartbeats come every few seconds, so 5 s keeps the idle age accurate to
// a heartbeat while costing one metadata round trip per partition.
pub(crate) fn default_liveness_interval() -> Duration {
    Duration::from_secs(5)
}

/// "auto": `<hostname>-<admin port>`: stable across restarts of a replica,
/// distinct between replicas on one host (they cannot share a port).
pub(crate) fn auto_instance_id(admin: std::net::SocketAddr) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}-{}", admin.port())
}

#[derive(Debug, Clone)]
pub(crate) enum Subscription {
    Topics(Vec<String>),
    /// Anchored (`^(...)$`) and compiled by librdkafka's own engine.
    Regex(crate::topic_pattern::TopicPattern),
}

impl Subscription {
    /// What `subscribe` takes: topic names, or one pattern starting with `^`.
    pub(crate) fn patterns(&self) -> Vec<String> {
        match self {
            Subscription::Topics(topics) => topics.clone(),
            Subscription::Regex(pattern) => vec![pattern.anchored().to_owned()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetterSettings {
    /// PostgreSQL URL.
    pub(crate) url: String,
    /// Schema of the table `cdc_dead_letters` (and of sqlx's migration history).
    pub(crate) schema: String,
}

#[derive(Debug, Clone)]
pub(crate) struct LookupSettings {
    pub(crate) url: String,
    pub(crate) timeout: Duration,
    pub(crate) attempts: u32,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub version_prefix: String,
    pub version_ttl: Duration,
    pub max_retry_backoff: Duration,
    pub cluster: bool,
    pub loss_check_interval: Duration,
    /// `WAIT` for this many replicas after every batch (0: no WAIT).
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct PlanSettings {
    pub(crate) max_batch_records: usize,
    /// In-flight budget in bytes (keys and values of the records in a batch).
    pub(crate) max_batch_bytes: usize,
    pub(crate) max_record_bytes: usize,
    /// Consumer lag (records) above which entities with a namespace bump it
    /// once per batch instead of their keys; back to keys below half of it.
    pub(crate) escalate_above_lag: Option<i64>,
    pub(crate) eventual_linger: Duration,
    pub(crate) clock_skew_margin: Duration,
}

// 5000 records keep one Redis pipeline well under a megabyte while
// amortising the round trip; the watermark commits after each batch.
const DEFAULT_MAX_BATCH_RECORDS: usize = 5000;
// 32 MiB of records in flight at most, whatever the backlog in Kafka.
const DEFAULT_MAX_BATCH_BYTES: usize = 32 << 20;
// Above Kafka's default message.max.bytes tenfold: anything bigger is not a
// row change Debezium would write, and parsing it would only cost memory.
const DEFAULT_MAX_RECORD_BYTES: usize = 10 << 20;
// Eventual entities may wait this long for more changes to the same keys.
const DEFAULT_EVENTUAL_LINGER: Duration = Duration::from_millis(100);
// Commit timestamps come from the database host, ages from ours: allow drift.
const DEFAULT_CLOCK_SKEW_MARGIN: Duration = Duration::from_secs(30);
// Retrying Redis faster than this only adds load to a struggling server.
const DEFAULT_MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);
/// Replication on a LAN takes well under a millisecond; a replica a second
/// behind is one to alert on, and the batch is retried meanwhile.
const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the Redis client waits for any reply before it reconnects.
pub(crate) const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
// A registry slower than this is treated as unavailable for this attempt.
const DEFAULT_REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);
// A lookup slower than this holds up its partition; retry or escalate instead.
const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
// Three tries ride out a replica failover; then the namespace is escalated.
const DEFAULT_LOOKUP_ATTEMPTS: u32 = 3;
// Beyond this many children one namespace bump is cheaper than the keys.
const DEFAULT_FANOUT_MAX_ROWS: usize = 10_000;
// Loopback by default: metrics are for a local scraper or a sidecar.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9799";

/// Reads, parses and validates a config file; `env` supplies overrides.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })?;
    parse(&path.display().to_string(), &text, env)
}

pub fn parse(path: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|span| line_col(text, span.start)).unwrap_or((1, 1));
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    raw.validate(&Validator { path, text }, env)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Builds errors that point at a spanned value of the file being validated.
pub(crate) struct Validator<'a> {
    path: &'a str,
    text: &'a str,
}

impl Validator<'_> {
    fn error<T>(
        &self,
        span: std::ops::Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            path: self.path.to_owned(),
            line: line_col(self.text, span.start).0,
            field: field.to_owned(),
            message: message.into(),
        })
    }

    fn duration(&self, value: &Spanned<String>, field: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(value.get_ref()).or_else(|e| {
            self.error(
                value.span(),
                field,
                format!(
                    "expected a duration such as \"10m\" or \"30s\", got {:?} ({e})",
                    value.get_ref()
                ),
            )
        })
    }

    fn optional_duration(&self, value: Option<&Spanned<String>>, field: &str) -> Result<Option<Duration>, ConfigError> {
        value.map(|d| self.duration(d, field)).transpose()
    }

    /// A duration that must not be zero (an interval something waits on).
    fn positive_duration(&self, value: Option<&Spanned<String>>, field: &str) -> Result<Option<Duration>, ConfigError> {
        let Some(d) = value else { return Ok(None) };
        let parsed = self.duration(d, field)?;
        if parsed.is_zero() {
            return self.error(d.span(), field, "expected a positive duration");
        }
        Ok(Some(parsed))
    }

    /// A count that must not be zero (a budget, a limit, a number of tries).
    fn at_least_one<T: Copy + Default + PartialEq>(
        &self,
        value: Option<&Spanned<T>>,
        field: &str,
    ) -> Result<Option<T>, ConfigError> {
        match value {
            Some(n) if *n.get_ref() == T::default() => self.error(n.span(), field, "expected at least 1"),
            Some(n) => Ok(Some(*n.get_ref())),
            None => Ok(None),
        }
    }

    /// One of a few words, each standing for a typed value; `choices` in the
    /// order the error message lists them, `default` when the field is unset.
    fn choice<T: Copy>(
        &self,
        value: Option<String>,
        span: std::ops::Range<usize>,
        field: &str,
        choices: &[(&str, T)],
        default: T,
    ) -> Result<T, ConfigError> {
        let Some(text) = value else { return Ok(default) };
        match choices.iter().find(|(word, _)| *word == text) {
            Some((_, typed)) => Ok(*typed),
            None => {
                let words: Vec<String> = choices.iter().map(|(word, _)| format!("{word:?}")).collect();
                self.error(span, field, format!("expected {}, got {text:?}", words.join(" or ")))
            }
        }
    }

    fn templates(&self, texts: &Spanned<Vec<String>>, field: &str) -> Result<Vec<Template>, ConfigError> {
        texts
            .get_ref()
            .iter()
            .map(|text| {
                Template::parse(text).or_else(|e| self.error(texts.span(), field, format!("template {text:?}: {e}")))
            })
            .collect()
    }
}

impl RawConfig {
    /// One function per section, called in the order the sections have
    /// always been checked, so the first error reported stays the same.
    pub(crate) fn validate(
        self,
        v: &Validator<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let instance_id_span = self.source.get_ref().instance_id.as_ref().map(|i| i.span());
        let (mut source, instance_id) = self.source.into_inner().validate(v, env)?;
        let redis_span = self.redis.span();
        let redis = self.redis.into_inner().validate(v, env)?;
        let (admin_listen, probe) = validate_admin(self.admin.map(Spanned::into_inner), v, env)?;
        // "auto" is named after the admin port, known only now; with port 0
        // (the kernel picks one) every replica on a host would share a name.
        if instance_id.as_deref() == Some("auto") && admin_listen.port() == 0 {
            return v.error(
                instance_id_span.unwrap_or(0..0),
                "source.instance_id",
                "\"auto\" is named after the admin port, but admin.listen has port 0: set an explicit id",
            );
        }
        source.instance_id = instance_id.map(|id| {
            if id == "auto" {
                auto_instance_id(admin_listen)
            } else {
                id
            }
        });
        let plan = validate_plan(self.plan.map(Spanned::into_inner), v)?;
        let lookup = validate_lookup(self.lookup.map(Spanned::into_inner), v, env)?;
        let avro = validate_avro(self.avro, v, env)?;
        let notices = self.notices.map(|n| n.into_inner().validate());
        let connect = match self.connect {
            Some(raw) => Some(raw.into_inner().validate(v, env)?),
            None => None,
        };
        let dead_letters = validate_dead_letters(self.dead_letters.map(Spanned::into_inner), v, env)?;
        if self.entities.is_empty() {
            return v.error(
                redis_span,
                "entity",
                "expected at least one [[entity]]: without one nothing is ever invalidated",
            );
        }
        let mut entities = Vec::new();
        let mut tables = HashSet::new();
        for (index, spanned) in self.entities.into_iter().enumerate() {
            let context = EntityContext {
                index,
                version_ttl: redis.version_ttl,
                has_lookup: lookup.is_some(),
                mysql_lookup: lookup
                    .as_ref()
                    .is_some_and(|l| crate::lookup::mysql::is_mysql_url(&l.url)),
            };
            entities.push(spanned.into_inner().validate(&context, &mut tables, v)?);
        }
        Ok(Settings {
            source,
            redis,
            admin_listen,
            probe,
            plan,
            dead_letters,
            lookup,
            avro,
            notices,
            connect,
            graph: Graph::new(entities),
        })
    }
}

impl RawSource {
    /// The source settings, and the static-membership id still to resolve
    /// ("auto" needs the admin address); None when membership is dynamic.
    fn validate(
        self,
        v: &Validator<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(SourceSettings, Option<String>), ConfigError> {
        let subscription = self.subscription(v)?;
        for (name, value) in &self.librdkafka {
            if crate::kafka_client::is_forced(name) {
                return v.error(
                    value.span(),
                    &format!("source.librdkafka.{name}"),
                    "is set by cdc-invalidator itself (offsets are stored only after Redis acknowledged); remove it",
                );
            }
        }
        let max_idle = v.optional_duration(self.max_idle.as_ref(), "source.max_idle")?;
        let liveness_topics = match &self.liveness_topics {
            Some(t) if t.get_ref().is_empty() => {
                return v.error(t.span(), "source.liveness_topics", "expected at least one topic")
            }
            Some(t) => Some(t.get_ref().clone()),
            None => None,
        };
        let group_protocol_span = self.group_protocol.as_ref().map(|p| p.span()).unwrap_or(0..0);
        let group_protocol = v.choice(
            env(ENV_GROUP_PROTOCOL).or_else(|| self.group_protocol.as_ref().map(|p| p.get_ref().clone())),
            group_protocol_span,
            "source.group_protocol",
            &[
                ("classic", GroupProtocol::Classic),
                ("consumer", GroupProtocol::Consumer),
            ],
            GroupProtocol::Classic,
        )?;
        if group_protocol == GroupProtocol::Consumer {
            if let Some((name, value)) = self
                .librdkafka
                .iter()
                .find(|(name, _)| CLASSIC_ONLY_RDKAFKA_SETTINGS.contains(&name.as_str()))
            {
                return v.error(
                    value.span(),
                    &format!("source.librdkafka.{name}"),
                    "is not used with group_protocol = \"consumer\" (the broker sets it: group.consumer.*); remove it",
                );
            }
        }
        // An empty CDC_INSTANCE_ID turns static membership off whatever the
        // file says (one config shared by a fleet, one replica opting out).
        let env_instance_id = env(ENV_INSTANCE_ID);
        if let (None, Some(i)) = (&env_instance_id, &self.instance_id) {
            if i.get_ref().is_empty() {
                return v.error(i.span(), "source.instance_id", "expected a non-empty id or \"auto\"");
            }
        }
        let instance_id = env_instance_id
            .or_else(|| self.instance_id.as_ref().map(|i| i.get_ref().clone()))
            .filter(|id| !id.is_empty());
        let settings = SourceSettings {
            brokers: env(ENV_KAFKA_BROKERS).unwrap_or_else(|| self.brokers.get_ref().clone()),
            group_id: env(ENV_KAFKA_GROUP).unwrap_or_else(|| self.group_id.get_ref().clone()),
            subscription,
            librdkafka: self
                .librdkafka
                .into_iter()
                .map(|(k, val)| (k, val.into_inner()))
                .collect(),
            instance_id: None,
            group_protocol,
            liveness: LivenessSettings {
                topics: liveness_topics,
                max_idle,
                interval: default_liveness_interval(),
            },
        };
        Ok((settings, instance_id))
    }

    fn subscription(&self, v: &Validator<'_>) -> Result<Subscription, ConfigError> {
        match (&self.topics, &self.topic_regex) {
            (Some(topics), None) => {
                // librdkafka refuses the whole subscription (Invalid argument)
                // for an empty list, an empty name or a repeated one.
                let names = topics.get_ref();
                if names.is_empty() {
                    return v.error(topics.span(), "source.topics", "expected at least one topic");
                }
                if let Some(bad) = names.iter().find(|t| t.is_empty() || t.starts_with('^')) {
                    return v.error(
                        topics.span(),
                        "source.topics",
                        format!("{bad:?} is not a topic name (patterns go in `topic_regex`)"),
                    );
                }
                let mut seen = std::collections::BTreeSet::new();
                if let Some(repeated) = names.iter().find(|t| !seen.insert(t.as_str())) {
                    return v.error(topics.span(), "source.topics", format!("{repeated:?} is listed twice"));
                }
                Ok(Subscription::Topics(names.clone()))
            }
            (None, Some(pattern)) => match crate::topic_pattern::TopicPattern::new(pattern.get_ref()) {
                Ok(compiled) => Ok(Subscription::Regex(compiled)),
                Err(reason) => v.error(pattern.span(), "source.topic_regex", reason),
            },
            (Some(topics), Some(_)) => v.error(
                topics.span(),
                "source.topics",
                "set either `topics` or `topic_regex`, not both",
            ),
            (None, None) => v.error(
                self.group_id.span(),
                "source",
                "expected `topics = [...]` or `topic_regex = \"...\"`",
            ),
        }
    }
}

impl RawRedis {
    fn validate(self, v: &Validator<'_>, env: &dyn Fn(&str) -> Option<String>) -> Result<RedisSettings, ConfigError> {
        let url = env(ENV_REDIS_URL).unwrap_or_else(|| self.url.get_ref().clone());
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return v.error(
                self.url.span(),
                "redis.url",
                format!("expected a redis:// or rediss:// URL, got {:?}", redact_url(&url)),
            );
        }
        let version_ttl = v.duration(&self.version_ttl, "redis.version_ttl")?;
        let max_retry_backoff = v
            .optional_duration(self.max_retry_backoff.as_ref(), "redis.max_retry_backoff")?
            .unwrap_or(DEFAULT_MAX_RETRY_BACKOFF);
        let loss_check_interval = v
            .positive_duration(self.loss_check_interval.as_ref(), "redis.loss_check_interval")?
            .unwrap_or_else(default_loss_check_interval);
        let wait_replicas = self.wait_replicas.as_ref().map_or(0, |n| *n.get_ref());
        let wait_timeout = match &self.wait_timeout {
            Some(d) => {
                let timeout = v.duration(d, "redis.wait_timeout")?;
                // WAIT's own 0 means "block forever": a stuck replica would
                // then hang the applier past every shutdown bound.
                if timeout.as_millis() == 0 {
                    return v.error(
                        d.span(),
                        "redis.wait_timeout",
                        "expected at least 1ms (WAIT 0 blocks forever)",
                    );
                }
                if timeout >= REDIS_RESPONSE_TIMEOUT {
                    return v.error(
                        d.span(),
                        "redis.wait_timeout",
                        format!("expected less than {REDIS_RESPONSE_TIMEOUT:?}, the client's response timeout"),
                    );
                }
                timeout
            }
            None => DEFAULT_WAIT_TIMEOUT,
        };
        if let (Some(n), true) = (&self.wait_replicas, self.cluster) {
            if *n.get_ref() > 0 {
                return v.error(
                    n.span(),
                    "redis.wait_replicas",
                    "not supported with cluster = true yet (WAIT answers for one node); use 0",
                );
            }
        }
        Ok(RedisSettings {
            url,
            version_prefix: self.version_prefix.get_ref().clone(),
            version_ttl,
            max_retry_backoff,
            cluster: self.cluster,
            loss_check_interval,
            wait_replicas,
            wait_timeout,
        })
    }
}

/// The admin listener's address and the readiness probe's timing.
fn validate_admin(
    raw: Option<RawAdmin>,
    v: &Validator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(std::net::SocketAddr, ProbeSettings), ConfigError> {
    let listen = match env(ENV_ADMIN_LISTEN).or_else(|| raw.as_ref().map(|a| a.listen.get_ref().clone())) {
        Some(text) => match text.parse() {
            Ok(addr) => addr,
            Err(_) => {
                let span = raw.as_ref().map(|a| a.listen.span()).unwrap_or(0..0);
                return v.error(
                    span,
                    "admin.listen",
                    format!("expected host:port such as \"127.0.0.1:9799\", got {text:?}"),
                );
            }
        },
        None => {
            // A constant that the unit tests parse.
            #[allow(clippy::expect_used)]
            let default = DEFAULT_ADMIN_LISTEN.parse().expect("default admin address parses");
            default
        }
    };
    let probe = ProbeSettings {
        interval: v
            .optional_duration(
                raw.as_ref().and_then(|a| a.probe_interval.as_ref()),
                "admin.probe_interval",
            )?
            .unwrap_or_else(default_probe_interval),
        timeout: v
            .optional_duration(
                raw.as_ref().and_then(|a| a.probe_timeout.as_ref()),
                "admin.probe_timeout",
            )?
            .unwrap_or_else(default_probe_timeout),
    };
    if probe.interval.is_zero() || probe.timeout.is_zero() {
        return v.error(
            0..0,
            "admin.probe_interval",
            "probe interval and timeout must be positive",
        );
    }
    Ok((listen, probe))
}

fn validate_plan(raw: Option<RawPlan>, v: &Validator<'_>) -> Result<PlanSettings, ConfigError> {
    let raw = raw.as_ref();
    Ok(PlanSettings {
        max_batch_records: v
            .at_least_one(raw.and_then(|p| p.max_batch_records.as_ref()), "plan.max_batch_records")?
            .unwrap_or(DEFAULT_MAX_BATCH_RECORDS),
        max_batch_bytes: v
            .at_least_one(raw.and_then(|p| p.max_batch_bytes.as_ref()), "plan.max_batch_bytes")?
            .unwrap_or(DEFAULT_MAX_BATCH_BYTES),
        max_record_bytes: v
            .at_least_one(raw.and_then(|p| p.max_record_bytes.as_ref()), "plan.max_record_bytes")?
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES),
        escalate_above_lag: match raw.and_then(|p| p.escalate_above_lag.as_ref()) {
            Some(n) if *n.get_ref() < 1 => {
                return v.error(
                    n.span(),
                    "plan.escalate_above_lag",
                    "expected a positive number of records",
                )
            }
            Some(n) => Some(*n.get_ref()),
            None => None,
        },
        eventual_linger: v
            .optional_duration(raw.and_then(|p| p.eventual_linger.as_ref()), "plan.eventual_linger")?
            .unwrap_or(DEFAULT_EVENTUAL_LINGER),
        clock_skew_margin: v
            .optional_duration(raw.and_then(|p| p.clock_skew_margin.as_ref()), "plan.clock_skew_margin")?
            .unwrap_or(DEFAULT_CLOCK_SKEW_MARGIN),
    })
}

fn validate_lookup(
    raw: Option<RawLookup>,
    v: &Validator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<LookupSettings>, ConfigError> {
    Ok(match raw {
        Some(raw) => Some(LookupSettings {
            url: env(ENV_LOOKUP_URL).unwrap_or_else(|| raw.url.get_ref().clone()),
            timeout: v
                .optional_duration(raw.timeout.as_ref(), "lookup.timeout")?
                .unwrap_or(DEFAULT_LOOKUP_TIMEOUT),
            attempts: v
                .at_least_one(raw.attempts.as_ref(), "lookup.attempts")?
                .unwrap_or(DEFAULT_LOOKUP_ATTEMPTS),
        }),
        None => env(ENV_LOOKUP_URL).map(|url| LookupSettings {
            url,
            timeout: DEFAULT_LOOKUP_TIMEOUT,
            attempts: DEFAULT_LOOKUP_ATTEMPTS,
        }),
    })
}

fn validate_avro(
    raw: Option<Spanned<RawAvro>>,
    v: &Validator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<crate::decode::SchemaSources>, ConfigError> {
    let Some(raw) = raw else {
        // The registry alone may come from the environment.
        return Ok(env(ENV_SCHEMA_REGISTRY_URL).map(|url| crate::decode::SchemaSources {
            registry_url: Some(url),
            username: env(ENV_SCHEMA_REGISTRY_USER),
            password: env(ENV_SCHEMA_REGISTRY_PASSWORD),
            schemas_dir: None,
            timeout: DEFAULT_REGISTRY_TIMEOUT,
        }));
    };
    let raw_span = raw.span();
    let raw = raw.into_inner();
    let sources = crate::decode::SchemaSources {
        registry_url: env(ENV_SCHEMA_REGISTRY_URL).or_else(|| raw.registry_url.map(Spanned::into_inner)),
        username: env(ENV_SCHEMA_REGISTRY_USER).or_else(|| raw.username.map(Spanned::into_inner)),
        password: env(ENV_SCHEMA_REGISTRY_PASSWORD).or_else(|| raw.password.map(Spanned::into_inner)),
        schemas_dir: raw.schemas_dir.map(|d| PathBuf::from(d.into_inner())),
        timeout: v
            .optional_duration(raw.timeout.as_ref(), "avro.timeout")?
            .unwrap_or(DEFAULT_REGISTRY_TIMEOUT),
    };
    if sources.registry_url.is_none() && sources.schemas_dir.is_none() {
        return v.error(raw_span, "avro", "expected `registry_url` or `schemas_dir` (or both)");
    }
    Ok(Some(sources))
}

impl RawNotices {
    fn validate(self) -> NoticeSettings {
        NoticeSettings {
            redis_channel: self.redis_channel.map(Spanned::into_inner),
            kafka_topic: self.kafka_topic.map(Spanned::into_inner),
            kafka_schema_id: self.kafka_schema_id.map(Spanned::into_inner),
        }
    }
}

impl RawConnect {
    fn validate(self, v: &Validator<'_>, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnectSettings, ConfigError> {
        let url = env(ENV_CONNECT_URL).unwrap_or_else(|| self.url.get_ref().clone());
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return v.error(
                self.url.span(),
                "connect.url",
                format!(
                    "expected an http:// or https:// URL of Kafka Connect's REST API, got {:?}",
                    redact_url(&url)
                ),
            );
        }
        let names = self.connectors.get_ref();
        if names.is_empty() {
            return v.error(
                self.connectors.span(),
                "connect.connectors",
                "expected at least one connector name",
            );
        }
        for (i, name) in names.iter().enumerate() {
            if name.trim().is_empty() || name.contains('/') {
                return v.error(
                    self.connectors.span(),
                    "connect.connectors",
                    format!("{name:?} is not a connector name"),
                );
            }
            if names.iter().take(i).any(|earlier| earlier == name) {
                return v.error(
                    self.connectors.span(),
                    "connect.connectors",
                    format!("{name:?} is listed twice"),
                );
            }
        }
        Ok(ConnectSettings {
            url: url.trim_end_matches('/').to_owned(),
            connectors: names.clone(),
            poll_interval: v
                .positive_duration(self.poll_interval.as_ref(), "connect.poll_interval")?
                .unwrap_or(DEFAULT_CONNECT_POLL_INTERVAL),
        })
    }
}

fn validate_dead_letters(
    raw: Option<RawDeadLetters>,
    v: &Validator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<DeadLetterSettings>, ConfigError> {
    let schema = match raw.as_ref().and_then(|d| d.schema.as_ref()) {
        Some(schema) if !is_plain_identifier(schema.get_ref()) => {
            return v.error(
                schema.span(),
                "dead_letters.schema",
                "expected a plain PostgreSQL identifier (lowercase letters, digits, `_`; at most 63 bytes)",
            )
        }
        Some(schema) => schema.get_ref().clone(),
        None => DEFAULT_DEAD_LETTER_SCHEMA.to_owned(),
    };
    Ok(env(ENV_DEAD_LETTERS_URL)
        .or_else(|| raw.map(|d| d.url.into_inner()))
        .map(|url| DeadLetterSettings { url, schema }))
}

/// What an `[[entity]]` is checked against besides its own fields.
struct EntityContext {
    index: usize,
    version_ttl: Duration,
    has_lookup: bool,
    /// The lookup database is MySQL or MariaDB: fan-out queries bind `?`.
    mysql_lookup: bool,
}

impl EntityContext {
    fn field(&self, name: &str) -> String {
        format!("entity[{}].{name}", self.index)
    }
}

impl RawEntity {
    /// `tables` holds the tables of the entities before this one.
    fn validate(
        self,
        at: &EntityContext,
        tables: &mut HashSet<String>,
        v: &Validator<'_>,
    ) -> Result<Entity, ConfigError> {
        let table = self.table.get_ref().clone();
        if table.split('.').count() != 2 || table.split('.').any(str::is_empty) {
            return v.error(
                self.table.span(),
                &at.field("table"),
                format!("expected \"schema.table\" (or \"database.table\" for MySQL), got {table:?}"),
            );
        }
        if !tables.insert(table.clone()) {
            return v.error(
                self.table.span(),
                &at.field("table"),
                format!("table {table:?} is declared twice; put all its keys in one [[entity]]"),
            );
        }
        if self.keys.get_ref().is_empty() {
            return v.error(
                self.keys.span(),
                &at.field("keys"),
                "expected at least one key template",
            );
        }
        let keys = v.templates(&self.keys, &at.field("keys"))?;
        let consistency = v.choice(
            self.consistency.as_ref().map(|c| c.get_ref().clone()),
            self.consistency.as_ref().map(|c| c.span()).unwrap_or(0..0),
            &at.field("consistency"),
            &[("strong", Consistency::Strong), ("eventual", Consistency::Eventual)],
            Consistency::Eventual,
        )?;
        let max_cache_ttl = match &self.max_cache_ttl {
            Some(d) => {
                let ttl = v.duration(d, &at.field("max_cache_ttl"))?;
                if ttl > at.version_ttl {
                    return v.error(
                        d.span(),
                        &at.field("max_cache_ttl"),
                        format!(
                            "is longer than redis.version_ttl ({}): a version record could expire while data it guards is still cached",
                            humantime::format_duration(at.version_ttl)
                        ),
                    );
                }
                Some(ttl)
            }
            None => None,
        };
        let namespace = match &self.namespace {
            Some(ns) if ns.get_ref().is_empty() => {
                return v.error(ns.span(), &at.field("namespace"), "expected a non-empty name")
            }
            Some(ns) => Some(ns.get_ref().clone()),
            None => None,
        };
        // "default" unless declared: trusting an incomplete old image
        // would render wrong keys silently; distrusting a full one only
        // costs escalations.
        let full_before_image = v.choice(
            self.replica_identity.as_ref().map(|r| r.get_ref().clone()),
            self.replica_identity.as_ref().map(|r| r.span()).unwrap_or(0..0),
            &at.field("replica_identity"),
            &[("full", true), ("default", false)],
            false,
        )?;
        let mut fanouts = Vec::new();
        for (f, spanned) in self.fanout.iter().enumerate() {
            fanouts.push(validate_fanout(
                spanned,
                &format!("entity[{}].fanout[{f}]", at.index),
                at,
                v,
            )?);
        }
        Ok(Entity {
            table,
            namespace,
            consistency,
            max_cache_ttl,
            keys,
            invalidate_on_snapshot: self.invalidate_on_snapshot,
            full_before_image,
            fanouts,
        })
    }
}

/// One `[[entity.fanout]]`; `name` is its field path, e.g. `entity[0].fanout[1]`.
fn validate_fanout(
    spanned: &Spanned<RawFanout>,
    name: &str,
    at: &EntityContext,
    v: &Validator<'_>,
) -> Result<Fanout, ConfigError> {
    let fanout = spanned.get_ref();
    let field = |f: &str| format!("{name}.{f}");
    if !at.has_lookup {
        return v.error(
            spanned.span(),
            &field("query"),
            "fan-out lookups need a [lookup] url (a read replica: PostgreSQL, MySQL or MariaDB)",
        );
    }
    let placeholders = if at.mysql_lookup {
        crate::lookup::mysql::placeholders(fanout.query.get_ref())
    } else {
        (1..=fanout.bind.get_ref().len() + 1)
            .take_while(|n| fanout.query.get_ref().contains(&format!("${n}")))
            .count()
    };
    if at.mysql_lookup && placeholders != fanout.bind.get_ref().len() {
        return v.error(
            fanout.bind.span(),
            &field("bind"),
            format!(
                "{} bind column(s) for a MySQL query with {placeholders} `?` placeholder(s)",
                fanout.bind.get_ref().len()
            ),
        );
    }
    if placeholders != fanout.bind.get_ref().len() {
        return v.error(
            fanout.bind.span(),
            &field("bind"),
            format!(
                "{} bind column(s) for a query using ${}..${placeholders}",
                fanout.bind.get_ref().len(),
                1.min(placeholders)
            ),
        );
    }
    let keys = v.templates(&fanout.keys, &field("keys"))?;
    if keys.is_empty() {
        return v.error(fanout.keys.span(), &field("keys"), "expected at least one key template");
    }
    Ok(Fanout {
        query: fanout.query.get_ref().clone(),
        bind: fanout.bind.get_ref().clone(),
        keys,
        max_rows: v
            .at_least_one(fanout.max_rows.as_ref(), &field("max_rows"))?
            .unwrap_or(DEFAULT_FANOUT_MAX_ROWS),
        namespace: fanout.namespace.as_ref().map(|n| n.get_ref().clone()),
    })
}

/// A name PostgreSQL takes without quoting; the schema is spliced into DDL.
fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

/// Hides the password of a URL for messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "g"
topics = ["shop.public.products"]

[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"

[[entity]]
table = "public.products"
namespace = "product"
max_cache_ttl = "10m"
keys = ["product:{id}"]
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn error_of(text: &str) -> String {
        parse("shop.toml", text, &no_env).unwrap_err().to_string()
    }

    #[test]
    fn base_config_validates_with_defaults() {
        let s = parse("shop.toml", BASE, &no_env).unwrap();
        assert_eq!(s.redis.version_prefix, "ver:");
        assert_eq!(s.plan.max_batch_records, DEFAULT_MAX_BATCH_RECORDS);
        assert_eq!(s.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(s.graph.entities().len(), 1);
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = BASE.replace("group_id = \"g\"", "group_id = \"g\"\ngroup = \"oops\"");
        let msg = error_of(&text);
        assert!(msg.starts_with("shop.toml:5:"), "{msg}");
        assert!(msg.contains("unknown field `group`"), "{msg}");
    }

    #[test]
    fn syntax_error_names_line() {
        let msg = error_of(&BASE.replace("version_ttl = \"1h\"", "version_ttl = "));
        assert!(msg.starts_with("shop.toml:9:"), "{msg}");
    }

    #[test]
    fn bad_duration_names_field_and_expectation() {
        let msg = error_of(&BASE.replace("max_cache_ttl = \"10m\"", "max_cache_ttl = \"ten minutes\""));
        assert!(
            msg.starts_with("shop.toml:14: field `entity[0].max_cache_ttl`"),
            "{msg}"
        );
        assert!(msg.contains("expected a duration"), "{msg}");
    }

    #[test]
    fn version_ttl_shorter_than_cache_ttl_is_refused() {
        let msg = error_of(&BASE.replace("version_ttl = \"1h\"", "version_ttl = \"5m\""));
        assert!(msg.contains("field `entity[0].max_cache_ttl`"), "{msg}");
        assert!(msg.contains("longer than redis.version_ttl"), "{msg}");
    }

    #[test]
    fn bad_template_is_refused() {
        let msg = error_of(&BASE.replace("product:{id}", "product:{id"));
        assert!(msg.contains("field `entity[0].keys`"), "{msg}");
        assert!(msg.contains("unclosed"), "{msg}");
    }

    #[test]
    fn bad_consistency_is_refused() {
        let msg = error_of(&BASE.replace(
            "namespace = \"product\"",
            "namespace = \"product\"\nconsistency = \"weak\"",
        ));
        assert!(msg.contains("expected \"strong\" or \"eventual\""), "{msg}");
    }

    #[test]
    fn topics_and_regex_are_exclusive() {
        let msg = error_of(&BASE.replace("topics = [", "topic_regex = \"shop\\\\..*\"\ntopics = ["));
        assert!(msg.contains("not both"), "{msg}");
    }

    #[test]
    fn instance_id_from_file_or_environment_and_an_empty_environment_turns_it_off() {
        let s = parse("shop.toml", BASE, &no_env).unwrap();
        assert_eq!(s.source.instance_id, None);
        let text = BASE.replace("group_id = \"g\"", "group_id = \"g\"\ninstance_id = \"auto\"");
        let s = parse("shop.toml", &text, &no_env).unwrap();
        let auto = s.source.instance_id.unwrap();
        assert!(auto.ends_with("-9799"), "{auto}");
        let env = |value: &'static str| move |name: &str| (name == ENV_INSTANCE_ID).then(|| value.to_owned());
        let s = parse("shop.toml", &text, &env("replica-7")).unwrap();
        assert_eq!(s.source.instance_id.as_deref(), Some("replica-7"));
        let s = parse("shop.toml", &text, &env("")).unwrap();
        assert_eq!(s.source.instance_id, None, "an empty CDC_INSTANCE_ID turns it off");
        let empty = BASE.replace("group_id = \"g\"", "group_id = \"g\"\ninstance_id = \"\"");
        let msg = error_of(&empty);
        assert!(msg.contains("field `source.instance_id`"), "{msg}");
    }

    #[test]
    fn group_protocol_defaults_to_classic_and_takes_consumer() {
        let s = parse("shop.toml", BASE, &no_env).unwrap();
        assert_eq!(s.source.group_protocol, GroupProtocol::Classic);
        let text = BASE.replace("group_id = \"g\"", "group_id = \"g\"\ngroup_protocol = \"consumer\"");
        let s = parse("shop.toml", &text, &no_env).unwrap();
        assert_eq!(s.source.group_protocol, GroupProtocol::Consumer);
        let env = |name: &str| (name == ENV_GROUP_PROTOCOL).then(|| "classic".to_owned());
        let s = parse("shop.toml", &text, &env).unwrap();
        assert_eq!(s.source.group_protocol, GroupProtocol::Classic, "the environment wins");
    }

    #[test]
    fn unknown_group_protocol_names_line_and_field() {
        let msg = error_of(&BASE.replace("group_id = \"g\"", "group_id = \"g\"\ngroup_protocol = \"kip848\""));
        assert!(msg.starts_with("shop.toml:5: field `source.group_protocol`"), "{msg}");
        assert!(msg.contains("\"classic\" or \"consumer\""), "{msg}");
    }

    #[test]
    fn classic_only_settings_are_refused_with_the_consumer_protocol() {
        let text = BASE.replace(
            "topics = [\"shop.public.products\"]",
            "topics = [\"shop.public.products\"]\ngroup_protocol = \"consumer\"\nlibrdkafka = { \"session.timeout.ms\" = \"10000\" }",
        );
        let msg = error_of(&text);
        assert!(
            msg.starts_with("shop.toml:7: field `source.librdkafka.session.timeout.ms`"),
            "{msg}"
        );
        // The same setting is fine with the classic protocol.
        parse("shop.toml", &text.replace("\"consumer\"", "\"classic\""), &no_env).unwrap();
        let msg = error_of(&BASE.replace(
            "topics = [\"shop.public.products\"]",
            "topics = [\"shop.public.products\"]\nlibrdkafka = { \"group.protocol\" = \"consumer\" }",
        ));
        assert!(msg.contains("source.librdkafka.group.protocol"), "{msg}");
    }

    #[test]
    fn forced_librdkafka_setting_is_refused() {
        let msg = error_of(&BASE.replace(
            "topics = [\"shop.public.products\"]",
            "topics = [\"shop.public.products\"]\nlibrdkafka = { \"enable.auto.offset.store\" = \"true\" }",
        ));
        assert!(msg.contains("source.librdkafka.enable.auto.offset.store"), "{msg}");
    }

    #[test]
    fn duplicate_table_is_refused() {
        let text = format!("{BASE}\n[[entity]]\ntable = \"public.products\"\nkeys = [\"p:{{id}}\"]\n");
        let msg = error_of(&text);
        assert!(msg.contains("declared twice"), "{msg}");
    }

    #[test]
    fn fanout_needs_a_lookup_database_and_matching_binds() {
        let fanout = "\n[[entity.fanout]]\nquery = \"SELECT id FROM p WHERE c = $1 AND d = $2\"\nbind = [\"id\"]\nkeys = [\"p:{id}\"]\n";
        let msg = error_of(&format!("{BASE}{fanout}"));
        assert!(
            msg.contains("entity[0].fanout[0].query") && msg.contains("[lookup] url"),
            "{msg}"
        );
        let with_lookup = format!(
            "{}\n[lookup]\nurl = \"postgres://h/db\"\n{}{fanout}",
            BASE.split("[[entity]]").next().unwrap(),
            &BASE[BASE.find("[[entity]]").unwrap()..]
        );
        let msg = error_of(&with_lookup);
        assert!(
            msg.contains("entity[0].fanout[0].bind") && msg.contains("1 bind column(s)"),
            "{msg}"
        );
    }

    #[test]
    fn environment_overrides_addresses() {
        let env = |name: &str| match name {
            ENV_REDIS_URL => Some("redis://:secret@10.1.1.1:6380".to_owned()),
            ENV_KAFKA_BROKERS => Some("k1:9092".to_owned()),
            _ => None,
        };
        let s = parse("shop.toml", BASE, &env).unwrap();
        assert_eq!(s.source.brokers, "k1:9092");
        assert_eq!(s.redis.url, "redis://:secret@10.1.1.1:6380");
    }

    #[test]
    fn regex_subscription_is_anchored() {
        let text = BASE.replace(
            "topics = [\"shop.public.products\"]",
            "topic_regex = \"shop\\\\.public\\\\..*\"",
        );
        let s = parse("shop.toml", &text, &no_env).unwrap();
        assert_eq!(
            s.source.subscription.patterns(),
            vec!["^(shop\\.public\\..*)$".to_owned()]
        );
    }

    #[test]
    fn a_regex_librdkafka_would_refuse_names_line_and_field() {
        let text = BASE.replace(
            "topics = [\"shop.public.products\"]",
            "topic_regex = \"shop\\\\.(?:products|reviews)\"",
        );
        let msg = error_of(&text);
        assert!(msg.starts_with("shop.toml:5: field `source.topic_regex`"), "{msg}");
        assert!(msg.contains("POSIX extended"), "{msg}");
    }

    #[test]
    fn repeated_or_pattern_like_topics_are_refused() {
        let msg = error_of(&BASE.replace("topics = [\"shop.public.products\"]", "topics = [\"a\", \"b\", \"a\"]"));
        assert!(
            msg.contains("field `source.topics`") && msg.contains("\"a\" is listed twice"),
            "{msg}"
        );
        let msg = error_of(&BASE.replace("topics = [\"shop.public.products\"]", "topics = [\"^shop\"]"));
        assert!(msg.contains("patterns go in `topic_regex`"), "{msg}");
    }

    #[test]
    fn dead_letters_get_their_own_schema() {
        let with = |section: &str| BASE.replace("[[entity]]", &format!("{section}\n[[entity]]"));
        let s = parse("shop.toml", &with("[dead_letters]\nurl = \"postgres://h/db\""), &no_env).unwrap();
        assert_eq!(
            s.dead_letters,
            Some(DeadLetterSettings {
                url: "postgres://h/db".into(),
                schema: DEFAULT_DEAD_LETTER_SCHEMA.into()
            })
        );
        let text = with("[dead_letters]\nurl = \"postgres://h/db\"\nschema = \"DL; drop\"");
        let msg = error_of(&text);
        assert!(msg.contains("field `dead_letters.schema`"), "{msg}");
        assert!(msg.contains("plain PostgreSQL identifier"), "{msg}");
    }

    /// One refusal per section, with the whole message: the sections are
    /// validated by functions of their own, and each must still name the
    /// file, the line and the field exactly as before.
    #[test]
    fn every_section_names_file_line_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "url = \"redis://127.0.0.1:6379\"",
                "url = \"http://127.0.0.1:6379\"",
                "shop.toml:8: field `redis.url`: expected a redis:// or rediss:// URL, got \"http://127.0.0.1:6379\"",
            ),
            (
                "version_ttl = \"1h\"",
                "version_ttl = \"1h\"\nloss_check_interval = \"0s\"",
                "shop.toml:10: field `redis.loss_check_interval`: expected a positive duration",
            ),
            (
                "version_ttl = \"1h\"",
                "version_ttl = \"1h\"\nwait_timeout = \"0ms\"",
                "shop.toml:10: field `redis.wait_timeout`: expected at least 1ms (WAIT 0 blocks forever)",
            ),
            (
                "version_ttl = \"1h\"",
                "version_ttl = \"1h\"\ncluster = true\nwait_replicas = 1",
                "shop.toml:11: field `redis.wait_replicas`: not supported with cluster = true yet (WAIT answers for one node); use 0",
            ),
            (
                "[[entity]]",
                "[admin]\nlisten = \"localhost\"\n\n[[entity]]",
                "shop.toml:12: field `admin.listen`: expected host:port such as \"127.0.0.1:9799\", got \"localhost\"",
            ),
            (
                "[[entity]]",
                "[admin]\nlisten = \"127.0.0.1:0\"\nprobe_timeout = \"soon\"\n\n[[entity]]",
                "shop.toml:13: field `admin.probe_timeout`: expected a duration such as \"10m\" or \"30s\", got \"soon\" (expected number at 0)",
            ),
            (
                "[[entity]]",
                "[plan]\nmax_batch_bytes = 0\n\n[[entity]]",
                "shop.toml:12: field `plan.max_batch_bytes`: expected at least 1",
            ),
            (
                "[[entity]]",
                "[plan]\nescalate_above_lag = 0\n\n[[entity]]",
                "shop.toml:12: field `plan.escalate_above_lag`: expected a positive number of records",
            ),
            (
                "[[entity]]",
                "[lookup]\nurl = \"postgres://x\"\nattempts = 0\n\n[[entity]]",
                "shop.toml:13: field `lookup.attempts`: expected at least 1",
            ),
            (
                "[[entity]]",
                "[avro]\ntimeout = \"5s\"\n\n[[entity]]",
                "shop.toml:11: field `avro`: expected `registry_url` or `schemas_dir` (or both)",
            ),
            (
                "[[entity]]",
                "[connect]\nurl = \"connect:8083\"\nconnectors = [\"c\"]\n\n[[entity]]",
                "shop.toml:12: field `connect.url`: expected an http:// or https:// URL of Kafka Connect's REST API, got \"connect:8083\"",
            ),
            (
                "[[entity]]",
                "[connect]\nurl = \"http://connect:8083\"\nconnectors = [\"c\", \"c\"]\n\n[[entity]]",
                "shop.toml:13: field `connect.connectors`: \"c\" is listed twice",
            ),
            (
                "[[entity]]",
                "[connect]\nurl = \"http://connect:8083\"\nconnectors = [\"c\"]\npoll_interval = \"0s\"\n\n[[entity]]",
                "shop.toml:14: field `connect.poll_interval`: expected a positive duration",
            ),
            (
                "table = \"public.products\"",
                "table = \"products\"",
                "shop.toml:12: field `entity[0].table`: expected \"schema.table\" (or \"database.table\" for MySQL), got \"products\"",
            ),
            (
                "namespace = \"product\"",
                "namespace = \"\"",
                "shop.toml:13: field `entity[0].namespace`: expected a non-empty name",
            ),
            (
                "keys = [\"product:{id}\"]",
                "keys = []",
                "shop.toml:15: field `entity[0].keys`: expected at least one key template",
            ),
            (
                "keys = [\"product:{id}\"]",
                "keys = [\"product:{id}\"]\nreplica_identity = \"nothing\"",
                "shop.toml:16: field `entity[0].replica_identity`: expected \"full\" or \"default\", got \"nothing\"",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(BASE.contains(from), "{from}");
            assert_eq!(&error_of(&BASE.replacen(from, to, 1)), expected);
        }
    }

    #[test]
    fn fanout_keys_and_row_limit_name_their_fields() {
        let base = BASE.replacen("[[entity]]", "[lookup]\nurl = \"postgres://x\"\n\n[[entity]]", 1);
        let fanout = |keys: &str, max_rows: &str| {
            format!("{base}\n[[entity.fanout]]\nquery = \"SELECT id FROM t WHERE c = $1\"\nbind = [\"id\"]\nkeys = {keys}\n{max_rows}")
        };
        assert_eq!(
            error_of(&fanout("[]", "")),
            "shop.toml:23: field `entity[0].fanout[0].keys`: expected at least one key template"
        );
        assert_eq!(
            error_of(&fanout("[\"item:{id\"]", "")),
            "shop.toml:23: field `entity[0].fanout[0].keys`: template \"item:{id\": unclosed `{` at byte 5"
        );
        assert_eq!(
            error_of(&fanout("[\"item:{id}\"]", "max_rows = 0")),
            "shop.toml:24: field `entity[0].fanout[0].max_rows`: expected at least 1"
        );
        let settings = parse("shop.toml", &fanout("[\"item:{id}\"]", ""), &no_env).unwrap();
        let fanouts = &settings.graph.entities()[0].fanouts;
        assert_eq!(fanouts[0].max_rows, DEFAULT_FANOUT_MAX_ROWS);
    }

    #[test]
    fn section_defaults_when_absent() {
        let s = parse("shop.toml", BASE, &no_env).unwrap();
        assert_eq!(s.redis.max_retry_backoff, DEFAULT_MAX_RETRY_BACKOFF);
        assert_eq!(s.redis.loss_check_interval, default_loss_check_interval());
        assert_eq!(s.redis.wait_timeout, DEFAULT_WAIT_TIMEOUT);
        assert_eq!(s.probe.interval, default_probe_interval());
        assert_eq!(s.plan.eventual_linger, DEFAULT_EVENTUAL_LINGER);
        assert_eq!(s.plan.escalate_above_lag, None);
        assert!(s.lookup.is_none() && s.avro.is_none() && s.notices.is_none() && s.connect.is_none());
        let entity = &s.graph.entities()[0];
        assert_eq!(entity.consistency, Consistency::Eventual);
        assert!(!entity.full_before_image);
    }

    #[test]
    fn auto_instance_id_needs_a_fixed_admin_port() {
        let text = BASE.replace("group_id = \"g\"", "group_id = \"g\"\ninstance_id = \"auto\"");
        let fixed = parse(
            "shop.toml",
            &format!("{text}\n[admin]\nlisten = \"127.0.0.1:9799\"\n"),
            &no_env,
        )
        .unwrap();
        assert!(fixed.source.instance_id.unwrap().ends_with("-9799"));
        assert_eq!(
            error_of(&format!("{text}\n[admin]\nlisten = \"127.0.0.1:0\"\n")),
            "shop.toml:5: field `source.instance_id`: \"auto\" is named after the admin port, but admin.listen has port 0: set an explicit id"
        );
    }

    #[test]
    fn redact_hides_password() {
        assert_eq!(redact_url("redis://app:hunter2@h:6379/0"), "redis://app:***@h:6379/0");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }
}
