//! Every metric name in one place. Names follow
//! `cdc_invalidator_<name>_<unit>[_total]`; labels come from small fixed sets
//! (op codes, outcome words, reasons), never keys or raw error text.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::graph::EscalationReason;

pub(crate) const EVENTS: &str = "cdc_invalidator_events_total";
pub(crate) const TARGETS_BUMPED: &str = "cdc_invalidator_targets_bumped_total";
pub(crate) const GUARD_NOOPS: &str = "cdc_invalidator_guard_noops_total";
pub(crate) const TARGETS_COALESCED: &str = "cdc_invalidator_targets_coalesced_total";
pub(crate) const MOOT_EVENTS: &str = "cdc_invalidator_moot_events_total";
pub(crate) const ESCALATIONS: &str = "cdc_invalidator_escalations_total";
pub(crate) const DEAD_LETTERS: &str = "cdc_invalidator_dead_letters_total";
pub(crate) const PROPAGATION: &str = "cdc_invalidator_invalidation_propagation_seconds";
pub(crate) const APPLY_LATENCY: &str = "cdc_invalidator_apply_latency_seconds";
pub(crate) const LAST_PROGRESS: &str = "cdc_invalidator_last_progress_timestamp_seconds";
pub(crate) const REDIS_APPLY: &str = "cdc_invalidator_redis_apply_seconds";
pub(crate) const DEAD_LETTER_WRITE: &str = "cdc_invalidator_dead_letter_write_seconds";
pub(crate) const BATCH_TARGETS: &str = "cdc_invalidator_batch_targets";
pub(crate) const CONSUMER_LAG: &str = "cdc_invalidator_consumer_lag_records";
pub(crate) const STORED_OFFSET: &str = "cdc_invalidator_stored_offset";
pub(crate) const IN_FLIGHT: &str = "cdc_invalidator_in_flight_records";
pub(crate) const PAUSED_PARTITIONS: &str = "cdc_invalidator_paused_partitions";
pub(crate) const STALLED_PARTITIONS: &str = "cdc_invalidator_stalled_partitions";
pub(crate) const REDIS_ERRORS: &str = "cdc_invalidator_redis_errors_total";
pub(crate) const REDIS_RECONNECTS: &str = "cdc_invalidator_redis_reconnects_total";
pub(crate) const KAFKA_ERRORS: &str = "cdc_invalidator_kafka_errors_total";
pub(crate) const GROUP_LEAVES: &str = "cdc_invalidator_group_leaves_total";
pub(crate) const REDIS_DATA_LOSS: &str = "cdc_invalidator_redis_data_loss_total";
pub(crate) const SOURCE_IDLE: &str = "cdc_invalidator_source_idle_seconds";
pub(crate) const SOURCE_IDLE_TOPICS: &str = "cdc_invalidator_source_idle_topics";
pub(crate) const CONNECTOR_UP: &str = "cdc_invalidator_connector_up";
pub(crate) const CONNECTOR_TASKS: &str = "cdc_invalidator_connector_tasks";
pub(crate) const READY: &str = "cdc_invalidator_ready";
pub(crate) const BUILD_INFO: &str = "cdc_invalidator_build_info";
pub(crate) const LOOKUP: &str = "cdc_invalidator_lookup_seconds";
pub(crate) const FANOUT_ROWS: &str = "cdc_invalidator_fanout_rows";
pub(crate) const NOTICES: &str = "cdc_invalidator_notices_total";
pub(crate) const AUDIT_CHECKS: &str = "cdc_invalidator_audit_checks_total";
pub(crate) const AUDIT_VIOLATIONS: &str = "cdc_invalidator_audit_violations_total";
pub(crate) const AUDIT_STALE_RATIO: &str = "cdc_invalidator_audit_stale_ratio";
pub(crate) const AUDIT_BUILD_INFO: &str = "cdc_invalidator_audit_build_info";
pub(crate) const AUDIT_LATE: &str = "cdc_invalidator_audit_late_total";
pub(crate) const AUDIT_LOST: &str = "cdc_invalidator_audit_lost_total";
pub(crate) const AUDIT_COVERED: &str = "cdc_invalidator_audit_covered_total";
pub(crate) const MESSAGES: &str = "cdc_invalidator_messages_total";

