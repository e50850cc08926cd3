//! `dead-letters list | replay | purge`: the records kept in PostgreSQL
//! because they could not be decoded or rendered. `replay` routes each one
//! again (after a fix of the config or the code), runs its fan-out lookups
//! as `run` does and applies its bumps.

use anyhow::Context;

use super::{avro_schemas, dead_letter_store, load, load_schemas, lookups, DeadLetterAction};
use crate::config::Settings;
use crate::decode::AvroSchemas;
use crate::event::KafkaRecord;
use crate::sink::RedisSink;
use crate::{lookup, pipeline};

pub(super) async fn dead_letters(action: DeadLetterAction) -> anyhow::Result<i32> {
    let path = match &action {
        DeadLetterAction::List { config, .. }
        | DeadLetterAction::Replay { config, .. }
        | DeadLetterAction::Purge { config, .. } => config,
    };
    let settings = load(path)?;
    let store = dead_letter_store(&settings)?;
    match action {
        DeadLetterAction::List { all, limit, .. } => {
            let letters = store
                .list(!all, limit)
                .await
                .context("listing dead letters (if the table is missing, run `cdc-invalidator migrate`)")?;
            for d in &letters {
                println!(
                    "#{:<6} {}/{}@{}  {} {}  attempts {}  first seen {}{}\n        {}",
                    d.id,
                    d.topic,
                    d.partition,
                    d.offset,
                    d.stage,
                    d.error_kind,
                    d.attempts,
                    d.first_seen.format("%Y-%m-%d %H:%M:%S"),
                    d.replayed_at
                        .map(|t| format!("  replayed {}", t.format("%Y-%m-%d %H:%M:%S")))
                        .unwrap_or_default(),
                    d.error_detail
                );
            }
            println!("{} dead letter(s)", letters.len());
            Ok(0)
        }
        DeadLetterAction::Replay { limit, .. } => {
            let mut sink = RedisSink::connect(&settings.redis).await?;
            let avro = avro_schemas(&settings)?;
            let lookup_db = lookups(&settings)?;
            let (mut replayed, mut still_failing) = (0, 0);
            for d in store.list(true, limit).await? {
                let record = d.record();
                let route = route_now(&settings, avro.as_deref(), &record).await;
                let mut stalled = None;
                if let pipeline::Routed::Bump {
                    targets,
                    position,
                    commit_time_us,
                    lookups: requests,
                    ..
                } = &route.action
                {
                    let mut targets = targets.clone();
                    match lookup::fan_out(&settings.graph, lookup_db.as_ref(), requests, false).await {
                        Ok(found) => {
                            targets.extend(found.targets.into_iter().map(|t| t.target));
                            targets.sort();
                            targets.dedup();
                        }
                        Err(stall) => stalled = Some(stall),
                    }
                    // A fan-out that cannot complete applies nothing: the
                    // record stays pending, as `run` would stall at it.
                    if stalled.is_none() {
                        let bumps: Vec<_> = targets
                            .into_iter()
                            .map(|target| crate::plan::Bump {
                                target,
                                position: position.clone(),
                                commit_time_us: *commit_time_us,
                            })
                            .collect();
                        sink.apply(&bumps).await?;
                    }
                }
                match (route.dead_letter, stalled) {
                    (None, None) => {
                        store.mark_replayed(d.id).await?;
                        replayed += 1;
                        println!("#{:<6} replayed: {:?}", d.id, route.action);
                    }
                    (Some(failure), _) => {
                        still_failing += 1;
                        println!(
                            "#{:<6} still fails ({} {}): {}; left pending",
                            d.id,
                            failure.stage.label(),
                            failure.kind,
                            failure.detail
                        );
                    }
                    (None, Some(stall)) => {
                        still_failing += 1;
                        println!(
                            "#{:<6} still fails (fan-out {}): {}; left pending",
                            d.id,
                            stall.reason.label(),
                            stall.detail
                        );
                    }
                }
            }
            println!("{replayed} replayed, {still_failing} still failing");
            Ok(if still_failing == 0 { 0 } else { 1 })
        }
        DeadLetterAction::Purge { all, .. } => {
            println!("{} dead letter(s) deleted", store.purge(all).await?);
            Ok(0)
        }
    }
}

/// Loads the record's Avro schemas (when it is Avro) and routes it as the
/// daemon would now, a failure kept as a dead letter again.
async fn route_now(settings: &Settings, avro: Option<&AvroSchemas>, record: &KafkaRecord) -> pipeline::Route {
    load_schemas(avro, record).await;
    pipeline::route_with(&settings.graph, &settings.plan, record, pipeline::now_us(), true, avro)
}
