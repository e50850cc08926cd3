//! Command line: `run`, `check`, `explain`. Each command returns an exit code.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use rdkafka::consumer::Consumer as _;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Status};
use crate::config::{self, redact_url, Settings, Subscription};
use crate::dead_letter::DeadLetterStore;
use crate::decode::AvroSchemas;
use crate::decode::{decode, table_from_topic};
use crate::event::{Decoded, KafkaRecord};
use crate::graph::{Derivation, Lookups, Why};
use crate::pipeline::{self, Pipeline};
use crate::sink::notice::Notices;
use crate::sink::RedisSink;

#[derive(Debug, Parser)]
#[command(
    name = "cdc-invalidator",
    version,
    about = "Keeps Redis-backed caches correct by following Debezium change events from Kafka",
    long_about = "Consumes Debezium row-change events from Kafka, maps each changed row to every cache key \
that depends on it through the relationship graph in the config file, and bumps a version record per key \
in Redis (HGET ver:<key> v). Offsets are committed only after Redis acknowledged. Readers also fold \
the epoch (HGET ver:epoch e) into data keys: the daemon advances it, and bumps every namespace, when it \
finds that Redis lost acknowledged writes (docs/redis-loss.md).\n\n\
Environment overrides (addresses and secrets): CDC_KAFKA_BROKERS, CDC_KAFKA_GROUP, CDC_REDIS_URL, \
CDC_ADMIN_LISTEN, CDC_LOOKUP_URL, CDC_DEAD_LETTERS_URL, CDC_SCHEMA_REGISTRY_URL, CDC_SCHEMA_REGISTRY_USER, \
CDC_SCHEMA_REGISTRY_PASSWORD, CDC_INSTANCE_ID (static group membership)."
)]
pub struct Cli {
    /// Log format: human-readable lines or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing env-filter syntax), e.g. "info" or "cdc_invalidator=debug".
    #[arg(long, env = "CDC_LOG", default_value = "info", global = true)]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// Show dead letters, oldest first.
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// Include those already replayed.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Push pending dead letters through decode, graph and Redis again; those
    /// that now go through are marked replayed.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Delete replayed dead letters (all of them with --all).
    Purge {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume and invalidate until SIGTERM or SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Apply the dead-letter table migrations before starting.
        #[arg(long)]
        migrate: bool,
    },
    /// Check that sampled changes reach Redis within an SLO (black box).
    Audit {
        #[arg(long, short)]
        config: PathBuf,
        /// Time a change may take from Kafka to its version records.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        slo: Duration,
        /// Check one change in this many.
        #[arg(long, default_value_t = 1)]
        sample_every: u64,
        /// Stop after this long (default: until SIGTERM/SIGINT).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Check a violation again this long after the SLO: late (it arrived)
        /// or lost (it did not).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        recheck_after: Duration,
        /// Serve the audit metrics here (/metrics).
        #[arg(long, default_value = "127.0.0.1:9800")]
        listen: std::net::SocketAddr,
    },
    /// Create or upgrade the dead-letter table ([dead_letters] url).
    Migrate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List, replay or purge dead letters.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Validate the config and connect to Kafka and Redis; exit 0 only when all is well.
    /// Also warns when Redis can lose version records (persistence off, an
    /// evicting maxmemory-policy without eviction notifications, fewer
    /// replicas than wait_replicas) or when a loss could not be detected, and
    /// fails when a [connect] connector is not RUNNING. With [lookup] it also
    /// verifies tables, templated columns, fan-out queries and old-row logging:
    /// REPLICA IDENTITY FULL (PostgreSQL) or binlog_format ROW and
    /// binlog_row_image FULL (MySQL, MariaDB) where replica_identity = "full".
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the targets one Debezium record would bump, and why.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// A file holding the record's value JSON, or a captured fixture
        /// ({"topic", "key", "value"}); "-" reads standard input.
        #[arg(long, default_value = "-")]
        record: String,
        /// Topic the record came from (names the table when the record does not).
        #[arg(long)]
        topic: Option<String>,
    },
}

pub fn init_logging(format: LogFormat, filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn load(path: &Path) -> anyhow::Result<Settings> {
    Ok(config::load(path, &|name| std::env::var(name).ok())?)
}

/// Runs a parsed command line; the result is the process exit code.
pub async fn execute(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run { config, migrate } => run(&config, migrate).await,
        Command::Migrate { config } => {
            let store = dead_letter_store(&load(&config)?)?;
            store.migrate().await?;
            println!("dead-letter table is up to date");
            Ok(0)
        }
        Command::DeadLetters { action } => dead_letters(action).await,
        Command::Audit {
            config,
            slo,
            sample_every,
            duration,
            recheck_after,
            listen,
        } => {
            let settings = load(&config)?;
            let metrics = crate::metrics::install();
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
            let listener = admin::bind(listen).await?;
            crate::metrics::audit_build_info();
            let server = tokio::spawn(admin::serve_metrics_only(listener, metrics, shutdown.clone()));
            let refresher = tokio::spawn({
                let stop = shutdown.clone();
                async move {
                    let mut interval = tokio::time::interval(crate::metrics::GAUGE_REFRESH);
                    while stop.run_until_cancelled(interval.tick()).await.is_some() {
                        crate::metrics::refresh_gauges();
                    }
                }
            });
            let options = crate::audit::AuditOptions {
                slo,
                sample_every,
                duration,
                recheck_after,
            };
            tracing::info!(slo = ?slo, sample_every, "auditing: changes must reach their version records within the SLO");
            let report = crate::audit::run(&settings, &options, shutdown.clone()).await?;
            println!("{}", report.summary(slo));
            shutdown.cancel();
            let _ = tokio::join!(server, refresher);
            Ok(if report.violations == 0 { 0 } else { 1 })
        }
        Command::Check { config } => check(&config).await,
        Command::Explain { config, record, topic } => explain(&config, &record, topic.as_deref()).await,
    }
}