/// Outcome label of the events metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Produced targets that were sent to Redis.
    Applied,
    /// Nothing to do: unknown table, snapshot read, tombstone, heartbeat.
    Skipped,
    /// Older than its entity's cache TTL plus the skew margin.
    Moot,
    /// Produced a namespace bump because exact keys could not be derived.
    Escalated,
    DeadLetter,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Skipped => "skipped",
            Outcome::Moot => "moot",
            Outcome::Escalated => "escalated",
            Outcome::DeadLetter => "dead_letter",
        }
    }
}

/// What became of a message or an outbox record: the label of
/// `cdc_invalidator_messages_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Its targets went to the batch (bumped once Redis acknowledges).
    Applied,
    /// Another prefix, a topic outside `[messages] topics`, or no `[messages]`.
    Skipped,
    /// An outbox row's update, delete or snapshot read: bumps nothing.
    Ignored,
    /// Refused and kept as a dead letter with its kind.
    DeadLetter,
    /// Refused without a dead-letter store: its partition stalls.
    Stalled,
}

impl MessageOutcome {
    pub const ALL: [MessageOutcome; 5] = [
        MessageOutcome::Applied,
        MessageOutcome::Skipped,
        MessageOutcome::Ignored,
        MessageOutcome::DeadLetter,
        MessageOutcome::Stalled,
    ];

    pub fn label(self) -> &'static str {
        match self {
            MessageOutcome::Applied => "applied",
            MessageOutcome::Skipped => "skipped",
            MessageOutcome::Ignored => "ignored",
            MessageOutcome::DeadLetter => "dead_letter",
            MessageOutcome::Stalled => "stalled",
        }
    }
}

/// Installs the Prometheus recorder and describes every metric. Idempotent
/// per process: tests that install twice get the first handle's recorder.
pub(crate) fn install() -> PrometheusHandle {
    // The apply objective is 1 s and a healthy p99 10-50 ms
    // (docs/architecture.md, "Observability"): resolve well below and above
    // that, and up to half an hour so that the quantiles of a
    // backlog after an outage are measured instead of pinned to the top
    // bucket (a 60 s top bucket made a long outage read "p99 is 1m").
    let latency_buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        1800.0,
    ];
    let batch_buckets = [
        1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ];
    // Both expects are start-up invariants, not input: the bucket lists above
    // are non-empty constants, and `install` is called once per process.
    #[allow(clippy::expect_used)]
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(PROPAGATION.into()), &latency_buckets)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(APPLY_LATENCY.into()), &latency_buckets))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(REDIS_APPLY.into()), &latency_buckets))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(DEAD_LETTER_WRITE.into()), &latency_buckets))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_TARGETS.into()), &batch_buckets))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(LOOKUP.into()), &latency_buckets))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FANOUT_ROWS.into()), &batch_buckets))
        .expect("bucket lists are non-empty")
        // Gauges not set for this long disappear: that is how the series of a
        // revoked partition go away (forget_partition); live gauges are re-set
        // by refresh_gauges far more often.
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT))
        .install_recorder()
        .expect("the metrics recorder is installed once per process");
    INSTALLED.store(true, Ordering::Release);
    describe();
    handle
}

/// Set once the Prometheus recorder is in place: only then may a metric's
/// handle be kept (one taken before would be a no-op forever).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The ops `events_total` is counted for, as [`crate::event::Op::code`] and
/// the router name them.
const EVENT_OPS: [&str; 7] = ["c", "u", "d", "r", "t", "m", "other"];
const OUTCOMES: usize = 5;

/// The `events_total` counters, one per op and outcome, each made on its
/// first use: counted for every record, and a lookup of the labelled counter
/// in the registry each time cost more than the count.
static EVENT_COUNTERS: [OnceLock<Counter>; EVENT_OPS.len() * OUTCOMES] =
    [const { OnceLock::new() }; EVENT_OPS.len() * OUTCOMES];

/// The histogram of `name`, for recording many values at once (one registry
/// lookup per batch instead of per value).
pub(crate) fn histogram_handle(name: &'static str) -> Histogram {
    histogram!(name)
}

/// How long a gauge lives without updates; refresh_gauges runs far more often.
pub(crate) const GAUGE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How often [`refresh_gauges`] re-sets every gauge: well inside the idle timeout.
pub(crate) const GAUGE_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

type GaugeKey = (&'static str, Vec<(&'static str, String)>);

