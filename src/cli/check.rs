//! `check`: validates the config, then reaches every dependency once and
//! says what it found: Redis (and the settings that can lose version
//! records), Kafka (the subscription's topics and their entities), Kafka
//! Connect's connectors, the dead-letter table, and through the lookup
//! database the tables, templated columns, replica identity and fan-out
//! queries (the catalog queries of `lookup`). Exit 0 only when nothing
//! failed.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::Consumer as _;

use super::{dead_letter_store, load};
use crate::config::{Settings, Subscription};
use crate::decode::table_from_topic;
use crate::lookup::{Catalog, Lookups};
use crate::pipeline;
use crate::sink::RedisSink;

pub(super) async fn check(path: &Path) -> anyhow::Result<i32> {
    let mut problems = 0;
    let settings = match load(path) {
        Ok(s) => {
            println!("ok    config {}: {} entities", path.display(), s.graph.entities().len());
            for e in s.graph.entities() {
                let keys: Vec<&str> = e.keys.iter().map(|k| k.text()).collect();
                println!(
                    "        {} -> {:?}{}",
                    e.table,
                    keys,
                    e.namespace
                        .as_ref()
                        .map(|n| format!(", namespace {n}"))
                        .unwrap_or_else(|| ", no namespace: exact keys or stall".into())
                );
            }
            s
        }
        Err(e) => {
            println!("FAIL  config: {e:#}");
            return Ok(1);
        }
    };

    match RedisSink::connect(&settings.redis).await {
        Ok(mut sink) => match sink.ping().await {
            Ok(()) => {
                println!(
                    "ok    redis {}: reachable, bump script loaded",
                    settings.redis.describe()
                );
                // Warnings, not failures: a cache may accept these risks.
                let facts = sink.server_facts(pipeline::namespace_count(&settings)).await;
                for finding in crate::sink::durability::assess(&facts) {
                    match finding {
                        crate::sink::durability::Finding::Ok(text) => println!("ok    redis: {text}"),
                        crate::sink::durability::Finding::Warn(text) => println!("warn  redis: {text}"),
                    }
                }
            }
            Err(e) => {
                println!("FAIL  redis {}: {e}", settings.redis.describe());
                problems += 1;
            }
        },
        Err(e) => {
            println!("FAIL  redis {}: {e}", settings.redis.describe());
            problems += 1;
        }
    }

    if let Some(sentinel) = &settings.redis.sentinel {
        problems += report_sentinels(sentinel).await;
    }

    match kafka_topics(&settings) {
        Ok(found) => {
            let wanted: Vec<String> = match &settings.source.subscription {
                Subscription::Topics(topics) => topics.clone(),
                Subscription::Regex(pattern) => found.iter().filter(|t| pattern.is_match(t)).cloned().collect(),
            };
            println!(
                "ok    kafka {}: {} topics in the cluster",
                settings.source.brokers,
                found.len()
            );
            if wanted.is_empty() {
                println!(
                    "FAIL  kafka: the subscription {:?} matches no topic",
                    settings.source.subscription.patterns()
                );
                problems += 1;
            }
            for topic in wanted {
                let table = table_from_topic(&topic);
                let entity = table.as_deref().and_then(|t| settings.graph.entity(t));
                if !found.contains(&topic) {
                    println!("FAIL  topic {topic}: does not exist");
                    problems += 1;
                } else if let Some(what) = named_by(&settings, &topic, table.as_deref()) {
                    println!("ok    topic {topic} -> {what}");
                } else {
                    match entity {
                        Some(e) => println!("ok    topic {topic} -> entity {}", e.table),
                        None => {
                            println!(
                                "note  topic {topic}: no [[entity]] for table {}; its records are skipped",
                                table
                                    .as_deref()
                                    .unwrap_or("(none: the topic name is not <prefix>.<schema>.<table>)")
                            )
                        }
                    }
                }
            }
        }
        Err(e) => {
            println!("FAIL  kafka {}: {e}", settings.source.brokers);
            problems += 1;
        }
    }
    if let Some(connect) = &settings.connect {
        for (name, verdict) in crate::source::connect::status_once(connect).await {
            match verdict.problem {
                None => println!(
                    "ok    connector {name}: RUNNING with {} task(s)",
                    verdict.tasks.values().sum::<usize>()
                ),
                Some(problem) => {
                    println!("FAIL  connector {name}: {problem}");
                    problems += 1;
                }
            }
        }
    }
    if settings.dead_letters.is_some() {
        problems += check_dead_letters(&settings, path).await;
    }
    problems += check_database(&settings).await;
    if problems == 0 {
        println!("all checks passed");
        Ok(0)
    } else {
        println!("{problems} check(s) failed");
        Ok(1)
    }
}

