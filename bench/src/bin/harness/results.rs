//! The typed shape of `<out>/<run id>.json` and of the JSON the harness's
//! children print. Field names are the file's keys (bench/plot.py and
//! BENCHMARKS.md read them), so renaming a field changes the file format.
//! A measurement that may not have run is an Option, skipped when absent
//! where the file has always left its key out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Commands a measurement issued to Redis.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisCommands {
    pub total: u64,
    pub by_command: BTreeMap<String, u64>,
}

/// What `load` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadResult {
    pub produced_per_second: Option<f64>,
    /// Malformed records among them (`load --malformed-pct`).
    #[serde(default)]
    pub malformed: u64,
    pub mean_record_bytes: Option<f64>,
    pub end_offsets: Vec<i64>,
    /// The printed fields the harness does not read, kept for the results file.
    #[serde(flatten)]
    pub unread: Map<String, Value>,
}

/// What `raw-consume` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawConsumeResult {
    pub events_per_second: Option<f64>,
    pub cpu_seconds_per_million: Option<f64>,
    /// The printed fields the harness does not read, kept for the results file.
    #[serde(flatten)]
    pub unread: Map<String, Value>,
}

/// One drain of a topic by the daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrainResult {
    pub events: i64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub targets_applied: f64,
    pub targets_guard_noop: f64,
    pub targets_coalesced: f64,
    pub targets_per_second: f64,
    pub events_by_outcome: BTreeMap<String, f64>,
    pub escalations: f64,
    pub moot: f64,
    pub redis_commands: RedisCommands,
    pub evalsha_per_event: f64,
    pub redis_commands_per_event: f64,
    /// Targets routed per event, before coalescing (applied, guard no-op
    /// and coalesced).
    pub targets_per_event: f64,
    /// Bumps that reached Redis per event, after coalescing: applied and
    /// guard no-ops, from the daemon's own counters.
    #[serde(default)]
    pub bumps_per_event: f64,
    pub cpu_seconds: f64,
    /// CPU seconds per million events: equally µs per event.
    pub cpu_seconds_per_million: f64,
    pub cpu_utilisation: f64,
    pub peak_rss_mib: f64,
    pub redis_apply_seconds: f64,
    pub redis_apply_share_of_drain: f64,
    pub batches: f64,
    pub mean_targets_per_batch: f64,
    pub startup_to_first_record_s: f64,
    /// A `-malformed<pct>` drain's dead letters, checked equal to the
    /// malformed records of its topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<DeadLetterCount>,
}

/// The dead letters of one malformed drain.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeadLetterCount {
    /// Malformed records `load` wrote into the topic.
    pub malformed_records: u64,
    /// Rows in the dead-letter table after the drain (equal, or the run fails).
    pub rows: u64,
    /// `cdc_invalidator_dead_letters_total` at the end of the drain.
    pub counted_by_daemon: f64,
}

/// What the naive Node peer prints (its own command count is not read: the
/// harness counts Redis' side instead).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeOutput {
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub cpu_seconds_per_million: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

/// One drain by the naive Node peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeResult {
    #[serde(flatten)]
    pub output: NodeOutput,
    pub redis_commands: RedisCommands,
}

/// redis-benchmark of the bump script at one chunk size.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RedisBenchmarkResult {
    pub bumps_per_call: usize,
    pub requests: u64,
    pub clients: u32,
    pub pipeline: u64,
    pub requests_per_second: f64,
    pub bumps_per_second: f64,
    pub keys_created: u64,
    pub redis_commands: RedisCommands,
    /// Redis's main-thread CPU (`INFO cpu`) over the run, per bump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_cpu_us_per_bump: Option<f64>,
}

/// The bare writes of the same bumps (`bare_writes`): `HSET v pv p:S` and
/// `PEXPIRE` per key, pipelined, no guard, no script.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BareWritesResult {
    /// Keys per group, the daemon's bumps per script call.
    pub keys_per_call: usize,
    /// Groups per pipelined round.
    pub pipeline: u64,
    pub bumps: u64,
    pub seconds: f64,
    pub bumps_per_second: f64,
    /// Redis's main-thread CPU (`INFO cpu`) over the run, per bump.
    pub redis_cpu_us_per_bump: f64,
    pub redis_commands: RedisCommands,
}

/// One criterion benchmark of the decode microbenchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodeResult {
    pub median_ns: f64,
    pub per_second: f64,
}

/// The part of criterion's `estimates.json` the harness reads.
#[derive(Debug, Deserialize)]
pub struct CriterionEstimates {
    pub median: CriterionEstimate,
}

#[derive(Debug, Deserialize)]
pub struct CriterionEstimate {
    pub point_estimate: f64,
}