fn avro_schemas(settings: &Settings) -> anyhow::Result<Option<Arc<AvroSchemas>>> {
    Ok(match &settings.avro {
        Some(sources) => Some(Arc::new(
            AvroSchemas::new(sources.clone()).context("creating the schema registry client")?,
        )),
        None => None,
    })
}

/// Loads the schemas a framed record names (explain and replay: one try each).
async fn load_schemas(avro: Option<&AvroSchemas>, record: &KafkaRecord) {
    let Some(avro) = avro else { return };
    for bytes in [record.key.as_deref(), record.value.as_deref()].into_iter().flatten() {
        if let Some(id) = crate::decode::schema_id(bytes) {
            if let Err(e) = avro.ensure(id).await {
                println!("schema  {e}");
            }
        }
    }
}

fn dead_letter_store(settings: &Settings) -> anyhow::Result<DeadLetterStore> {
    let dead_letters = settings.dead_letters.as_ref().context(
        "no dead-letter store configured: add [dead_letters] url = \"postgres://...\" or set CDC_DEAD_LETTERS_URL",
    )?;
    Ok(DeadLetterStore::connect_lazy(dead_letters)?)
}

async fn run(path: &Path, migrate: bool) -> anyhow::Result<i32> {
    let settings = Arc::new(load(path)?);
    // Bound before anything else: a taken port fails the start at once
    // instead of leaving a daemon without /metrics and /readyz.
    let listener = admin::bind(settings.admin_listen).await?;
    let dead_letters = match &settings.dead_letters {
        Some(_) => {
            let store = dead_letter_store(&settings)?;
            if migrate {
                store.migrate().await.context("applying dead-letter migrations")?;
                tracing::info!("dead-letter migrations applied");
            }
            match store.table_exists().await {
                Ok(false) => anyhow::bail!(
                    "the dead-letter table {} does not exist: run `cdc-invalidator migrate --config {}` or start with --migrate",
                    store.table(),
                    path.display()
                ),
                Ok(true) => match store.capturing_publications().await {
                    Ok(publications) if !publications.is_empty() => tracing::warn!(
                        table = %store.table(), publications = ?publications,
                        "the dead-letter table is captured by a publication: dead letters feed back into CDC (see `check`)"
                    ),
                    _ => {}
                },
                // Unreachable now is an outage like any other: the pipeline
                // pauses at the first dead letter until the store returns.
                Err(e) => tracing::warn!(error = %e, "dead-letter store not reachable at start"),
            }
            Some(store)
        }
        None => {
            tracing::info!("no dead-letter store configured: undecodable records escalate to their namespace or stall");
            None
        }
    };
    let metrics = crate::metrics::install();
    let status = Arc::new(Status::default());
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());

    let admin_task = tokio::spawn(admin::serve(listener, metrics, status.clone(), shutdown.clone()));

    let sink = match connect_redis_until_ready(&settings, &status, &shutdown).await {
        Some(sink) => sink,
        None => return Ok(0),
    };
    tracing::info!(
        brokers = %settings.source.brokers, group = %settings.source.group_id,
        subscription = ?settings.source.subscription.patterns(), redis = %redact_url(&settings.redis.url),
        entities = settings.graph.entities().len(), "starting"
    );
    let lookups = match &settings.lookup {
        Some(l) => Some(Lookups::connect_lazy(&l.url, l.timeout, l.attempts).context("lookup database URL")?),
        None => None,
    };
    let avro = avro_schemas(&settings)?;
    let notices = match &settings.notices {
        Some(n) => {
            let registry = match &settings.avro {
                Some(sources) => {
                    crate::registry::Registry::from_sources(sources).context("creating the schema registry client")?
                }
                None => None,
            };
            Some(Arc::new(Notices::new(n, &settings.source, registry.as_ref()).await?))
        }
        None => None,
    };
    let services = pipeline::Services {
        dead_letters,
        lookups,
        avro,
        notices,
    };
    let probe = admin::Probe {
        redis: Some(sink.prober()),
        dead_letters: services.dead_letters.clone(),
        interval: settings.probe.interval,
        timeout: settings.probe.timeout,
    };
    tokio::spawn(admin::probe(probe, status.clone(), shutdown.clone()));
    tokio::spawn(crate::source::liveness::watch(
        settings.source.clone(),
        status.clone(),
        shutdown.clone(),
    ));
    if let Some(connect) = &settings.connect {
        tokio::spawn(crate::source::connect::watch(
            connect.clone(),
            status.clone(),
            shutdown.clone(),
        ));
    }
    let pipeline = Pipeline::new(settings.clone(), sink, services, status)?;
    let outcome = pipeline.run(shutdown.clone()).await;
    shutdown.cancel();
    match admin_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "admin http failed"),
        Err(e) => tracing::warn!(error = %e, "admin http task panicked"),
        Ok(Ok(())) => {}
    }
    match outcome {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(0)
        }
        Err(fatal) => {
            tracing::error!(error = %fatal, "stopped after a fatal kafka client error");
            Ok(1)
        }
    }
}