/// What a topic carries for `[messages]`: an outbox table's rows, or
/// logical-decoding messages (a listed topic, or Debezium's
/// `<topic.prefix>.message` when none is listed).
fn named_by(settings: &Settings, topic: &str, table: Option<&str>) -> Option<String> {
    let rules = settings.graph.messages()?;
    if let Some(table) = table.filter(|t| rules.is_outbox(t)) {
        return Some(format!("outbox table {table} (inserted rows name what to invalidate)"));
    }
    let listed = match &rules.topics {
        Some(topics) => topics.iter().any(|t| t == topic),
        None => topic.ends_with(".message") && table.is_none(),
    };
    listed.then(|| format!("logical-decoding messages with prefix {:?}", rules.prefix))
}

/// The dead-letter table must exist when `run` starts (migrations are
/// explicit: `migrate`, or `run --migrate`) and must not be captured by a
/// publication. Returns the failure count.
async fn check_dead_letters(settings: &Settings, path: &Path) -> usize {
    let store = match dead_letter_store(settings) {
        Ok(store) => store,
        Err(e) => {
            println!("FAIL  dead letters: {e:#}");
            return 1;
        }
    };
    let table = store.table();
    let mut problems = 0;
    match store.table_exists().await {
        Ok(true) => println!("ok    dead letters: table {table} is there"),
        Ok(false) => {
            println!(
                "FAIL  dead letters: no table {table} (run `cdc-invalidator migrate --config {}`, or start `run --migrate`)",
                path.display()
            );
            problems += 1;
        }
        Err(e) => {
            println!("FAIL  dead letters: {e}");
            return 1;
        }
    }
    match store.capturing_publications().await {
        Ok(publications) if publications.is_empty() => {
            println!("ok    dead letters: no publication captures {table}")
        }
        Ok(publications) => {
            println!(
                "FAIL  dead letters: {table} is captured by publication {}: every dead letter would become a change \
                 event of its own, and a large one can fail the Debezium task for every table. Publish only the \
                 captured schemas (CREATE PUBLICATION ... FOR TABLES IN SCHEMA public, or FOR TABLE ...), or keep \
                 dead letters in a database Debezium does not capture",
                publications.join(", ")
            );
            problems += 1;
        }
        Err(e) => {
            println!("FAIL  dead letters: reading the publications: {e}");
            problems += 1;
        }
    }
    problems
}

