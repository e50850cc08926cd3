//! The Kafka edge: the consumer, its forced settings (each with its reason),
//! the rebalance bridge and the conversion to owned [`KafkaRecord`]s.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

pub mod connect;
pub mod liveness;
pub(crate) mod mysql_check;

use crate::config::{PlanSettings, SourceSettings};
use crate::event::KafkaRecord;

pub(crate) type PartitionId = (String, i32);

/// A rebalance, as seen by the pipeline after the poll that triggered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RebalanceEvent {
    Assigned(Vec<PartitionId>),
    Revoked(Vec<PartitionId>),
}

/// librdkafka calls into this from inside the pipeline's own poll, so the
/// events wait in a queue the pipeline drains right after each poll; a
/// revoked partition's pending offsets are dropped before its next record.
#[derive(Default)]
pub struct SourceContext {
    events: Mutex<Vec<RebalanceEvent>>,
    /// Consumer lag per partition from the last statistics callback.
    lag: Mutex<HashMap<PartitionId, i64>>,
    /// Partitions the pipeline paused, with the first offset not yet
    /// applied: librdkafka stops fetching them, so their statistics keep a
    /// stale high watermark and the lag is taken from the broker instead.
    paused: Mutex<HashMap<PartitionId, Option<i64>>>,
    /// When some broker last sent anything, as of the last statistics
    /// that had a broker connected (None before the first).
    last_heard: Mutex<Option<std::time::Instant>>,
}

impl SourceContext {
    pub(crate) fn drain_events(&self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// The partition's consumer lag in records, as of the last statistics.
    pub(crate) fn lag(&self, partition: &PartitionId) -> Option<i64> {
        lock(&self.lag).get(partition).copied()
    }

    /// The pipeline paused `partition`; `unapplied_from` is the first offset
    /// whose work Redis has not acknowledged (the next offset to commit).
    pub(crate) fn mark_paused(&self, partition: PartitionId, unapplied_from: Option<i64>) {
        lock(&self.paused).insert(partition, unapplied_from);
    }

    pub(crate) fn mark_resumed(&self, partition: &PartitionId) {
        lock(&self.paused).remove(partition);
    }

    pub(crate) fn paused_partitions(&self) -> Vec<(PartitionId, Option<i64>)> {
        let paused = lock(&self.paused);
        paused.iter().map(|(p, o)| (p.clone(), *o)).collect()
    }

    /// How long no broker has answered anything, as of now: fetch responses
    /// (every `fetch.wait.max.ms` per broker fetched from), heartbeats (every
    /// few seconds to the group coordinator) and metadata all count, so a
    /// healthy member hears from some broker every few seconds even with
    /// every partition paused. None before the first statistics.
    pub(crate) fn kafka_quiet_for(&self) -> Option<std::time::Duration> {
        lock(&self.last_heard).map(|at| at.elapsed())
    }

    /// Lag measured from the broker's high watermark for a paused partition.
    pub(crate) fn set_paused_lag(&self, partition: &PartitionId, lag: i64) {
        crate::metrics::partition_lag(&partition.0, partition.1, lag);
        lock(&self.lag).insert(partition.clone(), lag);
    }
}

/// A poisoned lock only means another thread panicked while holding it; the
/// queue and the lag map stay consistent (each update is one push or insert),
/// so the data is used as it is rather than spreading the panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn partitions(tpl: &rdkafka::TopicPartitionList) -> Vec<PartitionId> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// librdkafka's own log lines, at the levels of README's policy: broker
/// connection failures during a Kafka restart are a degraded path the client
/// handles (WARN), not an invalidation at risk; only librdkafka's critical
/// levels (a broken client) are ERROR.
pub(crate) fn log_librdkafka(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
            tracing::error!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// librdkafka's global error callback: transport errors (all brokers down,
/// a broker restarting) are retried by the client and nothing is committed
/// meanwhile (WARN). A fatal error arrives here with its underlying code, not
/// `Fatal`, so it cannot be told apart: the pipeline asks the client for it
/// every tick, logs it at ERROR and ends the process.
pub(crate) fn log_client_error(error: &rdkafka::error::KafkaError, reason: &str) {
    if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Fatal) {
        tracing::error!(target: "librdkafka", %error, reason, "fatal kafka client error");
    } else {
        tracing::warn!(target: "librdkafka", %error, reason, "kafka client error");
    }
}

/// The label of a client error for `cdc_invalidator_kafka_errors_total`.
/// librdkafka reports a broker connection that failed (`transport`) and a
/// request that timed out (`timed_out`) in its log (facilities FAIL and
/// REQTMOUT), only some of them through the error callback: they are
/// counted from the log, and the callback counts the rest (no broker
/// reachable: `all_brokers_down`; anything else: `other`).
pub(crate) fn kafka_error_kind(error: &rdkafka::error::KafkaError) -> Option<&'static str> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    match error.rdkafka_error_code() {
        // Counted from the FAIL log line every broker failure writes.
        Some(Code::BrokerTransportFailure) => None,
        Some(Code::AllBrokersDown) => Some("all_brokers_down"),
        _ => Some("other"),
    }
}

