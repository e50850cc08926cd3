//! `explain`: the targets one Debezium record would bump, and why (which
//! rule, which image, which lookup), through the same `route` as `run`.

use std::io::Read;
use std::path::Path;

use anyhow::Context;

use super::{avro_schemas, load, load_schemas};
use crate::decode::decode;
use crate::event::{Decoded, KafkaRecord, Position};
use crate::graph::{Derivation, Lookups, MessageVerdict, Why};
use crate::pipeline;

pub(super) async fn explain(path: &Path, source: &str, topic: Option<&str>) -> anyhow::Result<i32> {
    let settings = load(path)?;
    let text = if source == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the record from standard input")?;
        s
    } else {
        std::fs::read_to_string(source).with_context(|| format!("reading record file {source:?}"))?
    };
    let record = explain_record(&text, topic)?;
    println!(
        "record  topic {} partition {} offset {}",
        record.topic, record.partition, record.offset
    );

    let avro = avro_schemas(&settings)?;
    let route = route_now(&settings, avro.as_deref(), &record, settings.dead_letters.is_some()).await;
    if let Some(failure) = &route.dead_letter {
        println!(
            "dead    would be kept as a dead letter: {} {}: {}",
            failure.stage.label(),
            failure.kind,
            failure.detail
        );
    }
    let routed = route.action;
    let event = match decode(&record, avro.as_deref()) {
        Ok(Decoded::Change(event)) => event,
        Ok(Decoded::Message(message)) => {
            println!(
                "message prefix {:?}, {}, at {} ({} bytes of content)",
                message.prefix,
                if message.transactional {
                    "transactional"
                } else {
                    "NOT transactional"
                },
                message.position,
                message.content.len()
            );
            let verdict = settings.graph.route_message(&record.topic, &message);
            print_named(&settings, verdict, &message.position, &routed);
            return Ok(0);
        }
        Ok(other) => {
            println!("kind    {other:?}: not a row change, nothing to invalidate");
            return Ok(0);
        }
        Err(e) => {
            println!("decode  error: {e}");
            println!("result  {routed:?}");
            return Ok(0);
        }
    };
    println!(
        "event   op {} on {} at {}",
        event.op.code(),
        event.table,
        event.position
    );
    if let Some(verdict) = settings.graph.route_outbox(&event) {
        println!(
            "outbox  a row of outbox table {}: its content names what to invalidate",
            event.table
        );
        print_named(&settings, verdict, &event.position, &routed);
        return Ok(0);
    }
    if let pipeline::Routed::Moot = routed {
        println!("result  moot: older than the entity's max_cache_ttl plus the skew margin; dropped");
        return Ok(0);
    }
    match settings.graph.derive(&event) {
        Derivation::Skip(reason) => println!("result  skipped ({reason:?}): nothing to invalidate"),
        Derivation::Stall { reason, detail } => {
            println!("result  STALL ({}): {detail}", reason.label());
            println!("        the partition would stop here and readiness turn false");
        }
        Derivation::Targets {
            targets,
            escalation,
            lookups,
        } => {
            let prefix = &settings.redis.version_prefix;
            for t in &targets {
                let why = match &t.why {
                    Why::Template { .. } => format!("entity {}, {}", event.table, t.why),
                    other => other.to_string(),
                };
                println!("bump    {:<40} {}  <- {}", t.target.record_key(prefix), t.target, why);
            }
            if let Some(reason) = escalation {
                println!(
                    "note    escalated ({}): readers that fold the namespace version are covered",
                    reason.label()
                );
            }
            for request in &lookups {
                let Some(fanout) = settings
                    .graph
                    .entity(&request.table)
                    .and_then(|e| e.fanouts.get(request.fanout))
                else {
                    continue;
                };
                println!(
                    "lookup  {:?} with {:?} (max_rows {})",
                    fanout.query, request.binds, fanout.max_rows
                );
                let Some(l) = &settings.lookup else { continue };
                let lookups = Lookups::connect_lazy(&l.url, l.timeout, l.attempts)?;
                match lookups.run(fanout, &request.binds).await {
                    Ok(rows) => {
                        for row in &rows {
                            for template in &fanout.keys {
                                if let Ok(Some(key)) = template.render(row) {
                                    let target = crate::graph::Target::Key(key);
                                    println!(
                                        "bump    {:<40} {}  <- fan-out row, template {:?}",
                                        target.record_key(prefix),
                                        target,
                                        template.text()
                                    );
                                }
                            }
                        }
                    }
                    Err(e) => println!(
                        "lookup  {e}: would escalate to {}",
                        fanout
                            .namespace
                            .as_deref()
                            .map(|n| format!("namespace {n}"))
                            .unwrap_or_else(|| "nothing: STALL".into())
                    ),
                }
            }
            println!("guard   field p:{} = {}", event.position.source, event.position.ordinal);
        }
    }
    Ok(0)
}