/// Latency percentiles, ms, as `probe` prints them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppendToAck {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    /// The printed fields the harness does not read, kept for the results file.
    #[serde(flatten)]
    pub unread: Map<String, Value>,
}

/// The daemon's propagation histogram over the probe's window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonHistogram {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// The printed fields the harness does not read, kept for the results file.
    #[serde(flatten)]
    pub unread: Map<String, Value>,
}

/// What `probe` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeOutput {
    pub rate: u64,
    pub achieved_rate: f64,
    pub missing: u64,
    pub append_to_ack_ms: AppendToAck,
    /// Absent when the probe was not given the daemon's metrics address.
    pub daemon_histogram: Option<DaemonHistogram>,
    /// The printed fields the harness does not read, kept for the results file.
    #[serde(flatten)]
    pub unread: Map<String, Value>,
}

/// One latency measurement: the probe's output and the daemon's cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeResult {
    #[serde(flatten)]
    pub output: ProbeOutput,
    pub rep: usize,
    pub daemon_cpu_utilisation: f64,
    pub daemon_peak_rss_mib: f64,
}

/// The callgrind profile of one drain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileResult {
    pub events: u64,
    pub drain_under_callgrind: DrainResult,
    pub callgrind_out: PathBuf,
    pub reports: CallgrindReports,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallgrindReports {
    pub exclusive: PathBuf,
    pub inclusive: PathBuf,
}

/// One repetition of the drains and the Redis ceiling. A drain that was
/// not asked for (a consistency, Avro, the Node peer) is absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Repetition {
    pub rep: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<BTreeMap<String, DecodeResult>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_consume: Option<RawConsumeResult>,
    /// Strong consistency: the headline drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DrainResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_strong_wait1: Option<DrainResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_strong_cluster: Option<DrainResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_eventual: Option<DrainResult>,
    /// Drains of any other `--consistencies` value, keyed `daemon_<name>`.
    #[serde(flatten)]
    pub daemon_other: BTreeMap<String, DrainResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_consume_avro: Option<RawConsumeResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_avro: Option<DrainResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeResult>,
    /// The same drains by `--baseline-daemon`, keyed as the daemon's
    /// (`daemon` for strong, `daemon_<name>` for the others).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baseline: BTreeMap<String, DrainResult>,
    /// The bump script at the daemon's own chunk size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_benchmark: Option<RedisBenchmarkResult>,
    /// The bare writes of the same bumps, right after the script's run at
    /// the daemon's chunk size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bare_writes: Option<BareWritesResult>,
    /// By bumps per call.
    #[serde(default)]
    pub script_curve: BTreeMap<usize, RedisBenchmarkResult>,
}

/// The key of a drain at `consistency` in a repetition ("strong" is `daemon`).
pub fn drain_key(consistency: &str) -> String {
    match consistency {
        "strong" => "daemon".to_owned(),
        other => format!("daemon_{}", other.replace('-', "_")),
    }
}

/// The consistencies with a field of their own in [`Repetition`] and [`Medians`].
pub const NAMED_DRAINS: [&str; 4] = ["strong", "strong-wait1", "strong-cluster", "eventual"];

impl Repetition {
    /// Files a drain at `consistency` under its key ("strong" is `daemon`).
    pub fn insert_drain(&mut self, consistency: &str, drain: DrainResult) {
        let slot = match consistency {
            "strong" => &mut self.daemon,
            "strong-wait1" => &mut self.daemon_strong_wait1,
            "strong-cluster" => &mut self.daemon_strong_cluster,
            "eventual" => &mut self.daemon_eventual,
            other => {
                self.daemon_other.insert(drain_key(other), drain);
                return;
            }
        };
        *slot = Some(drain);
    }
}

/// The machine the run was on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: Option<String>,
    pub cpu_mhz: Option<String>,
    pub nproc: Option<usize>,
    pub mem_total_mib: Option<f64>,
    pub kernel: Option<String>,
    pub redis_server: Option<String>,
    pub node: Option<String>,
    pub rustc: Option<String>,
}

/// The tree the run started from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitState {
    pub commit: Option<String>,
    pub dirty_paths: Option<usize>,
}

/// The run's parameters, as given on the command line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Params {
    pub events: u64,
    pub rows: usize,
    pub keys_per_row: usize,
    pub zipf: f64,
    pub partitions: i32,
    pub reps: usize,
    pub rates: Vec<u64>,
    pub probe_duration_s: u64,
    pub redis_benchmark_requests: u64,
    pub redis_benchmark_pipeline: u64,
    pub consistencies: Vec<String>,
    /// NAME=VALUE.
    pub daemon_librdkafka: Vec<String>,
    pub latency_consistency: String,
}