/// Redis may come up after the daemon: retry with capped backoff, serving
/// /readyz (not ready, and why) meanwhile.
async fn connect_redis_until_ready(
    settings: &Settings,
    status: &Status,
    shutdown: &CancellationToken,
) -> Option<RedisSink> {
    let mut backoff = crate::backoff::Backoff::new(settings.redis.max_retry_backoff);
    loop {
        let delay = backoff.next_delay();
        match RedisSink::connect(&settings.redis).await {
            Ok(sink) => return Some(sink),
            Err(e) => {
                crate::metrics::redis_error(e.kind_label());
                status.redis_failed(e.to_string());
                tracing::warn!(error = %e, retry_in = ?delay, "redis not reachable at start");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler; stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("SIGINT: stopping");
            }
        }
        shutdown.cancel();
    });
}

async fn check(path: &Path) -> anyhow::Result<i32> {
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
                    redact_url(&settings.redis.url)
                );
                // Warnings, not failures: a cache may accept these risks.
                let facts = sink.server_facts(pipeline::namespace_count(&settings)).await;
                for finding in crate::sink::epoch::assess(&facts) {
                    match finding {
                        crate::sink::epoch::Finding::Ok(text) => println!("ok    redis: {text}"),
                        crate::sink::epoch::Finding::Warn(text) => println!("warn  redis: {text}"),
                    }
                }
            }
            Err(e) => {
                println!("FAIL  redis {}: {e}", redact_url(&settings.redis.url));
                problems += 1;
            }
        },
        Err(e) => {
            println!("FAIL  redis {}: {e}", redact_url(&settings.redis.url));
            problems += 1;
        }
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

async fn dead_letters(action: DeadLetterAction) -> anyhow::Result<i32> {
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
                load_schemas(avro.as_deref(), &record).await;
                let route = pipeline::route_with(
                    &settings.graph,
                    &settings.plan,
                    &record,
                    pipeline::now_us(),
                    true,
                    avro.as_deref(),
                );
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
    use sqlx::Row as _;
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
    let Some(pool) = lookups.postgres_pool() else {
        return crate::source::mysql_check::check_database(settings.graph.entities(), &lookups).await;
    };
    let mut problems = 0;
    for entity in settings.graph.entities() {
        // Config validation refuses a table that is not schema.table.
        let Some((schema, table)) = entity.table.split_once('.') else {
            continue;
        };
        let columns: Vec<String> = match sqlx::query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(pool)
        .await
        {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
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
        let identity: Option<String> = sqlx::query(
            "SELECT c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
        )
        .bind(schema)
        .bind(table)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0));
        let primary_key: Vec<String> = sqlx::query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND i.indisprimary",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(pool)
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
        let needs_old: Vec<&str> = entity
            .keys
            .iter()
            .filter(|t| t.columns().any(|c| !primary_key.iter().any(|k| k == c)))
            .map(|t| t.text())
            .collect();
        match (identity.as_deref(), entity.full_before_image) {
            (Some("f"), true) => println!("ok    table {}: REPLICA IDENTITY FULL, old keys render exactly", entity.table),
            (Some("f"), false) => println!(
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
        for fanout in &entity.fanouts {
            match lookups.prepare(fanout).await {
                Ok(()) => println!("ok    fan-out {:?} prepares", fanout.query),
                Err(e) => {
                    println!("FAIL  fan-out {:?}: {e}", fanout.query);
                    problems += 1;
                }
            }
        }
    }
    problems
}

fn kafka_topics(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let consumer: rdkafka::consumer::BaseConsumer = crate::kafka_client::observer(&settings.source, "check")
        .create()
        .context("creating a kafka client")?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .context("fetching cluster metadata (are the brokers reachable?)")?;
    Ok(metadata.topics().iter().map(|t| t.name().to_owned()).collect())
}

async fn explain(path: &Path, source: &str, topic: Option<&str>) -> anyhow::Result<i32> {
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
    let route = pipeline::route_with(
        &settings.graph,
        &settings.plan,
        &record,
        pipeline::now_us(),
        settings.dead_letters.is_some(),
        avro.as_deref(),
    );
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