/// The last value of every live gauge. The exporter drops a gauge that is not
/// set for GAUGE_IDLE_TIMEOUT, and the pipeline sets most of them only when
/// they change; while it waits on an outage nothing changes, and the gauges
/// that matter most then (paused partitions, stored offsets, lag) vanished.
/// A task independent of the apply loop re-sets them all from here.
static GAUGES: LazyLock<Mutex<BTreeMap<GaugeKey, f64>>> = LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn set_gauge(name: &'static str, labels: Vec<(&'static str, String)>, value: f64) {
    gauge!(name, &labels).set(value);
    // A poisoned lock only means a panic elsewhere mid-insert; the map is still usable.
    GAUGES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((name, labels), value);
}

/// Re-sets every gauge to its last value (called on a timer).
pub(crate) fn refresh_gauges() {
    let gauges = GAUGES.lock().unwrap_or_else(PoisonError::into_inner);
    for ((name, labels), value) in gauges.iter() {
        gauge!(*name, labels).set(*value);
    }
}

/// Stops refreshing a revoked partition's gauges: they expire with the idle timeout.
pub(crate) fn forget_partition(topic: &str, partition: i32) {
    let partition = partition.to_string();
    GAUGES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|(_, labels), _| {
            !(labels.contains(&("topic", topic.to_owned())) && labels.contains(&("partition", partition.clone())))
        });
}

pub(crate) fn build_info() {
    set_gauge(BUILD_INFO, vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0);
}

/// The auditor's own build info: a name no daemon alert selects.
pub(crate) fn audit_build_info() {
    set_gauge(
        AUDIT_BUILD_INFO,
        vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
        1.0,
    );
}

fn describe() {
    describe_counter!(EVENTS, "Records consumed, by Debezium op and what became of them.");
    describe_counter!(
        TARGETS_BUMPED,
        "Version records bumped in Redis, by target kind (key or namespace)."
    );
    describe_counter!(
        GUARD_NOOPS,
        "Bumps the Redis guard refused because the record had seen that position or a later one."
    );
    describe_counter!(TARGETS_COALESCED, "Targets merged into another bump of the same batch.");
    describe_counter!(
        MOOT_EVENTS,
        "Events dropped because older than their entity's max_cache_ttl plus the skew margin."
    );
    describe_counter!(ESCALATIONS, "Events escalated to a namespace bump, by reason.");
    describe_counter!(
        DEAD_LETTERS,
        "Records written as dead letters, by stage and error kind."
    );
    describe_histogram!(
        PROPAGATION,
        Unit::Seconds,
        "Source commit time to Redis acknowledgement of the bump."
    );
    describe_histogram!(
        APPLY_LATENCY,
        Unit::Seconds,
        "Kafka record timestamp to Redis acknowledgement of the record's bumps: the part of propagation the daemon owns."
    );
    describe_gauge!(
        LAST_PROGRESS,
        Unit::Seconds,
        "Unix time when the daemon last stored offsets after Redis acknowledged, or last had nothing to consume."
    );
    describe_histogram!(
        REDIS_APPLY,
        Unit::Seconds,
        "Duration of one pipelined apply round trip to Redis."
    );
    describe_histogram!(
        DEAD_LETTER_WRITE,
        Unit::Seconds,
        "Duration of one dead-letter statement, retries included; it runs while Redis applies the same batch's bumps."
    );
    describe_histogram!(
        BATCH_TARGETS,
        Unit::Count,
        "Targets per applied batch, after coalescing."
    );
    describe_gauge!(
        CONSUMER_LAG,
        Unit::Count,
        "High watermark minus the next offset to consume, per assigned partition."
    );
    describe_gauge!(
        STORED_OFFSET,
        Unit::Count,
        "Last offset stored for commit, per assigned partition."
    );
    describe_gauge!(IN_FLIGHT, Unit::Count, "Records consumed but not yet acknowledged.");
    describe_gauge!(
        PAUSED_PARTITIONS,
        Unit::Count,
        "Paused partitions: all while Redis, the dead-letter store or the schema registry is unreachable, else the stalled ones."
    );
    describe_gauge!(
        STALLED_PARTITIONS,
        Unit::Count,
        "Partitions stopped at an invalidation that could not be applied or escalated."
    );
    describe_counter!(REDIS_ERRORS, "Failed Redis apply attempts, by error kind.");
    describe_counter!(
        KAFKA_ERRORS,
        "Errors the Kafka client reported, by kind (transport, all_brokers_down, timed_out, other); it retries them itself, nothing is committed meanwhile."
    );
    describe_counter!(
        GROUP_LEAVES,
        "Consumer group leaves at a clean stop (source.leave_group_on_stop), by outcome (handed_over: partitions revoked and the leave acknowledged in time; timed_out: not, so the partitions may wait for the session timeout)."
    );
    describe_counter!(
        REDIS_RECONNECTS,
        "Redis connections dropped to be replaced, by reason (silent: no answer within redis.response_timeout; moved: the server is no longer the primary, or behind Sentinel unreachable)."
    );
    describe_counter!(
        REDIS_DATA_LOSS,
        "Times Redis was found to have lost acknowledged writes (reason: missing, rolled_back, evicted); each bumped the epoch and every namespace."
    );
    describe_gauge!(
        SOURCE_IDLE,
        Unit::Seconds,
        "Per watched topic (source.liveness_topics, else the subscribed ones): seconds since its high watermark last moved."
    );
    describe_gauge!(
        SOURCE_IDLE_TOPICS,
        Unit::Count,
        "Watched topics idle for longer than source.max_idle (0 when no bound is set)."
    );
    describe_gauge!(
        CONNECTOR_UP,
        "Per connector in [connect] connectors: 1 when Kafka Connect reports it and every task RUNNING; 0 otherwise (FAILED, PAUSED, missing, Connect unreachable)."
    );
    describe_gauge!(
        CONNECTOR_TASKS,
        Unit::Count,
        "Per connector and state: tasks Kafka Connect reports in that state."
    );
    describe_gauge!(READY, "1 when connected, assigned and not stalled; 0 otherwise.");
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
    describe_histogram!(LOOKUP, Unit::Seconds, "Duration of one fan-out lookup query attempt.");
    describe_histogram!(FANOUT_ROWS, Unit::Count, "Rows returned by one fan-out lookup.");
    describe_counter!(AUDIT_CHECKS, "Sampled changes the auditor checked after the SLO.");
    describe_counter!(
        AUDIT_LATE,
        "Violations whose version records had advanced by the recheck (late, not lost)."
    );
    describe_counter!(
        AUDIT_LOST,
        "Violations whose version records had still not advanced at the recheck, with no epoch or namespace move after the change to cover them (lost)."
    );
    describe_counter!(
        AUDIT_COVERED,
        "Violations whose version records had not advanced at the recheck, but whose epoch or namespace had moved after the change (covered for readers that fold them)."
    );
    describe_counter!(
        AUDIT_VIOLATIONS,
        "Checked changes whose version records had not advanced within the SLO."
    );
    describe_gauge!(
        AUDIT_BUILD_INFO,
        "Always 1 on the auditor; the version label names the build."
    );
    describe_gauge!(
        AUDIT_STALE_RATIO,
        "Violations divided by checks since the auditor started."
    );
    describe_counter!(
        MESSAGES,
        "Logical-decoding messages and outbox records, by outcome (applied, skipped: another prefix or topic, ignored: an outbox row's update or delete, dead_letter, stalled)."
    );
    describe_counter!(
        NOTICES,
        "Invalidation notices published, by channel (redis, kafka) and outcome."
    );
}

