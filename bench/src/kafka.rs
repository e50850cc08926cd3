//! Kafka helpers: fresh topics (broker append time, so a record's timestamp
//! is when the log took it), deletion, and end offsets.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn admin(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("kafka admin client")
}

/// Creates `topic`; fails if it exists (every run uses fresh names).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin = admin(brokers)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        // The latency probe measures from the broker's append time.
        .set("message.timestamp.type", "LogAppendTime");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&new], &opts).await? {
        if let Err((name, code)) = result {
            bail!("cannot create topic {name:?}: {code}");
        }
    }
    // Wait until the broker serves metadata for every partition.
    let consumer = plain_consumer(brokers)?;
    for _ in 0..100 {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if md.topics().first().is_some_and(|t| {
                t.error().is_none() && usize::try_from(partitions).is_ok_and(|n| n == t.partitions().len())
            }) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("topic {topic:?} did not become visible")
}

pub async fn delete_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let admin = admin(brokers)?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.delete_topics(&[topic], &opts).await? {
        if let Err((name, code)) = result {
            bail!("cannot delete topic {name:?}: {code}");
        }
    }
    Ok(())
}

pub fn plain_consumer(brokers: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cdc-bench-metadata")
        .set("enable.auto.commit", "false")
        .create()
        .context("kafka consumer")
}

/// High watermark (one past the last offset) per partition.
pub fn end_offsets(brokers: &str, topic: &str) -> anyhow::Result<Vec<i64>> {
    let consumer = plain_consumer(brokers)?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("metadata")?;
    let t = md.topics().first().context("no such topic")?;
    let mut out = Vec::new();
    for p in t.partitions() {
        let (_low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}/{}", p.id()))?;
        out.push(high);
    }
    Ok(out)
}

/// Sends `record`, sleeping `backoff` and trying again while the producer's
/// queue is full (the loads produce faster than librdkafka drains).
pub fn send_when_queued<'a, C, K, P>(
    producer: &rdkafka::producer::ThreadedProducer<C>,
    mut record: rdkafka::producer::BaseRecord<'a, K, P, C::DeliveryOpaque>,
    backoff: Duration,
) -> rdkafka::error::KafkaResult<()>
where
    C: rdkafka::producer::ProducerContext + 'static,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(backoff);
            }
            Err((e, _)) => return Err(e),
        }
    }
}
