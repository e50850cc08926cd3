//! Notices: each applied bump announced on a Redis Pub/Sub channel (JSON)
//! and/or a Kafka topic (Avro, `schemas/invalidation-notice.avsc`, Confluent
//! framing), so in-process L1 caches and other consumers can react at once.
//! Best effort by design: the version records stay the source of truth, a
//! lost notice only delays an L1 eviction until its next version read.

use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::OnceLock;

use crate::graph::Target;
use crate::plan::Bump;
use crate::sink::BumpResult;
use crate::tasks::Tasks;

pub(crate) const NOTICE_SCHEMA: &str = include_str!("../../schemas/invalidation-notice.avsc");

// Settings types live in `config`, which depends on no stage module.
pub use crate::config::NoticeSettings;

#[derive(Debug, thiserror::Error)]
pub(crate) enum NoticeError {
    #[error("notice schema: {0}")]
    Schema(String),
    #[error("notice producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    #[error("registering the notice schema: {0}")]
    Register(String),
}

impl From<rdkafka::error::KafkaError> for NoticeError {
    fn from(error: rdkafka::error::KafkaError) -> NoticeError {
        NoticeError::Producer(error)
    }
}

pub(crate) struct Notices {
    redis_channel: Option<String>,
    kafka: Option<(FutureProducer, String, u32)>,
    /// Resolved once; the schema lives for the whole process.
    writer: GenericDatumWriter<'static>,
    /// The Kafka publishes run here, so that `run` waits for them at shutdown.
    tasks: Tasks,
}

fn notice_schema() -> Result<&'static Schema, NoticeError> {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    if let Some(schema) = SCHEMA.get() {
        return Ok(schema);
    }
    let parsed = Schema::parse_str(NOTICE_SCHEMA).map_err(|e| NoticeError::Schema(e.to_string()))?;
    Ok(SCHEMA.get_or_init(|| parsed))
}

fn notice_writer() -> Result<GenericDatumWriter<'static>, NoticeError> {
    GenericDatumWriter::builder(notice_schema()?)
        .build()
        .map_err(|e| NoticeError::Schema(e.to_string()))
}

/// One notice, as JSON on Pub/Sub and as Avro on Kafka.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct Notice {
    pub(crate) kind: &'static str,
    pub(crate) target: String,
    pub(crate) record_key: String,
    pub(crate) version: u64,
    pub(crate) source: String,
    pub(crate) position: String,
    pub(crate) commit_time_us: Option<i64>,
}

impl Notices {
    pub(crate) async fn new(
        settings: &NoticeSettings,
        source: &crate::config::SourceSettings,
        registry: Option<&crate::registry::Registry>,
        tasks: Tasks,
    ) -> Result<Notices, NoticeError> {
        let writer = notice_writer()?;
        let kafka = match &settings.kafka_topic {
            Some(topic) => {
                let id = match (settings.kafka_schema_id, registry) {
                    (Some(id), _) => id,
                    (None, Some(registry)) => registry
                        .register(&format!("{topic}-value"), NOTICE_SCHEMA)
                        .await
                        .map_err(|e| NoticeError::Register(e.to_string()))?,
                    (None, None) => {
                        return Err(NoticeError::Schema(
                            "notices.kafka_topic needs notices.kafka_schema_id or an [avro] registry_url to register the schema".into(),
                        ))
                    }
                };
                let producer: FutureProducer = crate::kafka_client::producer(source)
                    .create()
                    .map_err(crate::kafka_client::without_setting_value)?;
                Some((producer, topic.clone(), id))
            }
            None => None,
        };
        Ok(Notices {
            redis_channel: settings.redis_channel.clone(),
            kafka,
            writer,
            tasks,
        })
    }

    pub(crate) fn redis_channel(&self) -> Option<&str> {
        self.redis_channel.as_deref()
    }

    /// The notices of the bumps that were applied (guard no-ops are not news).
    pub(crate) fn of(prefix: &str, bumps: &[Bump], results: &[BumpResult]) -> Vec<Notice> {
        bumps
            .iter()
            .zip(results)
            .filter_map(|(b, r)| Some((b, r.version?)))
            .map(|(b, version)| Notice {
                kind: match b.target {
                    Target::Key(_) => "KEY",
                    Target::Namespace(_) => "NAMESPACE",
                },
                target: match &b.target {
                    Target::Key(k) => k.clone(),
                    Target::Namespace(n) => n.clone(),
                },
                record_key: b.target.record_key(prefix),
                version,
                source: b.position.source.clone(),
                position: b.position.ordinal.clone(),
                commit_time_us: b.commit_time_us,
            })
            .collect()
    }

