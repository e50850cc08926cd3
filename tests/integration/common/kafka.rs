//! Kafka records for tests that produce straight to a topic: Debezium-shaped
//! changes (JSON and Confluent-framed Avro), producing them, and reading a
//! group's committed offset.

use std::time::Duration;

use super::kafka_brokers;

/// A Kafka record to produce: key and value bytes.
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

pub async fn produce(topic: &str, records: &[KeyValue]) -> Vec<(i32, i64)> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        // One partition order for the whole sequence: same key bytes are not
        // guaranteed, so the tests pin partition 0.
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let mut out = Vec::new();
    for (key, value) in records {
        let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(topic).partition(0);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        let delivered = producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        out.push((delivered.partition, delivered.offset));
    }
    out
}

/// A Debezium-shaped PostgreSQL change record, for tests that produce
/// straight to Kafka: (key, value) bytes.
pub fn debezium_change(
    table: &str,
    op: &str,
    lsn: u64,
    id: i64,
    after: serde_json::Value,
    commit_time_us: i64,
) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let value = serde_json::json!({"before": null, "after": after, "op": op,
        "source": {"connector": "postgresql", "name": "shop", "db": "shop", "schema": "public", "table": table,
                   "lsn": lsn, "sequence": format!("[\"{lsn}\",\"{lsn}\"]"), "ts_us": commit_time_us}});
    (
        Some(serde_json::to_vec(&serde_json::json!({"id": id})).unwrap()),
        Some(serde_json::to_vec(&value).unwrap()),
    )
}

/// Produces many records quickly (no per-record await), all to partition 0.
pub async fn produce_many(topic: &str, records: impl Iterator<Item = (Option<Vec<u8>>, Option<Vec<u8>>)>) -> usize {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    let mut count = 0;
    for (key, value) in records {
        let key = key.unwrap_or_default();
        let value = value.unwrap_or_default();
        let record = FutureRecord::to(topic).partition(0).key(&key).payload(&value);
        pending.push(producer.send_result(record).expect("enqueue"));
        count += 1;
        if pending.len() >= 10_000 {
            for p in pending.drain(..) {
                p.await.expect("delivery").map_err(|(e, _)| e).expect("produce");
            }
        }
    }
    for p in pending {
        p.await.expect("delivery").map_err(|(e, _)| e).expect("produce");
    }
    count
}

/// The committed offset of a group on one partition (None: nothing committed).
pub fn committed_offset(group: &str, topic: &str, partition: i32) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed.elements()[0].offset().to_raw().filter(|o| *o >= 0)
}

/// A Debezium insert of `row` into `public.<table>` as an Avro record: no
/// before image, op "c"; `lsn` and `sequence` come typed as the test's schema
/// declares them (plain, or inside a union).
pub fn avro_insert(
    table: &str,
    row: apache_avro::types::Value,
    lsn: apache_avro::types::Value,
    sequence: apache_avro::types::Value,
) -> apache_avro::types::Value {
    use apache_avro::types::Value as Avro;
    Avro::Record(vec![
        ("before".into(), Avro::Union(0, Box::new(Avro::Null))),
        ("after".into(), Avro::Union(1, Box::new(row))),
        (
            "source".into(),
            Avro::Record(vec![
                ("connector".into(), Avro::String("postgresql".into())),
                ("name".into(), Avro::String("shop".into())),
                ("schema".into(), Avro::String("public".into())),
                ("table".into(), Avro::String(table.into())),
                ("lsn".into(), lsn),
                ("sequence".into(), sequence),
            ]),
        ),
        ("op".into(), Avro::String("c".into())),
    ])
}

/// An Avro datum in the Confluent wire format: magic byte 0, the schema id
/// (big-endian), the datum.
// The writer API that replaces to_avro_datum needs a schema-owning builder;
// this is a test helper.
#[allow(deprecated)]
pub fn confluent_framed(id: u32, schema: &apache_avro::Schema, value: apache_avro::types::Value) -> Vec<u8> {
    let mut out = vec![0];
    out.extend(id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(schema, value).unwrap());
    out
}

/// Produces one change (`op` at `lsn`, committed now) of the row `{"id": id}`
/// of `table` to partition 0 of `topic`.
pub async fn produce_id_change(topic: &str, table: &str, op: &str, lsn: u64, id: i64) {
    produce_many(
        topic,
        std::iter::once(debezium_change(
            table,
            op,
            lsn,
            id,
            serde_json::json!({"id": id}),
            super::now_us(),
        )),
    )
    .await;
}