pub(crate) fn event(op: &'static str, outcome: Outcome) {
    let slot = EVENT_OPS
        .iter()
        .position(|known| *known == op)
        .and_then(|index| EVENT_COUNTERS.get(index * OUTCOMES + outcome as usize));
    match slot {
        Some(slot) if INSTALLED.load(Ordering::Acquire) => slot
            .get_or_init(|| counter!(EVENTS, "op" => op, "outcome" => outcome.label()))
            .increment(1),
        _ => counter!(EVENTS, "op" => op, "outcome" => outcome.label()).increment(1),
    }
}

pub(crate) fn escalation(reason: EscalationReason) {
    counter!(ESCALATIONS, "reason" => reason.label()).increment(1);
}

pub(crate) fn targets(kind: &'static str, applied: bool, count: u64) {
    let name = if applied { TARGETS_BUMPED } else { GUARD_NOOPS };
    counter!(name, "kind" => kind).increment(count);
}

pub(crate) fn coalesced(count: u64) {
    counter!(TARGETS_COALESCED).increment(count);
}

pub(crate) fn dead_letter(stage: &'static str, kind: &'static str) {
    counter!(DEAD_LETTERS, "stage" => stage, "kind" => kind).increment(1);
}

pub(crate) fn message(outcome: MessageOutcome) {
    counter!(MESSAGES, "outcome" => outcome.label()).increment(1);
}

pub(crate) fn moot() {
    counter!(MOOT_EVENTS).increment(1);
}

