//! `[notices]`: each applied bump announced on a Redis Pub/Sub channel and/or
//! a Kafka topic (best effort; the version records stay the truth).

use serde_spanned::Spanned;

use super::raw::RawNotices;

/// `[notices]`: where applied bumps are announced (`sink::notice`).
#[derive(Debug, Clone, Default)]
pub struct NoticeSettings {
    pub(crate) redis_channel: Option<String>,
    pub(crate) kafka_topic: Option<String>,
    /// The notice schema's registry id; registered under `<topic>-value`
    /// when a registry is configured and this is not set.
    pub(crate) kafka_schema_id: Option<u32>,
}

impl RawNotices {
    /// Nothing to refuse: whether a Kafka topic has a schema to announce
    /// with is checked when the notifier starts (it may ask the registry).
    pub(super) fn validate(self) -> NoticeSettings {
        NoticeSettings {
            redis_channel: self.redis_channel.map(Spanned::into_inner),
            kafka_topic: self.kafka_topic.map(Spanned::into_inner),
            kafka_schema_id: self.kafka_schema_id.map(Spanned::into_inner),
        }
    }
}
