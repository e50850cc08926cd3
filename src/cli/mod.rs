//! The command line, one file per command; each returns the process exit code.
//!
//! - [`run`]: consume and invalidate until SIGTERM or SIGINT
//! - [`check`]: validate the config, reach Redis, Kafka, Kafka Connect, the
//!   dead-letter store and the lookup database; warn about Redis settings
//!   that can lose version records
//! - [`explain`]: the targets one Debezium record would bump, and why
//! - [`migrate`]: create or upgrade the dead-letter table
//! - [`dead_letters`]: `dead-letters list | replay | purge`
//! - [`audit`]: the black-box consistency auditor, with its own `/metrics`
//!
//! This file holds the argument types, logging, dispatch and the helpers
//! several commands share (loading the config, the schema sources, the
//! lookup database, the dead-letter store, the signal handler).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Settings};
use crate::dead_letter::DeadLetterStore;
use crate::decode::AvroSchemas;
use crate::event::KafkaRecord;
use crate::lookup::Lookups;
use crate::tasks::Tasks;

mod audit;
mod check;
mod dead_letters;
mod explain;
mod migrate;
mod run;

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
CDC_REDIS_SENTINELS, CDC_REDIS_SENTINEL_MASTER, CDC_REDIS_PASSWORD, CDC_REDIS_SENTINEL_PASSWORD, CDC_ADMIN_LISTEN, CDC_LOOKUP_URL, CDC_DEAD_LETTERS_URL, CDC_SCHEMA_REGISTRY_URL, CDC_SCHEMA_REGISTRY_USER, \
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
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadLetterAction {
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
pub(crate) enum Command {
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
        Command::Run { config, migrate } => run::run(&config, migrate).await,
        Command::Migrate { config } => migrate::migrate(&config).await,
        Command::DeadLetters { action } => dead_letters::dead_letters(action).await,
        Command::Audit {
            config,
            slo,
            sample_every,
            duration,
            recheck_after,
            listen,
        } => {
            let options = crate::audit::AuditOptions {
                slo,
                sample_every,
                duration,
                recheck_after,
            };
            audit::audit(&config, options, listen).await
        }
        Command::Check { config } => check::check(&config).await,
        Command::Explain { config, record, topic } => explain::explain(&config, &record, topic.as_deref()).await,
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

/// The lookup database when `[lookup]` is configured. `run`, `explain` and
/// `dead-letters replay` open it here, the same way: a lazy pool, so nothing
/// connects until a fan-out queries it.
fn lookups(settings: &Settings) -> anyhow::Result<Option<Lookups>> {
    settings
        .lookup
        .as_ref()
        .map(|l| Lookups::connect_lazy(&l.url, l.timeout, l.attempts).context("lookup database URL"))
        .transpose()
}

fn dead_letter_store(settings: &Settings) -> anyhow::Result<DeadLetterStore> {
    let dead_letters = settings.dead_letters.as_ref().context(
        "no dead-letter store configured: add [dead_letters] url = \"postgres://...\" or set CDC_DEAD_LETTERS_URL",
    )?;
    Ok(DeadLetterStore::connect_lazy(dead_letters)?)
}

/// Cancels `shutdown` on SIGTERM or SIGINT; the task ends when `shutdown`
/// is cancelled otherwise (the pipeline stopped on its own), so that
/// waiting for `tasks` does not wait for a signal that never comes.
fn spawn_signal_handler(tasks: &Tasks, shutdown: CancellationToken) {
    tasks.spawn("signal handler", async move {
        let signalled = async {
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
        };
        if shutdown.run_until_cancelled(signalled).await.is_some() {
            shutdown.cancel();
        }
    });
}

/// How long a command waits at its end for its background tasks. Each
/// ends at the shutdown token within one step of its work: a probe or a
/// connector poll is bounded by its own timeout (1 s and 5 s by default),
/// a Kafka notice delivery by the producer's. Five seconds covers those
/// while keeping the stop well within a supervisor's grace period
/// (Kubernetes gives 30 s) after the pipeline's own drain.
const TASKS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `tasks` and waits for them up to [`TASKS_STOP_TIMEOUT`], logging
/// those that did not stop in time.
async fn wait_for_tasks(tasks: &Tasks) {
    match tasks.close_and_wait(TASKS_STOP_TIMEOUT).await {
        Ok(()) => tracing::info!("background tasks stopped"),
        Err(running) => tracing::warn!(
            tasks = ?running, bound = ?TASKS_STOP_TIMEOUT,
            "background tasks did not stop in time; leaving them to the exit"
        ),
    }
}