/// Checks the graph against the source schema through the lookup database:
/// tables and templated columns exist, replica identity matches what the
/// config declares, and fan-out queries prepare. Returns the failure count.
async fn check_database(settings: &Settings) -> usize {
    let Some(l) = &settings.lookup else {
        println!("note  no [lookup] database: columns, replica identity and fan-out queries are not checked");
        return 0;
    };
    let lookups = match Lookups::connect_lazy(&l.url, l.timeout, l.attempts) {
        Ok(lookups) => lookups,
        Err(e) => {
            println!("FAIL  lookup database: {e}");
            return 1;
        }
    };
    let db = match lookups.catalog() {
        Catalog::Postgres(db) => db,
        Catalog::MySql(_) => {
            return crate::source::mysql_check::check_database(settings.graph.entities(), &lookups).await
        }
    };
    let mut problems = 0;
    for entity in settings.graph.entities() {
        // Config validation refuses a table that is not schema.table.
        let Some((schema, table)) = entity.table.split_once('.') else {
            continue;
        };
        let columns = match db.columns(schema, table).await {
            Ok(columns) => columns,
            Err(e) => {
                println!("FAIL  lookup database: {e}");
                return problems + 1;
            }
        };
        if columns.is_empty() {
            println!("FAIL  table {}: not found in the lookup database", entity.table);
            problems += 1;
            continue;
        }
        let used = entity
            .keys
            .iter()
            .flat_map(|t| t.columns())
            .chain(entity.fanouts.iter().flat_map(|f| f.bind.iter().map(String::as_str)));
        let missing: std::collections::BTreeSet<&str> = used.filter(|c| !columns.iter().any(|k| k == c)).collect();
        if !missing.is_empty() {
            println!(
                "FAIL  table {}: templated column(s) {missing:?} do not exist",
                entity.table
            );
            problems += 1;
        }
        let full = db.replica_identity_full(schema, table).await;
        let primary_key = db.primary_key(schema, table).await;
        let needs_old: Vec<&str> = entity
            .keys
            .iter()
            .filter(|t| t.columns().any(|c| !primary_key.iter().any(|k| k == c)))
            .map(|t| t.text())
            .collect();
        match (full, entity.full_before_image) {
            (Some(true), true) => println!("ok    table {}: REPLICA IDENTITY FULL, old keys render exactly", entity.table),
            (Some(true), false) => println!(
                "note  table {}: REPLICA IDENTITY FULL but the config says replica_identity = \"default\"; declare \"full\" to render old keys instead of escalating",
                entity.table
            ),
            (_, true) => {
                println!(
                    "FAIL  table {}: replica_identity = \"full\" is declared but the table is not (ALTER TABLE {} REPLICA IDENTITY FULL)",
                    entity.table, entity.table
                );
                problems += 1;
            }
            (_, false) if !needs_old.is_empty() => println!(
                "note  table {}: REPLICA IDENTITY DEFAULT; updates and deletes escalate to {} for {needs_old:?}",
                entity.table,
                entity.namespace.as_deref().map(|n| format!("namespace {n}")).unwrap_or_else(|| "nothing (no namespace: they STALL)".into())
            ),
            (_, false) => println!("ok    table {}: every template uses key columns only", entity.table),
        }
        problems += crate::source::mysql_check::check_fanouts(entity, &lookups).await;
    }
    problems
}

fn kafka_topics(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let consumer: rdkafka::consumer::BaseConsumer = crate::kafka_client::observer(&settings.source, "check")
        .create()
        .map_err(crate::kafka_client::without_setting_value)
        .context("creating a kafka client")?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .context("fetching cluster metadata (are the brokers reachable?)")?;
    Ok(metadata.topics().iter().map(|t| t.name().to_owned()).collect())
}

/// The Sentinels' view: who answers, the primary they agree on, each
/// replica and how far behind it is. A failure when none answers or they
/// disagree; a warning for an unreachable Sentinel or a replica that is
/// down or behind (a failover to it would lose writes: docs/redis-loss.md).
async fn report_sentinels(settings: &crate::config::SentinelSettings) -> usize {
    let view = crate::sink::sentinel::view(settings, Duration::from_secs(5)).await;
    let mut problems = 0;
    for answer in &view.answers {
        if let Err(e) = &answer.primary {
            println!("warn  redis sentinel {}: {e}", answer.sentinel);
        }
    }
    match view.agreed_primary() {
        Some(primary) => println!(
            "ok    redis sentinel: master {:?} is {primary} ({}), {} of {} Sentinels answer, quorum {}",
            settings.master_name,
            view.primary_flags.as_deref().unwrap_or("?"),
            view.answering(),
            view.answers.len(),
            view.quorum.as_deref().unwrap_or("?"),
        ),
        None if view.answering() == 0 => {
            println!(
                "FAIL  redis sentinel: no Sentinel names a primary for {:?}",
                settings.master_name
            );
            problems += 1;
        }
        None => {
            let named: Vec<String> = view
                .answers
                .iter()
                .filter_map(|a| Some(format!("{} says {}", a.sentinel, a.primary.as_ref().ok()?)))
                .collect();
            println!(
                "FAIL  redis sentinel: the Sentinels disagree on the primary ({})",
                named.join(", ")
            );
            problems += 1;
        }
    }
    if view.replicas.is_empty() && view.answering() > 0 {
        println!("warn  redis sentinel: no replica: a failover has nothing to promote");
    }
    for replica in &view.replicas {
        let behind = match (replica.behind_bytes, replica.lag_s) {
            (Some(bytes), Some(lag)) => format!("{bytes} bytes behind, last acknowledged {lag}s ago"),
            _ => "not listed by the primary".to_owned(),
        };
        let healthy = replica.flags == "slave" && replica.link == "ok" && replica.behind_bytes.is_some();
        println!(
            "{}  redis replica {}: {}, link {}, {behind}",
            if healthy { "ok  " } else { "warn" },
            replica.address,
            replica.flags,
            replica.link,
        );
    }
    problems
}