/// The script's throughput at one chunk size, median over repetitions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptCurveMedian {
    pub calls_per_second: Option<f64>,
    pub bumps_per_second: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DecodeMedian {
    pub median_ns: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExternalLatencyMedians {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramLatencyMedians {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
}

/// The probes at one rate, median over repetitions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMedians {
    pub achieved_rate: Option<f64>,
    pub append_to_ack_ms: ExternalLatencyMedians,
    pub daemon_histogram_ms: HistogramLatencyMedians,
    pub missing: Option<f64>,
    pub daemon_cpu_utilisation: Option<f64>,
}

/// Medians over the repetitions; None where no repetition measured it.
/// Flat names (`<drain>_<metric>`): the file's format since the first run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Medians {
    pub raw_consume_events_per_second: Option<f64>,
    pub raw_consume_cpu_seconds_per_million: Option<f64>,
    pub daemon_events_per_second: Option<f64>,
    pub daemon_targets_per_second: Option<f64>,
    pub daemon_redis_commands: Option<f64>,
    pub daemon_evalsha: Option<f64>,
    pub daemon_cpu_seconds_per_million: Option<f64>,
    pub daemon_cpu_utilisation: Option<f64>,
    pub daemon_redis_apply_share_of_drain: Option<f64>,
    pub daemon_mean_targets_per_batch: Option<f64>,
    pub daemon_peak_rss_mib: Option<f64>,
    pub daemon_eventual_events_per_second: Option<f64>,
    pub daemon_eventual_targets_per_second: Option<f64>,
    pub daemon_eventual_redis_commands: Option<f64>,
    pub daemon_eventual_cpu_seconds_per_million: Option<f64>,
    pub daemon_eventual_cpu_utilisation: Option<f64>,
    pub daemon_eventual_peak_rss_mib: Option<f64>,
    pub daemon_eventual_redis_apply_share_of_drain: Option<f64>,
    pub daemon_eventual_mean_targets_per_batch: Option<f64>,
    pub daemon_strong_wait1_events_per_second: Option<f64>,
    pub daemon_strong_wait1_targets_per_second: Option<f64>,
    pub daemon_strong_wait1_redis_commands: Option<f64>,
    pub daemon_strong_wait1_cpu_seconds_per_million: Option<f64>,
    pub daemon_strong_wait1_cpu_utilisation: Option<f64>,
    pub daemon_strong_wait1_peak_rss_mib: Option<f64>,
    pub daemon_strong_wait1_redis_apply_share_of_drain: Option<f64>,
    pub raw_consume_avro_events_per_second: Option<f64>,
    pub daemon_avro_events_per_second: Option<f64>,
    pub daemon_avro_targets_per_second: Option<f64>,
    pub daemon_avro_redis_commands: Option<f64>,
    pub daemon_avro_cpu_seconds_per_million: Option<f64>,
    pub daemon_avro_cpu_utilisation: Option<f64>,
    pub daemon_avro_peak_rss_mib: Option<f64>,
    pub daemon_avro_redis_apply_share_of_drain: Option<f64>,
    pub node_events_per_second: Option<f64>,
    pub node_redis_commands: Option<f64>,
    pub node_cpu_seconds_per_million: Option<f64>,
    pub node_peak_rss_mib: Option<f64>,
    pub redis_benchmark_evalsha_per_second: Option<f64>,
    pub daemon_strong_cluster_events_per_second: Option<f64>,
    pub daemon_strong_cluster_targets_per_second: Option<f64>,
    pub daemon_strong_cluster_redis_commands: Option<f64>,
    pub daemon_strong_cluster_cpu_seconds_per_million: Option<f64>,
    pub daemon_strong_cluster_cpu_utilisation: Option<f64>,
    pub daemon_strong_cluster_peak_rss_mib: Option<f64>,
    pub redis_ceiling_bumps_per_second: Option<f64>,
    pub daemon_bumps_per_call: usize,
    /// Targets routed per event, before coalescing.
    pub daemon_targets_per_event: Option<f64>,
    /// Bumps that reached Redis per event in the strong drain, after
    /// coalescing (applied and guard no-ops, the daemon's counters).
    pub daemon_bumps_per_event: Option<f64>,
    pub daemon_redis_commands_per_event: Option<f64>,
    /// The strong drain's CPU per event, µs (= `daemon_cpu_seconds_per_million`).
    pub daemon_cpu_us_per_event: Option<f64>,
    /// raw-consume's CPU per event, µs (= `raw_consume_cpu_seconds_per_million`).
    pub raw_consume_cpu_us_per_event: Option<f64>,
    /// Redis main-thread CPU per bump of the script at the daemon's chunk size.
    pub redis_script_cpu_us_per_bump: Option<f64>,
    /// The bare writes of the same bumps (no guard, no script), same run.
    pub redis_bare_bumps_per_second: Option<f64>,
    pub redis_bare_cpu_us_per_bump: Option<f64>,
    /// The largest, not the median: the memory a deployment must allow.
    pub daemon_peak_rss_mib_max: f64,
    /// By bumps per call: every chunk size the first repetition has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_curve: Option<BTreeMap<usize, ScriptCurveMedian>>,
    /// By benchmark id: every id the first repetition has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<BTreeMap<String, DecodeMedian>>,
    /// By rate (events/s).
    pub latency: BTreeMap<u64, LatencyMedians>,
    /// The drains without fields of their own (`daemon_strong_malformed10`)
    /// and the baseline's (`baseline_daemon`, `baseline_daemon_strong_malformed10`),
    /// flat: `<drain key>_<metric>` (the metrics of [`DRAIN_METRICS`]).
    #[serde(flatten)]
    pub variants: BTreeMap<String, f64>,
}

