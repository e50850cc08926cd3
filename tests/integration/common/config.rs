//! Daemon config files: one writer for every test, so the settings each
//! test relies on (fast metadata refresh, short Redis retries, an admin
//! listener on port 0) are the same everywhere.

use super::{kafka_brokers, unique};

/// Writes a daemon config for one topic, with a fresh consumer group.
pub fn write_config(topic: &str, redis: &str, prefix: &str, extra: &str) -> tempfile::NamedTempFile {
    write_config_for(&[topic.to_owned()], redis, prefix, &unique("group"), extra)
}

/// Writes a daemon config for `topics` and `group`; `extra` adds sections
/// (`[[entity]]`, `[plan]`, ...). The admin listener binds port 0: the
/// daemon logs the address it got, and `Daemon::start` reads it.
pub fn write_config_for(
    topics: &[String],
    redis: &str,
    prefix: &str,
    group: &str,
    extra: &str,
) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(
        file.path(),
        format!(
            r#"
[source]
brokers = "{brokers}"
group_id = "{group}"
topics = {topics:?}
[source.librdkafka]
"topic.metadata.refresh.interval.ms" = "1000"
[redis]
url = "{redis}"
version_prefix = "{prefix}"
version_ttl = "1h"
max_retry_backoff = "500ms"
[admin]
listen = "127.0.0.1:0"
{extra}
"#,
            brokers = kafka_brokers(),
        ),
    )
    .unwrap();
    file
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