/// The error kind a librdkafka log line stands for, by its facility.
pub(crate) fn logged_error_kind(facility: &str) -> Option<&'static str> {
    match facility {
        "FAIL" => Some("transport"),
        "REQTMOUT" => Some("timed_out"),
        _ => None,
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let severe = (level as i32) <= (RDKafkaLogLevel::Warning as i32);
        if let (true, Some(kind)) = (severe, logged_error_kind(fac)) {
            crate::metrics::kafka_error(kind);
        }
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if let Some(kind) = kafka_error_kind(&error) {
            crate::metrics::kafka_error(kind);
        }
        log_client_error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        // rxidle: microseconds since the broker's last receive; -1 while it
        // is not connected (librdkafka forgets the time at a disconnect), so
        // with no broker connected the last time heard stays as it was.
        let idle = statistics
            .brokers
            .values()
            .filter(|b| b.rxidle >= 0)
            .map(|b| b.rxidle)
            .min();
        if let Some(us) = idle {
            let heard =
                std::time::Instant::now().checked_sub(std::time::Duration::from_micros(u64::try_from(us).unwrap_or(0)));
            *lock(&self.last_heard) = heard.or(Some(std::time::Instant::now()));
        }
        let paused = lock(&self.paused).clone();
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // -1 is librdkafka's internal UA partition; lag -1 means unknown.
                // A paused partition's statistics froze at the pause.
                if *id >= 0
                    && p.consumer_lag >= 0
                    && p.fetch_state == "active"
                    && !paused.contains_key(&(topic.clone(), *id))
                {
                    crate::metrics::partition_lag(topic, *id, p.consumer_lag);
                    lock(&self.lag).insert((topic.clone(), *id), p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked = partitions(tpl);
            tracing::info!(partitions = ?revoked, "partitions revoked");
            // A stale lag must not trigger escalation if the partition comes back.
            let mut lag = lock(&self.lag);
            let mut paused = lock(&self.paused);
            for p in &revoked {
                lag.remove(p);
                paused.remove(p);
                crate::metrics::forget_partition(&p.0, p.1);
            }
            drop((lag, paused));
            lock(&self.events).push(RebalanceEvent::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = partitions(tpl);
                tracing::info!(partitions = ?assigned, "partitions assigned");
                lock(&self.events).push(RebalanceEvent::Assigned(assigned));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

pub(crate) type Consumer = StreamConsumer<SourceContext>;

/// Builds the group consumer (settings in [`crate::kafka_client::consumer`]).
pub fn consumer(settings: &SourceSettings, plan: &PlanSettings) -> Result<Consumer, rdkafka::error::KafkaError> {
    let mut config = crate::kafka_client::consumer(settings, plan);
    config
        .set_log_level(RDKafkaLogLevel::Warning)
        .create_with_context(SourceContext::default())
        .map_err(crate::kafka_client::without_setting_value)
}

/// Copies a borrowed message out at the edge.
pub fn to_record(message: &BorrowedMessage<'_>) -> KafkaRecord {
    KafkaRecord {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        timestamp_ms: message.timestamp().to_millis(),
        headers: headers(message),
    }
}

/// The record's headers, names and values as raw bytes. Not through
/// rdkafka's `Headers::iter`/`get`: rdkafka 0.39 unwraps `to_str()` on every
/// header name, so one header name that is not UTF-8 panicked the daemon,
/// again after every restart. Header names and values are any bytes a
/// producer chose; they are kept as they are (for the dead-letter store),
/// except that a name ends at its first NUL byte: librdkafka's
/// `rd_kafka_header_get_all` returns names as C strings, without a length
/// (docs/operations.md, "Dead letters").
fn headers(message: &BorrowedMessage<'_>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    use rdkafka::bindings as rd;
    let mut out = Vec::new();
    let mut hdrs: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `message.ptr()` is the live librdkafka message this borrow
    // keeps alive; rd_kafka_message_headers only writes the out pointer, and
    // the headers it points to belong to the message (not freed by us).
    let err = unsafe { rd::rd_kafka_message_headers(message.ptr(), &mut hdrs) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
        return out;
    }
    // SAFETY: `hdrs` is non-null and owned by the message (see above).
    let count = unsafe { rd::rd_kafka_header_cnt(hdrs) };
    for idx in 0..count {
        let mut name: *const std::os::raw::c_char = std::ptr::null();
        let mut value: *const std::os::raw::c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: `idx` is below the header count; the out pointers are
        // locals; on success name is a NUL-terminated string and value
        // (when not null) points to `size` bytes, both owned by the message.
        let err = unsafe { rd::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: as above; the bytes are copied before the borrow ends.
        let name = unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes().to_vec();
        let value = (!value.is_null())
            // SAFETY: `value` points to `size` readable bytes (see above).
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec());
        out.push((name, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[source]
brokers = "127.0.0.1:9"
group_id = "g"
topics = ["shop.public.products"]
instance_id = "replica-1"
@PROTOCOL@

[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"

[[entity]]
table = "public.products"
max_cache_ttl = "10m"
keys = ["product:{id}"]
"#;

    /// librdkafka checks the combination at creation (no broker needed): the
    /// consumer protocol refuses the classic-only settings the daemon forces
    /// under the classic one, and static membership works with both.
    // A StreamConsumer spawns its wakeup task: it needs a runtime.
    #[tokio::test]
    async fn librdkafka_accepts_the_settings_of_each_group_protocol() {
        for protocol in ["", "group_protocol = \"classic\"", "group_protocol = \"consumer\""] {
            let text = CONFIG.replace("@PROTOCOL@", protocol);
            let settings = crate::config::parse("t.toml", &text, &|_| None).unwrap();
            if let Err(e) = consumer(&settings.source, &settings.plan) {
                panic!("{protocol:?}: {e}");
            }
        }
    }

    #[test]
    fn client_errors_are_counted_once_by_kind() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as Code;
        // Broker failures and request timeouts come through the log.
        assert_eq!(logged_error_kind("FAIL"), Some("transport"));
        assert_eq!(logged_error_kind("REQTMOUT"), Some("timed_out"));
        assert_eq!(logged_error_kind("CGRPOP"), None);
        // The callback's transport error repeats a FAIL line: not counted twice.
        assert_eq!(
            kafka_error_kind(&KafkaError::Global(Code::BrokerTransportFailure)),
            None
        );
        assert_eq!(
            kafka_error_kind(&KafkaError::Global(Code::AllBrokersDown)),
            Some("all_brokers_down")
        );
        assert_eq!(kafka_error_kind(&KafkaError::Global(Code::UnknownTopic)), Some("other"));
    }

    #[test]
    fn kafka_is_quiet_from_the_last_receive_and_stays_so_while_no_broker_is_connected() {
        let context = SourceContext::default();
        assert_eq!(context.kafka_quiet_for(), None, "unknown before the first statistics");
        let stats = |rxidle: i64| -> Statistics {
            let broker = format!(
                r#"{{"name": "b/1", "nodeid": 1, "nodename": "b", "source": "configured", "state": "UP",
                    "stateage": 0, "outbuf_cnt": 0, "outbuf_msg_cnt": 0, "waitresp_cnt": 0,
                    "waitresp_msg_cnt": 0, "tx": 0, "txbytes": 0, "txerrs": 0, "txretries": 0,
                    "txidle": 0, "req_timeouts": 0, "rx": 0, "rxbytes": 0, "rxerrs": 0,
                    "rxcorriderrs": 0, "rxpartial": 0, "rxidle": {rxidle}, "zbuf_grow": 0,
                    "buf_grow": 0, "req": {{}}, "toppars": {{}}}}"#
            );
            let text = format!(
                r#"{{"name": "c", "client_id": "c", "type": "consumer", "ts": 0, "time": 0, "age": 0,
                    "replyq": 0, "msg_cnt": 0, "msg_size": 0, "msg_max": 0, "msg_size_max": 0,
                    "simple_cnt": 0, "metadata_cache_cnt": 0, "tx": 0, "tx_bytes": 0, "rx": 0,
                    "rx_bytes": 0, "txmsgs": 0, "txmsg_bytes": 0, "rxmsgs": 0, "rxmsg_bytes": 0,
                    "brokers": {{"b/1": {broker}}}, "topics": {{}}}}"#
            );
            serde_json::from_str(&text).expect("statistics JSON")
        };
        context.stats(stats(7_000_000));
        let quiet = context.kafka_quiet_for().expect("known");
        assert!(quiet >= std::time::Duration::from_secs(7), "{quiet:?}");
        // Disconnected (-1): the last time heard is kept, not reset.
        context.stats(stats(-1));
        assert!(context.kafka_quiet_for().expect("known") >= std::time::Duration::from_secs(7));
        context.stats(stats(0));
        assert!(context.kafka_quiet_for().expect("known") < std::time::Duration::from_secs(1));
    }
}