/// What a message or an outbox row names: each target and why, or why it is
/// skipped, ignored or refused.
fn print_named(
    settings: &crate::config::Settings,
    verdict: MessageVerdict,
    position: &Position,
    routed: &pipeline::Routed,
) {
    match verdict {
        MessageVerdict::Skip(reason) => println!("result  skipped: {reason}"),
        MessageVerdict::Ignore(reason) => println!("result  ignored: {reason}"),
        MessageVerdict::Refuse(error) => {
            println!("result  refused ({}): {}", error.kind(), error.detail);
            match routed {
                pipeline::Routed::Stall { .. } => {
                    println!("        no dead-letter store: the partition would stop here and readiness turn false")
                }
                _ => println!("        kept as a dead letter; nothing is bumped"),
            }
        }
        MessageVerdict::Bump { targets, lookups } => {
            let prefix = &settings.redis.version_prefix;
            for t in &targets {
                println!("bump    {:<40} {}  <- {}", t.target.record_key(prefix), t.target, t.why);
            }
            for request in &lookups {
                if let Some(fanout) = settings
                    .graph
                    .entity(&request.table)
                    .and_then(|e| e.fanouts.get(request.fanout))
                {
                    println!(
                        "lookup  {:?} with {:?} (max_rows {}): run as for a change of the row",
                        fanout.query, request.binds, fanout.max_rows
                    );
                }
            }
            println!("guard   field p:{} = {}", position.source, position.ordinal);
        }
    }
}

/// Accepts a captured fixture (`{"topic", "key", "value", ...}`) or a bare value.
fn explain_record(text: &str, topic: Option<&str>) -> anyhow::Result<KafkaRecord> {
    let json: serde_json::Value = serde_json::from_str(text).context("the record is not JSON")?;
    let is_fixture = json.get("topic").is_some() && json.get("value").is_some();
    let bytes = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => None,
        // A parsed JSON value always encodes again.
        Some(v) => serde_json::to_vec(v).ok(),
    };
    Ok(if is_fixture {
        KafkaRecord {
            topic: topic
                .map(str::to_owned)
                .unwrap_or_else(|| json.get("topic").and_then(|t| t.as_str()).unwrap_or("").to_owned()),
            partition: json.get("partition").and_then(|p| p.as_i64()).unwrap_or(0) as i32,
            offset: json.get("offset").and_then(|p| p.as_i64()).unwrap_or(0),
            key: bytes(json.get("key")),
            value: bytes(json.get("value")),
            timestamp_ms: None,
            headers: Vec::new(),
        }
    } else {
        KafkaRecord {
            topic: topic.unwrap_or("").to_owned(),
            partition: 0,
            offset: 0,
            key: None,
            value: Some(text.as_bytes().to_vec()),
            timestamp_ms: None,
            headers: Vec::new(),
        }
    })
}

/// Loads the record's Avro schemas (when it is Avro) and routes it as the
/// daemon would now; `dead_letters`: whether a failure would be kept.
/// `dead-letters replay` routes its records the same way.
pub(super) async fn route_now(
    settings: &crate::config::Settings,
    avro: Option<&crate::decode::AvroSchemas>,
    record: &KafkaRecord,
    dead_letters: bool,
) -> pipeline::Route {
    load_schemas(avro, record).await;
    pipeline::route_with(
        &settings.graph,
        &settings.plan,
        record,
        pipeline::now_us(),
        dead_letters,
        avro,
    )
}
