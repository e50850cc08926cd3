//! The librdkafka settings the daemon decides for itself, each with its
//! reason. `kafka_client` sets them on the clients it builds (after the
//! passthrough, so they always win); config validation refuses them in
//! `[source.librdkafka]`, naming the field. The lists live in this leaf
//! module, which imports nothing, so that both can read them without
//! `config` and `kafka_client` importing each other: change a list here and
//! the client that forces it (`kafka_client::consumer`) together.

/// What the group consumer forces.
pub(crate) const CONSUMER_FORCED: &[(&str, &str)] = &[
    // At-least-once: offsets are stored only after Redis acknowledged every
    // target of the record and of all earlier records of its partition...
    ("enable.auto.offset.store", "false"),
    // ...and librdkafka commits what was stored, every auto.commit.interval.ms.
    ("enable.auto.commit", "true"),
    ("enable.partition.eof", "false"),
];

/// What the classic group protocol also forces: replicas share partitions
/// without stop-the-world rebalances. (The consumer protocol, KIP-848, is
/// incremental by design, its assignor is the broker's, and librdkafka
/// refuses this setting there.) Refused in the passthrough either way.
pub(crate) const CLASSIC_FORCED: &[(&str, &str)] = &[("partition.assignment.strategy", "cooperative-sticky")];

/// Set from other fields of the config, so each lives in one place:
/// `brokers`, `group_id`, `instance_id`, `group_protocol`.
pub(crate) const FROM_CONFIG: &[&str] = &["bootstrap.servers", "group.id", "group.instance.id", "group.protocol"];

/// Whether `[source.librdkafka]` may not set `name`.
pub(crate) fn is_forced(name: &str) -> bool {
    FROM_CONFIG.contains(&name)
        || CONSUMER_FORCED
            .iter()
            .chain(CLASSIC_FORCED)
            .any(|(forced, _)| *forced == name)
}
