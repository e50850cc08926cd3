//! `dead-letters list | replay | purge`: the records kept in PostgreSQL
//! because they could not be decoded or rendered. `replay` routes each one
//! again (after a fix of the config or the code) and applies its bumps.

use anyhow::Context;

use super::{avro_schemas, dead_letter_store, load, DeadLetterAction};
use crate::pipeline;
use crate::sink::RedisSink;

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
            let (mut replayed, mut still_failing) = (0, 0);
            for d in store.list(true, limit).await? {
                let record = d.record();
                let route = super::explain::route_now(&settings, avro.as_deref(), &record, true).await;
                if let pipeline::Routed::Bump {
                    targets,
                    position,
                    commit_time_us,
                    ..
                } = &route.action
                {
                    let bumps: Vec<_> = targets
                        .iter()
                        .map(|t| crate::plan::Bump {
                            target: t.clone(),
                            position: position.clone(),
                            commit_time_us: *commit_time_us,
                        })
                        .collect();
                    sink.apply(&bumps).await?;
                }
                match route.dead_letter {
                    None => {
                        store.mark_replayed(d.id).await?;
                        replayed += 1;
                        println!("#{:<6} replayed: {:?}", d.id, route.action);
                    }
                    Some(failure) => {
                        still_failing += 1;
                        println!(
                            "#{:<6} still fails ({} {}): {}; left pending",
                            d.id,
                            failure.stage.label(),
                            failure.kind,
                            failure.detail
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
