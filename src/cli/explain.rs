//! `explain`: the targets one Debezium record would bump, and why (which
//! rule, which image, which lookup, which message or outbox row), through
//! the same routing and fan-out as `run`: the record is decoded and derived
//! once, and every line printed comes from that one derivation.

use std::io::Read;
use std::path::Path;

use anyhow::Context;

use super::{avro_schemas, load, load_schemas, lookups};
use crate::config::Settings;
use crate::event::{Decoded, KafkaRecord, Position};
use crate::graph::{Derivation, DerivedTarget, LookupRequest, MessageVerdict, Why};
use crate::{lookup, pipeline};

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
    load_schemas(avro.as_deref(), &record).await;
    // One decode and one derivation, as `run` routes the record; everything
    // below prints from them.
    let trace = pipeline::trace_with(
        &settings.graph,
        &settings.plan,
        &record,
        pipeline::now_us(),
        settings.dead_letters.is_some(),
        avro.as_deref(),
    );
    let route = trace.route;
    if let Some(failure) = &route.dead_letter {
        println!(
            "dead    would be kept as a dead letter: {} {}: {}",
            failure.stage.label(),
            failure.kind,
            failure.detail
        );
    }
    let routed = route.action;
    let event = match trace.decoded {
        Ok(Decoded::Change(event)) => event,
        Ok(Decoded::Message(message)) if trace.named.is_some() => {
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
            if let Some(verdict) = trace.named {
                print_named(&settings, verdict, &message.position, &routed).await?;
            }
            return Ok(0);
        }
        Ok(other) if routed == pipeline::Routed::Skip => {
            println!("kind    {other:?}: not a row change, nothing to invalidate");
            return Ok(0);
        }
        Ok(other) => {
            println!("kind    {other:?}: not a row change, on the topic of a configured table");
            println!("result  {routed:?}");
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
    if let Some(verdict) = trace.named {
        println!(
            "outbox  a row of outbox table {}: its content names what to invalidate",
            event.table
        );
        print_named(&settings, verdict, &event.position, &routed).await?;
        return Ok(0);
    }
    let Some(derivation) = trace.derivation else {
        println!("result  moot: older than the entity's max_cache_ttl plus the skew margin; dropped");
        return Ok(0);
    };
    match derivation {
        Derivation::Skip(reason) => println!("result  skipped ({reason:?}): nothing to invalidate"),
        Derivation::Stall { reason, detail } => print_stall(reason.label(), &detail),
        Derivation::Targets {
            targets,
            escalation,
            lookups: requests,
        } => {
            let prefix = &settings.redis.version_prefix;
            let print_bump = |t: &DerivedTarget| {
                let why = match &t.why {
                    Why::Template { .. } => format!("entity {}, {}", event.table, t.why),
                    other => other.to_string(),
                };
                println!("bump    {:<40} {}  <- {}", t.target.record_key(prefix), t.target, why);
            };
            targets.iter().for_each(print_bump);
            if let Some(reason) = escalation {
                println!(
                    "note    escalated ({}): readers that fold the namespace version are covered",
                    reason.label()
                );
            }
            if print_fan_out(&settings, &requests, print_bump).await? {
                print_guard(&event.position);
            }
        }
    }
    Ok(0)
}

/// What a message or an outbox row names: each target and why (its rows'
/// fan-outs run as for a change of the row), or why it is skipped, ignored
/// or refused.
async fn print_named(
    settings: &Settings,
    verdict: MessageVerdict,
    position: &Position,
    routed: &pipeline::Routed,
) -> anyhow::Result<()> {
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
            let print_bump =
                |t: &DerivedTarget| println!("bump    {:<40} {}  <- {}", t.target.record_key(prefix), t.target, t.why);
            targets.iter().for_each(print_bump);
            if print_fan_out(settings, &lookups, print_bump).await? {
                print_guard(position);
            }
        }
    }
    Ok(())
}

/// Prints the fan-out queries and runs them as `run` does, printing the
/// children they add; false when the partition would stall on them (it
/// stops before the record's offset: no guard is written for it).
async fn print_fan_out(
    settings: &Settings,
    requests: &[LookupRequest],
    print_bump: impl Fn(&DerivedTarget),
) -> anyhow::Result<bool> {
    for request in requests {
        if let Some(fanout) = settings
            .graph
            .entity(&request.table)
            .and_then(|e| e.fanouts.get(request.fanout))
        {
            println!(
                "lookup  {:?} with {:?} (max_rows {})",
                fanout.query, request.binds, fanout.max_rows
            );
        }
    }
    if requests.is_empty() {
        return Ok(true);
    }
    // Opened only when a fan-out needs it, the way `run` opens it.
    let lookup_db = lookups(settings)?;
    match lookup::fan_out(&settings.graph, lookup_db.as_ref(), requests, false).await {
        Ok(found) => {
            found.targets.iter().for_each(print_bump);
            Ok(true)
        }
        Err(stall) => {
            print_stall(stall.reason.label(), &stall.detail);
            Ok(false)
        }
    }
}

fn print_guard(position: &Position) {
    println!("guard   field p:{} = {}", position.source, position.ordinal);
}

fn print_stall(reason: &str, detail: &str) {
    println!("result  STALL ({reason}): {detail}");
    println!("        the partition would stop here and readiness turn false");
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
            partition: i32::try_from(json.get("partition").and_then(|p| p.as_i64()).unwrap_or(0))
                .context("the record's partition is not a Kafka partition number (i32)")?,
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