pub(crate) fn redis_apply(seconds: f64, targets: usize) {
    histogram!(REDIS_APPLY).record(seconds);
    histogram!(BATCH_TARGETS).record(targets as f64);
}

pub(crate) fn dead_letter_write(seconds: f64) {
    histogram!(DEAD_LETTER_WRITE).record(seconds);
}

pub(crate) fn redis_error(kind: &'static str) {
    counter!(REDIS_ERRORS, "kind" => kind).increment(1);
}

/// Every `redis_reconnect` reason, for the counter registered at zero.
pub(crate) const RECONNECT_REASONS: [&str; 2] = ["silent", "moved"];

pub(crate) fn redis_reconnect(reason: &'static str) {
    counter!(REDIS_RECONNECTS, "reason" => reason).increment(1);
}

/// Every `kafka_error` kind, for the counter registered at zero.
pub(crate) const KAFKA_ERROR_KINDS: [&str; 4] = ["transport", "all_brokers_down", "timed_out", "other"];

/// Outcomes of a leave at stop, the label of `GROUP_LEAVES`.
pub(crate) const GROUP_LEAVE_OUTCOMES: [&str; 2] = ["handed_over", "timed_out"];

pub(crate) fn group_leave(outcome: &'static str) {
    counter!(GROUP_LEAVES, "outcome" => outcome).increment(1);
}

pub(crate) fn kafka_error(kind: &'static str) {
    counter!(KAFKA_ERRORS, "kind" => kind).increment(1);
}

pub(crate) fn source_idle(topic: &str, seconds: u64) {
    gauge!(SOURCE_IDLE, "topic" => topic.to_owned()).set(seconds as f64);
}

pub(crate) fn source_idle_topics(count: usize) {
    gauge!(SOURCE_IDLE_TOPICS).set(count as f64);
}

/// One connector's status; states seen last time and gone now drop to 0.
pub(crate) fn connector_status(connector: &str, up: bool, tasks: &BTreeMap<String, usize>, previous_states: &[String]) {
    set_gauge(
        CONNECTOR_UP,
        vec![("connector", connector.to_owned())],
        if up { 1.0 } else { 0.0 },
    );
    for state in previous_states.iter().filter(|s| !tasks.contains_key(*s)) {
        let labels = vec![("connector", connector.to_owned()), ("state", state.clone())];
        set_gauge(CONNECTOR_TASKS, labels, 0.0);
    }
    for (state, count) in tasks {
        let labels = vec![("connector", connector.to_owned()), ("state", state.clone())];
        set_gauge(CONNECTOR_TASKS, labels, *count as f64);
    }
}

pub(crate) fn redis_data_loss(reason: &'static str) {
    counter!(REDIS_DATA_LOSS, "reason" => reason).increment(1);
}

pub(crate) fn stored_offset(topic: &str, partition: i32, offset: i64) {
    let labels = vec![("topic", topic.to_owned()), ("partition", partition.to_string())];
    set_gauge(STORED_OFFSET, labels, offset as f64);
}

/// Sets a partition's lag alone (statistics, or the broker's high watermark
/// while the partition is paused).
pub(crate) fn partition_lag(topic: &str, partition: i32, lag: i64) {
    let labels = vec![("topic", topic.to_owned()), ("partition", partition.to_string())];
    set_gauge(CONSUMER_LAG, labels, lag.max(0) as f64);
}

/// The daemon moved forward (stored offsets after Redis acknowledged) or had
/// nothing to wait for: now.
pub(crate) fn progress(unix_seconds: f64) {
    set_gauge(LAST_PROGRESS, Vec::new(), unix_seconds);
}

pub(crate) fn lookup(seconds: f64) {
    histogram!(LOOKUP).record(seconds);
}

pub(crate) fn fanout_rows(rows: usize) {
    histogram!(FANOUT_ROWS).record(rows as f64);
}

pub(crate) fn notice_sent(channel: &'static str) {
    counter!(NOTICES, "channel" => channel, "outcome" => "sent").increment(1);
}

pub(crate) fn notice_failed(channel: &'static str) {
    counter!(NOTICES, "channel" => channel, "outcome" => "failed").increment(1);
}

pub(crate) fn audit(ok: bool) {
    counter!(AUDIT_CHECKS).increment(1);
    // Registered at zero too, so rate() works from the first check.
    counter!(AUDIT_VIOLATIONS).increment(u64::from(!ok));
}