/// The metrics published per variant drain, by the suffix of their key.
pub const DRAIN_METRICS: [(&str, DrainMetric); 9] = [
    ("events_per_second", |d| Some(d.events_per_second)),
    ("targets_per_second", |d| Some(d.targets_per_second)),
    ("redis_commands", |d| Some(d.redis_commands.total as f64)),
    ("cpu_seconds_per_million", |d| Some(d.cpu_seconds_per_million)),
    ("cpu_utilisation", |d| Some(d.cpu_utilisation)),
    ("peak_rss_mib", |d| Some(d.peak_rss_mib)),
    ("redis_apply_share_of_drain", |d| Some(d.redis_apply_share_of_drain)),
    ("mean_targets_per_batch", |d| Some(d.mean_targets_per_batch)),
    ("dead_letter_rows", |d| d.dead_letters.as_ref().map(|c| c.rows as f64)),
];

pub type DrainMetric = fn(&DrainResult) -> Option<f64>;

/// Quotients of medians; None when either side is missing or the divisor is 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    pub daemon_over_raw_consume: Option<f64>,
    pub daemon_over_node: Option<f64>,
    /// The share of the Redis ceiling the daemon used: its bumps per second
    /// over redis-benchmark's for the same script at the same chunk size
    /// (equivalently events/s over ceiling / targets per event).
    pub daemon_targets_over_redis_ceiling: Option<f64>,
    /// The guarded script's bumps/s over the bare writes' (same run, same
    /// keys per call and pipeline).
    pub guarded_bump_over_bare: Option<f64>,
    /// The same by Redis's CPU per bump (bare over script): what the
    /// throughput ratio would be if Redis had a core to itself.
    pub guarded_bump_over_bare_by_redis_cpu: Option<f64>,
    /// Strong events/s over what Redis could take of them: the script's
    /// bumps/s divided by the drain's bumps per event.
    pub daemon_strong_over_redis_implied_ceiling: Option<f64>,
    pub daemon_strong_wait1_over_strong: Option<f64>,
    pub daemon_strong_cluster_over_strong: Option<f64>,
    pub daemon_eventual_over_raw_consume: Option<f64>,
    pub daemon_eventual_over_node: Option<f64>,
    pub daemon_avro_over_raw_consume_avro: Option<f64>,
    pub daemon_avro_over_node: Option<f64>,
    pub daemon_cpu_per_event_over_node: Option<f64>,
    /// Each malformed drain over the clean drain of its base consistency,
    /// events/s: `daemon_strong_malformed10_over_strong`, and the same for
    /// the baseline (`baseline_daemon_strong_malformed10_over_strong`).
    #[serde(flatten)]
    pub variants: BTreeMap<String, f64>,
}

/// The daemon build the run compared with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BaselineDaemon {
    /// What it was built from, as given (`--baseline-label`, e.g. a commit).
    pub label: String,
    pub sha256: Option<String>,
}

/// The whole of `<out>/<run id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub git: GitState,
    pub daemon_binary_sha256: Option<String>,
    pub machine: Machine,
    pub params: Params,
    pub load: LoadResult,
    pub load_avro: Option<LoadResult>,
    pub reps: Vec<Repetition>,
    pub probes: Vec<ProbeResult>,
    pub medians: Medians,
    pub ratios: Ratios,
    pub profile: Option<ProfileResult>,
    /// The build the drains were compared with (`--baseline-daemon`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_daemon: Option<BaselineDaemon>,
    /// Records per malformed topic, by percent malformed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub load_malformed: BTreeMap<u32, LoadResult>,
    /// The dead-letter schema of the malformed drains (dropped at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_schema: Option<String>,
    pub load_average_before: Option<[f64; 3]>,
    pub load_average_after: Option<[f64; 3]>,
}