    pub(crate) fn encode_avro(&self, notice: &Notice, schema_id: u32) -> Result<Vec<u8>, NoticeError> {
        let value = Avro::Record(vec![
            (
                "kind".into(),
                Avro::Enum(u32::from(notice.kind == "NAMESPACE"), notice.kind.into()),
            ),
            ("target".into(), Avro::String(notice.target.clone())),
            ("record_key".into(), Avro::String(notice.record_key.clone())),
            // Never saturates: reply::version_number refuses versions from 2^63 up.
            (
                "version".into(),
                Avro::Long(i64::try_from(notice.version).unwrap_or(i64::MAX)),
            ),
            ("source".into(), Avro::String(notice.source.clone())),
            ("position".into(), Avro::String(notice.position.clone())),
            (
                "commit_time_us".into(),
                match notice.commit_time_us {
                    Some(t) => Avro::Union(1, Box::new(Avro::Long(t))),
                    None => Avro::Union(0, Box::new(Avro::Null)),
                },
            ),
        ]);
        let mut out = Vec::with_capacity(128);
        out.push(0);
        out.extend_from_slice(&schema_id.to_be_bytes());
        self.writer
            .write_value(&mut out, value)
            .map_err(|e| NoticeError::Schema(e.to_string()))?;
        Ok(out)
    }

    /// Sends the Kafka notices in the background, as a tracked task: each
    /// delivery is bounded (10 s), so the task ends on its own.
    pub(crate) fn publish_kafka_in_background(self: &Arc<Notices>, notices: Vec<Notice>) {
        if self.kafka.is_none() {
            return;
        }
        let publisher = self.clone();
        self.tasks
            .spawn("kafka notices", async move { publisher.publish_kafka(&notices).await });
    }

    /// Sends the Kafka notices; failures are counted and logged, never retried.
    pub(crate) async fn publish_kafka(&self, notices: &[Notice]) {
        let Some((producer, topic, id)) = &self.kafka else {
            return;
        };
        let mut deliveries = Vec::with_capacity(notices.len());
        for notice in notices {
            let payload = match self.encode_avro(notice, *id) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "notice not encoded");
                    continue;
                }
            };
            let record = FutureRecord::to(topic)
                .key(notice.record_key.as_str())
                .payload(&payload);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((e, _)) => {
                    crate::metrics::notice_failed("kafka");
                    tracing::warn!(error = %e, "notice not queued");
                }
            }
        }
        for delivery in deliveries {
            match tokio::time::timeout(Duration::from_secs(10), delivery).await {
                Ok(Ok(Ok(_))) => crate::metrics::notice_sent("kafka"),
                _ => crate::metrics::notice_failed("kafka"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Position;

    #[test]
    fn notices_only_for_applied_bumps_and_avro_round_trips() {
        let bumps = vec![
            Bump {
                target: Target::Key("product:1".into()),
                position: Position::kafka("t", 0, 5),
                commit_time_us: Some(7),
            },
            Bump {
                target: Target::Namespace("product".into()),
                position: Position::kafka("t", 0, 5),
                commit_time_us: None,
            },
        ];
        let results = [BumpResult { version: Some(11) }, BumpResult { version: None }];
        let notices = Notices::of("ver:", &bumps, &results);
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].record_key, "ver:product:1");
        let n = Notices {
            redis_channel: None,
            kafka: None,
            writer: notice_writer().unwrap(),
            tasks: Tasks::new(),
        };
        let bytes = n.encode_avro(&notices[0], 9).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 9]);
        #[allow(deprecated)] // the simplest reader for a test
        let decoded = apache_avro::from_avro_datum(notice_schema().unwrap(), &mut &bytes[5..], None).unwrap();
        match decoded {
            Avro::Record(fields) => {
                assert_eq!(fields[1], ("target".into(), Avro::String("product:1".into())));
                assert_eq!(fields[3], ("version".into(), Avro::Long(11)));
            }
            other => panic!("{other:?}"),
        }
    }
}