pub(crate) fn audit_late() {
    counter!(AUDIT_LATE).increment(1);
}

pub(crate) fn audit_lost() {
    counter!(AUDIT_LOST).increment(1);
}

pub(crate) fn audit_covered() {
    counter!(AUDIT_COVERED).increment(1);
}

/// Every auditor series from the start, at 0: a counter born at its first
/// increment loses that increment to rate() and leaves panels empty.
pub(crate) fn audit_at_zero() {
    for name in [AUDIT_CHECKS, AUDIT_VIOLATIONS, AUDIT_LATE, AUDIT_COVERED, AUDIT_LOST] {
        counter!(name).increment(0);
    }
    set_gauge(AUDIT_STALE_RATIO, Vec::new(), 0.0);
}

/// Every value of the daemon's small fixed label sets, from the modules
/// that own them (this module imports none).
pub(crate) struct FixedLabels {
    pub(crate) target_kinds: Vec<&'static str>,
    pub(crate) escalation_reasons: Vec<&'static str>,
    pub(crate) redis_error_kinds: Vec<&'static str>,
    pub(crate) loss_reasons: Vec<&'static str>,
}

/// The daemon's counters the dashboard and the alerts draw, at 0 from the
/// start for every value of their fixed label sets: a counter born at its
/// first increment loses that increment to rate(), and a panel of it stays
/// empty until then. Counters whose labels are a large cross product
/// (events by op and outcome, dead letters by stage and kind) are born at
/// their first increment; the dashboard's dead-letter panel allows for that.
pub(crate) fn daemon_at_zero(labels: &FixedLabels) {
    counter!(TARGETS_COALESCED).increment(0);
    counter!(MOOT_EVENTS).increment(0);
    for &kind in &labels.target_kinds {
        counter!(TARGETS_BUMPED, "kind" => kind).increment(0);
        counter!(GUARD_NOOPS, "kind" => kind).increment(0);
    }
    for &reason in &labels.escalation_reasons {
        counter!(ESCALATIONS, "reason" => reason).increment(0);
    }
    for &kind in &labels.redis_error_kinds {
        counter!(REDIS_ERRORS, "kind" => kind).increment(0);
    }
    for reason in RECONNECT_REASONS {
        counter!(REDIS_RECONNECTS, "reason" => reason).increment(0);
    }
    for outcome in GROUP_LEAVE_OUTCOMES {
        counter!(GROUP_LEAVES, "outcome" => outcome).increment(0);
    }
    for kind in KAFKA_ERROR_KINDS {
        counter!(KAFKA_ERRORS, "kind" => kind).increment(0);
    }
    for &reason in &labels.loss_reasons {
        counter!(REDIS_DATA_LOSS, "reason" => reason).increment(0);
    }
    // So `rate()` and alerts on refused messages work before the first one.
    for outcome in MessageOutcome::ALL {
        counter!(MESSAGES, "outcome" => outcome.label()).increment(0);
    }
}

pub(crate) fn audit_stale_ratio(ratio: f64) {
    set_gauge(AUDIT_STALE_RATIO, Vec::new(), ratio);
}

pub(crate) fn in_flight(records: usize) {
    set_gauge(IN_FLIGHT, Vec::new(), records as f64);
}

pub(crate) fn paused_partitions(count: usize) {
    set_gauge(PAUSED_PARTITIONS, Vec::new(), count as f64);
}

pub(crate) fn stalled_partitions(count: usize) {
    set_gauge(STALLED_PARTITIONS, Vec::new(), count as f64);
}

pub(crate) fn ready(is_ready: bool) {
    set_gauge(READY, Vec::new(), if is_ready { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remembered(name: &'static str, topic: &str, partition: i32) -> bool {
        let wanted = vec![("topic", topic.to_owned()), ("partition", partition.to_string())];
        GAUGES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&(name, wanted))
    }

    #[test]
    fn a_revoked_partition_is_no_longer_refreshed_and_the_others_are() {
        stored_offset("board-test", 0, 10);
        partition_lag("board-test", 0, 5);
        stored_offset("board-test", 1, 20);
        assert!(remembered(STORED_OFFSET, "board-test", 0));
        forget_partition("board-test", 0);
        assert!(!remembered(STORED_OFFSET, "board-test", 0));
        assert!(!remembered(CONSUMER_LAG, "board-test", 0));
        assert!(
            remembered(STORED_OFFSET, "board-test", 1),
            "partition 1 is still assigned"
        );
    }
}
