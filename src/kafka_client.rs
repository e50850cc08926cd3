//! Every Kafka client the daemon makes comes from here: the group consumer
//! (`run`), the metadata client (`check`), the auditor's consumer, the
//! liveness watcher and the notice producer. Each gets the user's
//! `[source.librdkafka]` passthrough (security.protocol, sasl.*, ssl.*:
//! a client built without it talks plaintext to a SASL/TLS cluster), then
//! the settings its role forces, which therefore always win.

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use crate::config::{GroupProtocol, PlanSettings, SourceSettings};
// The forced lists are shared with config validation, which refuses them
// in the passthrough; they live in a leaf module so neither imports the other.
use crate::kafka_forced::{CLASSIC_FORCED, CONSUMER_FORCED};

/// Defaults first, then the passthrough, then the brokers and what the
/// role forces.
fn build(source: &SourceSettings, defaults: &[(&str, String)], forced: &[(&str, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (name, value) in defaults {
        config.set(*name, value);
    }
    for (name, value) in &source.librdkafka {
        config.set(name, value);
    }
    config.set("bootstrap.servers", &source.brokers);
    for (name, value) in forced {
        config.set(*name, value);
    }
    config
}

/// The group consumer of `run`.
pub(crate) fn consumer(source: &SourceSettings, plan: &PlanSettings) -> ClientConfig {
    let defaults = [
        // A new group starts at the oldest retained change: changes made
        // before the daemon first ran may still be cached.
        ("auto.offset.reset", "earliest".to_owned()),
        // Commit stored offsets every second: a crash replays at most about a
        // second of work, which the guard turns into no-ops.
        ("auto.commit.interval.ms", "1000".to_owned()),
        // Per-partition lag for metrics and lag escalation comes from the
        // statistics callback.
        ("statistics.interval.ms", "1000".to_owned()),
        // A regex subscription learns of new matching topics on a metadata
        // refresh, and Debezium creates a table's topic at its first change:
        // librdkafka's 5-minute default would hold a new table's changes back
        // that long.
        ("topic.metadata.refresh.interval.ms", "10000".to_owned()),
        // The prefetch queue below is capped (to a part of the in-flight
        // budget), so it fills often; librdkafka's default 1000 ms fetch backoff then idled
        // the consumer for a second at a time (BENCHMARKS.md, finding 1:
        // 3.1x the drain rate at 10 ms, memory bound unchanged).
        ("fetch.queue.backoff.ms", "10".to_owned()),
        // librdkafka prefetches up to this much into the consumer queue. It
        // only has to cover a fetch round trip, not a batch: a quarter of the
        // batch budget (8 MiB by default) drained as fast as the whole budget
        // and took the drain's peak RSS from about 70 to 37 MiB
        // (BENCHMARKS.md, "Memory: the prefetch").
        ("queued.max.messages.kbytes", prefetch_kbytes(plan).to_string()),
        // Every request (fetch, commit, heartbeat, metadata) waits at most
        // this long before the connection counts as failed and is made
        // again: librdkafka's 60 s default kept a connection silenced by a
        // network partition in place for a minute after it healed. A broker
        // on the same network answers in milliseconds (fetches wait at most
        // fetch.wait.max.ms, 500 ms).
        ("socket.timeout.ms", "10000".to_owned()),
        // Keepalive probes notice a dead peer on an idle connection.
        ("socket.keepalive.enable", "true".to_owned()),
    ];
    // What delivery depends on, each with its reason in `kafka_forced`.
    let mut forced: Vec<(&str, String)> = CONSUMER_FORCED.iter().map(|(n, v)| (*n, (*v).to_owned())).collect();
    forced.push(("group.id", source.group_id.clone()));
    forced.push(("group.protocol", source.group_protocol.as_str().to_owned()));
    if source.group_protocol == GroupProtocol::Classic {
        forced.extend(CLASSIC_FORCED.iter().map(|(n, v)| (*n, (*v).to_owned())));
    }
    if let Some(id) = &source.instance_id {
        // Static membership (KIP-345): a replica restarted within
        // session.timeout.ms rejoins as the same member and gets its
        // partitions back without waiting for its old session to expire.
        forced.push(("group.instance.id", id.clone()));
    }
    build(source, &defaults, &forced)
}

/// The consumer's prefetch cap in KiB: a quarter of `plan.max_batch_bytes`,
/// at least 1 MiB.
fn prefetch_kbytes(plan: &PlanSettings) -> usize {
    (plan.max_batch_bytes / 4 / 1024).max(1024)
}

/// A client that reads metadata and watermarks only (`check`, the liveness
/// watcher): it never subscribes, so it joins no group and commits nothing;
/// the group id only satisfies librdkafka.
pub(crate) fn observer(source: &SourceSettings, purpose: &str) -> ClientConfig {
    build(
        source,
        &[],
        &[
            ("group.id", format!("{}-{purpose}", source.group_id)),
            ("enable.auto.commit", "false".to_owned()),
        ],
    )
}

/// The auditor: a group of its own per process, starting at the newest
/// records, never committing, so it never moves the daemon's offsets.
pub(crate) fn auditor(source: &SourceSettings) -> ClientConfig {
    build(
        source,
        &[],
        &[
            ("group.id", format!("{}-audit-{}", source.group_id, std::process::id())),
            ("auto.offset.reset", "latest".to_owned()),
            ("enable.auto.commit", "false".to_owned()),
        ],
    )
}

/// The notice producer. Consumer settings in the passthrough are ignored by
/// librdkafka for a producer (with a warning in its log).
pub(crate) fn producer(source: &SourceSettings) -> ClientConfig {
    build(
        source,
        &[
            // Notices are hints; a short linger batches them cheaply.
            ("linger.ms", "5".to_owned()),
        ],
        &[("enable.idempotence", "true".to_owned())],
    )
}

/// A client creation error without the values of the settings: librdkafka
/// quotes the value of the setting it refused (in the description, and
/// rdkafka prints it after the name), and the passthrough holds
/// `sasl.password`, `ssl.key.password` and the like. The error keeps the
/// setting's name, which is what an operator needs to find it.
pub(crate) fn without_setting_value(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(code, description, name, value) if !value.is_empty() => {
            KafkaError::ClientConfig(code, description.replace(&value, "***"), name, "***".to_owned())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka_forced::FROM_CONFIG;

    fn settings(extra: &str) -> crate::config::Settings {
        let text = format!(
            "[source]\nbrokers = \"b:9092\"\ngroup_id = \"g\"\ntopics = [\"t\"]\n\
             [source.librdkafka]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n{extra}\
             [redis]\nurl = \"redis://r\"\nversion_ttl = \"1h\"\n\
             [[entity]]\ntable = \"public.t\"\nmax_cache_ttl = \"1m\"\nkeys = [\"t:{{id}}\"]\n"
        );
        crate::config::parse("test.toml", &text, &|_| None).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_client_gets_the_security_settings() {
        let s = settings("");
        let clients = [
            ("consumer", consumer(&s.source, &s.plan)),
            ("check", observer(&s.source, "check")),
            ("liveness", observer(&s.source, "liveness")),
            ("auditor", auditor(&s.source)),
            ("notice producer", producer(&s.source)),
        ];
        for (role, config) in &clients {
            assert_eq!(config.get("security.protocol"), Some("SASL_SSL"), "{role}");
            assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"), "{role}");
            assert_eq!(config.get("bootstrap.servers"), Some("b:9092"), "{role}");
        }
    }

    #[test]
    fn the_consumer_forces_what_delivery_depends_on() {
        let s = settings("\"auto.offset.reset\" = \"latest\"\n");
        let c = consumer(&s.source, &s.plan);
        for (name, value) in CONSUMER_FORCED {
            assert_eq!(c.get(name), Some(*value), "{name}");
        }
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("group.protocol"), Some("classic"));
        assert_eq!(c.get("partition.assignment.strategy"), Some("cooperative-sticky"));
        let kip848 = SourceSettings {
            group_protocol: GroupProtocol::Consumer,
            ..s.source.clone()
        };
        let c = consumer(&kip848, &s.plan);
        assert_eq!(c.get("group.protocol"), Some("consumer"));
        assert_eq!(c.get("partition.assignment.strategy"), None);
        // Defaults yield to the passthrough.
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        // The prefetch is a quarter of the default 32 MiB batch budget.
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("8192"));
        // Observers never commit.
        assert_eq!(observer(&s.source, "check").get("enable.auto.commit"), Some("false"));
        assert_eq!(auditor(&s.source).get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn the_passthrough_may_not_set_a_forced_setting() {
        for name in CONSUMER_FORCED
            .iter()
            .chain(CLASSIC_FORCED)
            .map(|(n, _)| *n)
            .chain(FROM_CONFIG.iter().copied())
        {
            let text = format!(
                "[source]\nbrokers = \"b:9092\"\ngroup_id = \"g\"\ntopics = [\"t\"]\n\
                 [source.librdkafka]\n\"{name}\" = \"x\"\n\
                 [redis]\nurl = \"redis://r\"\nversion_ttl = \"1h\"\n\
                 [[entity]]\ntable = \"public.t\"\nmax_cache_ttl = \"1m\"\nkeys = [\"t:{{id}}\"]\n"
            );
            let error = crate::config::parse("test.toml", &text, &|_| None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(name), "{name}: {error}");
        }
    }

    #[test]
    fn a_refused_setting_is_named_without_its_value() {
        let mut config = ClientConfig::new();
        config.set("sasl.oauthbearer.client.secret", "S3cretValue");
        config.set("security.protocol", "S3cretValue");
        let error = config
            .create::<rdkafka::consumer::BaseConsumer>()
            .map(|_| ())
            .map_err(without_setting_value)
            .expect_err("an invalid security.protocol is refused");
        let printed = format!("{error} {error:?}");
        assert!(!printed.contains("S3cret"), "{printed}");
        assert!(
            printed.contains("security.protocol") || printed.contains("sasl.oauthbearer"),
            "{printed}"
        );
    }
}
