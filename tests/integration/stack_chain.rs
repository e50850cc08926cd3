//! Proof that the real chain works: a row change in PostgreSQL arrives in
//! Kafka as Debezium's change event, read here with rdkafka.

use crate::common;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use serde_json::Value;

#[tokio::test]
async fn update_in_postgres_arrives_as_debezium_event_in_kafka() {
    let table = common::unique("chain");
    let pool = common::pg().await;
    common::sql(
        &pool,
        &format!(
            "CREATE TABLE {table} (id integer PRIMARY KEY, name text NOT NULL, price numeric(10,2));
             INSERT INTO {table} VALUES (7, 'before', 1.50);
             UPDATE {table} SET name = 'after', price = 2.25 WHERE id = 7;"
        ),
    )
    .await;

    let topic = format!("{}.public.{table}", common::topic_prefix());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .set("group.id", common::unique("chain-test"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // The topic appears when Debezium writes the first event.
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = Vec::new();
    while events.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no Debezium events on {topic} within 60s (got {})",
            events.len()
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            let key: Value = serde_json::from_slice(message.key().unwrap()).unwrap();
            let value: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
            events.push((key, value));
        }
    }
    let update = events
        .iter()
        .find(|(_, v)| v["payload"]["op"] == "u")
        .unwrap_or_else(|| panic!("no update among {events:?}"));
    let (key, value) = update;
    assert_eq!(key["payload"], serde_json::json!({"id": 7}));
    let payload = &value["payload"];
    assert_eq!(payload["source"]["table"], Value::String(table.clone()));
    assert_eq!(payload["source"]["connector"], "postgresql");
    assert_eq!(payload["after"]["name"], "after");
    // decimal.handling.mode=string in the stack's connector
    assert_eq!(payload["after"]["price"], "2.25");
    // REPLICA IDENTITY DEFAULT: no old row image on updates
    assert_eq!(payload["before"], Value::Null);

    common::sql(&pool, &format!("DROP TABLE {table}")).await;
}
