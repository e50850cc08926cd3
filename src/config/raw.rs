//! The file's shape: one serde type per TOML section, exactly as written.
//! Unknown fields are errors (`deny_unknown_fields`), and every value keeps
//! its byte span (`Spanned`) so that validation can name the line. No
//! default here goes beyond absent, false or empty: what an absent value
//! means, and why, is decided by the section's own module when it validates.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) source: Spanned<RawSource>,
    pub(super) redis: Spanned<RawRedis>,
    #[serde(default)]
    pub(super) admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    pub(super) plan: Option<Spanned<RawPlan>>,
    #[serde(default)]
    pub(super) dead_letters: Option<Spanned<RawDeadLetters>>,
    #[serde(default)]
    pub(super) lookup: Option<Spanned<RawLookup>>,
    #[serde(default)]
    pub(super) avro: Option<Spanned<RawAvro>>,
    #[serde(default)]
    pub(super) notices: Option<Spanned<RawNotices>>,
    #[serde(default)]
    pub(super) connect: Option<Spanned<RawConnect>>,
    #[serde(default)]
    pub(super) messages: Option<Spanned<RawMessages>>,
    #[serde(default, rename = "entity")]
    pub(super) entities: Vec<Spanned<RawEntity>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) brokers: Spanned<String>,
    pub(super) group_id: Spanned<String>,
    #[serde(default)]
    pub(super) topics: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(super) topic_regex: Option<Spanned<String>>,
    /// Passed to librdkafka as they are (security.protocol, sasl.*, ssl.*, ...).
    #[serde(default)]
    pub(super) librdkafka: BTreeMap<String, Spanned<String>>,
    /// Static group membership (`group.instance.id`): a replica restarted
    /// within the session timeout gets its partitions back at once. "auto"
    /// is `<hostname>-<admin port>`.
    #[serde(default)]
    pub(super) instance_id: Option<Spanned<String>>,
    /// Kafka's consumer group protocol: "classic" (JoinGroup/SyncGroup,
    /// cooperative-sticky) or "consumer" (KIP-848: the broker assigns,
    /// session and heartbeat are broker settings).
    #[serde(default)]
    pub(super) group_protocol: Option<Spanned<String>>,
    /// At a clean stop, leave the consumer group before closing, so a
    /// static member's partitions go to the other members at once instead
    /// of waiting for its session to expire (classic protocol only).
    #[serde(default)]
    pub(super) leave_group_on_stop: Option<Spanned<bool>>,
    /// Topics whose high watermarks say whether the source is alive
    /// (Debezium heartbeat topics, `__debezium-heartbeat.<prefix>`); by
    /// default the subscribed topics.
    #[serde(default)]
    pub(super) liveness_topics: Option<Spanned<Vec<String>>>,
    /// Readiness fails and the idle-topics gauge rises when a watched topic
    /// has had no new record for longer than this.
    #[serde(default)]
    pub(super) max_idle: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    /// redis://, rediss:// (TLS); user and password in the URL for ACL users.
    /// Absent when `[redis.sentinel]` names the deployment instead.
    #[serde(default)]
    pub(super) url: Option<Spanned<String>>,
    /// A primary found through Redis Sentinel, followed across failovers.
    #[serde(default)]
    pub(super) sentinel: Option<Spanned<RawSentinel>>,
    /// How long any Redis call may wait for its reply; a connection silent
    /// this long is replaced.
    #[serde(default)]
    pub(super) response_timeout: Option<Spanned<String>>,
    /// `ver:` when unset (`redis::default_version_prefix`).
    #[serde(default)]
    pub(super) version_prefix: Option<Spanned<String>>,
    pub(super) version_ttl: Spanned<String>,
    #[serde(default)]
    pub(super) max_retry_backoff: Option<Spanned<String>>,
    /// The URL names one seed node of a Redis Cluster; the rest is discovered.
    #[serde(default)]
    pub(super) cluster: bool,
    /// How often an idle daemon checks the epoch record for lost writes
    /// (every applied batch checks it too).
    #[serde(default)]
    pub(super) loss_check_interval: Option<Spanned<String>>,
    /// Replicas that must acknowledge a batch's bumps (Redis `WAIT`) before
    /// its offsets may be stored; 0 (the default) waits for none.
    #[serde(default)]
    pub(super) wait_replicas: Option<Spanned<u32>>,
    /// How long one `WAIT` may block before the batch is retried.
    #[serde(default)]
    pub(super) wait_timeout: Option<Spanned<String>>,
}

/// `[redis.sentinel]`: the Sentinels to ask and the master name they watch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentinel {
    pub(super) master_name: Spanned<String>,
    /// `host:port` of each Sentinel.
    pub(super) addresses: Spanned<Vec<String>>,
    /// The primary's and replicas' ACL user and password.
    #[serde(default)]
    pub(super) username: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) password: Option<Spanned<String>>,
    /// The Sentinels' own (their `requirepass`, or an ACL user of theirs).
    #[serde(default)]
    pub(super) sentinel_username: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) sentinel_password: Option<Spanned<String>>,
    /// TLS to the Sentinels and to the data nodes.
    #[serde(default)]
    pub(super) tls: bool,
    /// The database the version records live in.
    #[serde(default)]
    pub(super) db: Option<Spanned<i64>>,
}

// By hand: the passwords must never reach a log line or an error.
impl std::fmt::Debug for RawSentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSentinel")
            .field("master_name", &self.master_name)
            .field("addresses", &self.addresses)
            .field("username", &self.username)
            .field("sentinel_username", &self.sentinel_username)
            .field("tls", &self.tls)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Spanned<String>,
    /// How often the readiness probe pings Redis and the dead-letter store.
    #[serde(default)]
    pub(super) probe_interval: Option<Spanned<String>>,
    /// How long one ping may take before the dependency counts as down.
    #[serde(default)]
    pub(super) probe_timeout: Option<Spanned<String>>,
}

/// Kafka Connect's REST API, to watch the named connectors' status.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnect {
    pub(super) url: Spanned<String>,
    pub(super) connectors: Spanned<Vec<String>>,
    #[serde(default)]
    pub(super) poll_interval: Option<Spanned<String>>,
}

/// Invalidations the application names in its own transaction: PostgreSQL
/// logical-decoding messages and outbox tables (`config::messages`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMessages {
    #[serde(default)]
    pub(super) prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) topics: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(super) max_keys_per_message: Option<Spanned<usize>>,
    #[serde(default)]
    pub(super) outbox_tables: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(super) outbox_column: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotices {
    #[serde(default)]
    pub(super) redis_channel: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) kafka_topic: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) kafka_schema_id: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAvro {
    /// Confluent-compatible schema registry (Confluent, Apicurio's ccompat API, Karapace).
    #[serde(default)]
    pub(super) registry_url: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) username: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) password: Option<Spanned<String>>,
    /// Directory of `<schema id>.avsc` files, read before asking the registry.
    #[serde(default)]
    pub(super) schemas_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLookup {
    /// PostgreSQL URL, or `mysql://` / `mariadb://` for MySQL-family
    /// databases; ideally a read replica.
    pub(super) url: Spanned<String>,
    #[serde(default)]
    pub(super) timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) attempts: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFanout {
    pub(super) query: Spanned<String>,
    pub(super) bind: Spanned<Vec<String>>,
    pub(super) keys: Spanned<Vec<String>>,
    #[serde(default)]
    pub(super) max_rows: Option<Spanned<usize>>,
    #[serde(default)]
    pub(super) namespace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeadLetters {
    /// PostgreSQL URL; the table comes from `cdc-invalidator migrate`.
    pub(super) url: Spanned<String>,
    /// Schema holding the dead-letter table and its migration history.
    #[serde(default)]
    pub(super) schema: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    #[serde(default)]
    pub(super) max_batch_records: Option<Spanned<usize>>,
    #[serde(default)]
    pub(super) max_batch_bytes: Option<Spanned<usize>>,
    #[serde(default)]
    pub(super) max_record_bytes: Option<Spanned<usize>>,
    #[serde(default)]
    pub(super) escalate_above_lag: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) eventual_linger: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) clock_skew_margin: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) route_workers: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntity {
    pub(super) table: Spanned<String>,
    #[serde(default)]
    pub(super) namespace: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) consistency: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) max_cache_ttl: Option<Spanned<String>>,
    pub(super) keys: Spanned<Vec<String>>,
    #[serde(default)]
    pub(super) invalidate_on_snapshot: bool,
    #[serde(default)]
    pub(super) replica_identity: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) fanout: Vec<Spanned<RawFanout>>,
}
