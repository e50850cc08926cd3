//! The run's summary: medians over the repetitions, their ratios and the
//! table printed at the end.

use std::collections::{BTreeMap, BTreeSet};

use cdc_bench::stats;

use crate::processes::{split_inline, split_malformed};
use crate::results::{
    drain_key, DecodeMedian, DrainResult, ExternalLatencyMedians, HistogramLatencyMedians, LatencyMedians, Medians,
    ProbeResult, Ratios, Repetition, RunReport, ScriptCurveMedian, DRAIN_METRICS, NAMED_DRAINS,
};

/// The prefix of the baseline daemon's keys in the medians and ratios.
const BASELINE: &str = "baseline_";

/// The median of `value` over the items that have it.
fn median_of<T>(items: &[T], value: impl Fn(&T) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = items.iter().filter_map(value).collect();
    stats::median(&values)
}

/// The median of a drain's metric over the repetitions that ran that drain.
fn drain_median(
    reps: &[Repetition],
    drain: impl Fn(&Repetition) -> Option<&DrainResult>,
    metric: impl Fn(&DrainResult) -> f64,
) -> Option<f64> {
    median_of(reps, |r| drain(r).map(&metric))
}

pub fn medians(reps: &[Repetition], probes: &[ProbeResult], rates: &[u64]) -> Medians {
    fn strong(r: &Repetition) -> Option<&DrainResult> {
        r.daemon.as_ref()
    }
    fn eventual(r: &Repetition) -> Option<&DrainResult> {
        r.daemon_eventual.as_ref()
    }
    fn wait1(r: &Repetition) -> Option<&DrainResult> {
        r.daemon_strong_wait1.as_ref()
    }
    fn cluster(r: &Repetition) -> Option<&DrainResult> {
        r.daemon_strong_cluster.as_ref()
    }
    fn avro(r: &Repetition) -> Option<&DrainResult> {
        r.daemon_avro.as_ref()
    }
    let events_per_second = |d: &DrainResult| d.events_per_second;
    let targets_per_second = |d: &DrainResult| d.targets_per_second;
    let redis_commands = |d: &DrainResult| d.redis_commands.total as f64;
    let cpu_per_million = |d: &DrainResult| d.cpu_seconds_per_million;
    let cpu_utilisation = |d: &DrainResult| d.cpu_utilisation;
    let peak_rss = |d: &DrainResult| d.peak_rss_mib;
    let apply_share = |d: &DrainResult| d.redis_apply_share_of_drain;
    let per_batch = |d: &DrainResult| d.mean_targets_per_batch;
    let first = reps.first();
    Medians {
        raw_consume_events_per_second: median_of(reps, |r| r.raw_consume.as_ref()?.events_per_second),
        raw_consume_cpu_seconds_per_million: median_of(reps, |r| r.raw_consume.as_ref()?.cpu_seconds_per_million),
        daemon_events_per_second: drain_median(reps, strong, events_per_second),
        daemon_targets_per_second: drain_median(reps, strong, targets_per_second),
        daemon_redis_commands: drain_median(reps, strong, redis_commands),
        daemon_evalsha: median_of(reps, |r| {
            strong(r)?.redis_commands.by_command.get("evalsha").map(|&n| n as f64)
        }),
        daemon_cpu_seconds_per_million: drain_median(reps, strong, cpu_per_million),
        daemon_cpu_utilisation: drain_median(reps, strong, cpu_utilisation),
        daemon_redis_apply_share_of_drain: drain_median(reps, strong, apply_share),
        daemon_mean_targets_per_batch: drain_median(reps, strong, per_batch),
        daemon_peak_rss_mib: drain_median(reps, strong, peak_rss),
        daemon_eventual_events_per_second: drain_median(reps, eventual, events_per_second),
        daemon_eventual_targets_per_second: drain_median(reps, eventual, targets_per_second),
        daemon_eventual_redis_commands: drain_median(reps, eventual, redis_commands),
        daemon_eventual_cpu_seconds_per_million: drain_median(reps, eventual, cpu_per_million),
        daemon_eventual_cpu_utilisation: drain_median(reps, eventual, cpu_utilisation),
        daemon_eventual_peak_rss_mib: drain_median(reps, eventual, peak_rss),
        daemon_eventual_redis_apply_share_of_drain: drain_median(reps, eventual, apply_share),
        daemon_eventual_mean_targets_per_batch: drain_median(reps, eventual, per_batch),
        daemon_strong_wait1_events_per_second: drain_median(reps, wait1, events_per_second),
        daemon_strong_wait1_targets_per_second: drain_median(reps, wait1, targets_per_second),
        daemon_strong_wait1_redis_commands: drain_median(reps, wait1, redis_commands),
        daemon_strong_wait1_cpu_seconds_per_million: drain_median(reps, wait1, cpu_per_million),
        daemon_strong_wait1_cpu_utilisation: drain_median(reps, wait1, cpu_utilisation),
        daemon_strong_wait1_peak_rss_mib: drain_median(reps, wait1, peak_rss),
        daemon_strong_wait1_redis_apply_share_of_drain: drain_median(reps, wait1, apply_share),
        raw_consume_avro_events_per_second: median_of(reps, |r| r.raw_consume_avro.as_ref()?.events_per_second),
        daemon_avro_events_per_second: drain_median(reps, avro, events_per_second),
        daemon_avro_targets_per_second: drain_median(reps, avro, targets_per_second),
        daemon_avro_redis_commands: drain_median(reps, avro, redis_commands),
        daemon_avro_cpu_seconds_per_million: drain_median(reps, avro, cpu_per_million),
        daemon_avro_cpu_utilisation: drain_median(reps, avro, cpu_utilisation),
        daemon_avro_peak_rss_mib: drain_median(reps, avro, peak_rss),
        daemon_avro_redis_apply_share_of_drain: drain_median(reps, avro, apply_share),
        node_events_per_second: median_of(reps, |r| r.node.as_ref()?.output.events_per_second),
        node_redis_commands: median_of(reps, |r| Some(r.node.as_ref()?.redis_commands.total as f64)),
        node_cpu_seconds_per_million: median_of(reps, |r| r.node.as_ref()?.output.cpu_seconds_per_million),
        node_peak_rss_mib: median_of(reps, |r| r.node.as_ref()?.output.peak_rss_mib),
        redis_benchmark_evalsha_per_second: median_of(reps, |r| Some(r.redis_benchmark.as_ref()?.requests_per_second)),
        daemon_strong_cluster_events_per_second: drain_median(reps, cluster, events_per_second),
        daemon_strong_cluster_targets_per_second: drain_median(reps, cluster, targets_per_second),
        daemon_strong_cluster_redis_commands: drain_median(reps, cluster, redis_commands),
        daemon_strong_cluster_cpu_seconds_per_million: drain_median(reps, cluster, cpu_per_million),
        daemon_strong_cluster_cpu_utilisation: drain_median(reps, cluster, cpu_utilisation),
        daemon_strong_cluster_peak_rss_mib: drain_median(reps, cluster, peak_rss),
        redis_ceiling_bumps_per_second: median_of(reps, |r| Some(r.redis_benchmark.as_ref()?.bumps_per_second)),
        daemon_bumps_per_call: cdc_invalidator::sink::BUMPS_PER_CALL,
        daemon_targets_per_event: drain_median(reps, strong, |d| d.targets_per_event),
        daemon_bumps_per_event: drain_median(reps, strong, |d| d.bumps_per_event),
        daemon_redis_commands_per_event: drain_median(reps, strong, |d| d.redis_commands_per_event),
        // s per million events is µs per event: the same figure, named for it.
        daemon_cpu_us_per_event: drain_median(reps, strong, cpu_per_million),
        raw_consume_cpu_us_per_event: median_of(reps, |r| r.raw_consume.as_ref()?.cpu_seconds_per_million),
        redis_script_cpu_us_per_bump: median_of(reps, |r| r.redis_benchmark.as_ref()?.redis_cpu_us_per_bump),
        redis_bare_bumps_per_second: median_of(reps, |r| Some(r.bare_writes.as_ref()?.bumps_per_second)),
        redis_bare_cpu_us_per_bump: median_of(reps, |r| Some(r.bare_writes.as_ref()?.redis_cpu_us_per_bump)),
        daemon_peak_rss_mib_max: reps
            .iter()
            .filter_map(|r| strong(r).map(peak_rss))
            .fold(0.0f64, f64::max),
        script_curve: first.map(|first| {
            first
                .script_curve
                .keys()
                .map(|&chunk| {
                    let median = ScriptCurveMedian {
                        calls_per_second: median_of(reps, |r| Some(r.script_curve.get(&chunk)?.requests_per_second)),
                        bumps_per_second: median_of(reps, |r| Some(r.script_curve.get(&chunk)?.bumps_per_second)),
                    };
                    (chunk, median)
                })
                .collect()
        }),
        decode: first.and_then(|first| first.decode.as_ref()).map(|ids| {
            ids.keys()
                .map(|id| {
                    let median_ns = median_of(reps, |r| Some(r.decode.as_ref()?.get(id)?.median_ns));
                    (id.clone(), DecodeMedian { median_ns })
                })
                .collect()
        }),
        latency: latency_medians(probes, rates),
        variants: variant_medians(reps),
    }
}

/// Medians of the drains without fields of their own (`daemon_<name>`) and
/// of every baseline drain (`baseline_<key>`), flat: `<key>_<metric>`.
fn variant_medians(reps: &[Repetition]) -> BTreeMap<String, f64> {
    let mut drains: BTreeSet<(&str, &str)> = BTreeSet::new();
    for r in reps {
        drains.extend(r.daemon_other.keys().map(|k| ("", k.as_str())));
        drains.extend(r.baseline.keys().map(|k| (BASELINE, k.as_str())));
    }
    let mut out = BTreeMap::new();
    for (prefix, key) in drains {
        let drain = |r: &Repetition| match prefix {
            BASELINE => r.baseline.get(key).cloned(),
            _ => r.daemon_other.get(key).cloned(),
        };
        for (metric, value) in DRAIN_METRICS {
            if let Some(median) = median_of(reps, |r| value(&drain(r)?)) {
                out.insert(format!("{prefix}{key}_{metric}"), median);
            }
        }
    }
    out
}

/// The median events/s of the drain at `consistency`, of the daemon under
/// test (`prefix` "") or of the baseline.
fn drain_events_per_second(m: &Medians, prefix: &str, consistency: &str) -> Option<f64> {
    if prefix.is_empty() {
        match consistency {
            "strong" => return m.daemon_events_per_second,
            "strong-wait1" => return m.daemon_strong_wait1_events_per_second,
            "strong-cluster" => return m.daemon_strong_cluster_events_per_second,
            "eventual" => return m.daemon_eventual_events_per_second,
            _ => {}
        }
    }
    m.variants
        .get(&format!("{prefix}{}_events_per_second", drain_key(consistency)))
        .copied()
}

/// Per rate that has probes: the medians of its probes.
fn latency_medians(probes: &[ProbeResult], rates: &[u64]) -> BTreeMap<u64, LatencyMedians> {
    let mut by_rate = BTreeMap::new();
    for &rate in rates {
        let at: Vec<&ProbeResult> = probes.iter().filter(|p| p.output.rate == rate).collect();
        if at.is_empty() {
            continue;
        }
        by_rate.insert(
            rate,
            LatencyMedians {
                achieved_rate: median_of(&at, |p| Some(p.output.achieved_rate)),
                append_to_ack_ms: ExternalLatencyMedians {
                    p50: median_of(&at, |p| p.output.append_to_ack_ms.p50),
                    p99: median_of(&at, |p| p.output.append_to_ack_ms.p99),
                    p999: median_of(&at, |p| p.output.append_to_ack_ms.p999),
                    max: median_of(&at, |p| p.output.append_to_ack_ms.max),
                },
                daemon_histogram_ms: HistogramLatencyMedians {
                    p50: median_of(&at, |p| p.output.daemon_histogram.as_ref()?.p50_ms),
                    p99: median_of(&at, |p| p.output.daemon_histogram.as_ref()?.p99_ms),
                    p999: median_of(&at, |p| p.output.daemon_histogram.as_ref()?.p999_ms),
                },
                missing: median_of(&at, |p| Some(p.output.missing as f64)),
                daemon_cpu_utilisation: median_of(&at, |p| Some(p.daemon_cpu_utilisation)),
            },
        );
    }
    by_rate
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Each variant drain of `consistencies` over the drain of its base
/// consistency (events/s medians), for the daemon and the baseline: a
/// malformed drain over the clean one (`daemon_strong_malformed10_over_strong`,
/// `baseline_daemon_strong_malformed10_over_strong`), the drain routed on the
/// consumer task alone over the default pool (`daemon_strong_inline_over_strong`).
fn variant_ratios(m: &Medians, consistencies: &[String]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for consistency in consistencies {
        let base = match split_malformed(consistency) {
            Ok((base, Some(_))) => base,
            _ => match split_inline(consistency) {
                (base, true) => base,
                (_, false) => continue,
            },
        };
        for prefix in ["", BASELINE] {
            let ratio = div(
                drain_events_per_second(m, prefix, consistency),
                drain_events_per_second(m, prefix, base),
            );
            if let Some(ratio) = ratio {
                let name = format!("{prefix}{}_over_{}", drain_key(consistency), base.replace('-', "_"));
                out.insert(name, ratio);
            }
        }
    }
    out
}

pub fn ratios(m: &Medians, consistencies: &[String]) -> Ratios {
    Ratios {
        daemon_over_raw_consume: div(m.daemon_events_per_second, m.raw_consume_events_per_second),
        daemon_over_node: div(m.daemon_events_per_second, m.node_events_per_second),
        daemon_targets_over_redis_ceiling: div(m.daemon_targets_per_second, m.redis_ceiling_bumps_per_second),
        guarded_bump_over_bare: div(m.redis_ceiling_bumps_per_second, m.redis_bare_bumps_per_second),
        guarded_bump_over_bare_by_redis_cpu: div(m.redis_bare_cpu_us_per_bump, m.redis_script_cpu_us_per_bump),
        daemon_strong_over_redis_implied_ceiling: div(
            m.daemon_events_per_second,
            div(m.redis_ceiling_bumps_per_second, m.daemon_bumps_per_event),
        ),
        daemon_strong_wait1_over_strong: div(m.daemon_strong_wait1_events_per_second, m.daemon_events_per_second),
        daemon_strong_cluster_over_strong: div(m.daemon_strong_cluster_events_per_second, m.daemon_events_per_second),
        daemon_eventual_over_raw_consume: div(m.daemon_eventual_events_per_second, m.raw_consume_events_per_second),
        daemon_eventual_over_node: div(m.daemon_eventual_events_per_second, m.node_events_per_second),
        daemon_avro_over_raw_consume_avro: div(m.daemon_avro_events_per_second, m.raw_consume_avro_events_per_second),
        daemon_avro_over_node: div(m.daemon_avro_events_per_second, m.node_events_per_second),
        daemon_cpu_per_event_over_node: div(m.daemon_cpu_seconds_per_million, m.node_cpu_seconds_per_million),
        variants: variant_ratios(m, consistencies),
    }
}

/// One drain's line in the table.
struct DrainRow {
    label: String,
    events_per_second: Option<f64>,
    targets_per_second: Option<f64>,
    redis_commands: Option<f64>,
    cpu_seconds_per_million: Option<f64>,
    cpu_utilisation: Option<f64>,
    peak_rss_mib: Option<f64>,
    redis_apply_share_of_drain: Option<f64>,
}

/// The built-in drains' rows, then the other consistencies' (and, with a
/// baseline, the baseline's drains of every consistency).
fn drain_rows(m: &Medians, consistencies: &[String], baseline: Option<&str>) -> Vec<DrainRow> {
    let mut rows = Vec::from(named_drain_rows(m));
    let variant = |label: String, key: String| {
        let metric = |name: &str| m.variants.get(&format!("{key}_{name}")).copied();
        DrainRow {
            label,
            events_per_second: metric("events_per_second"),
            targets_per_second: metric("targets_per_second"),
            redis_commands: metric("redis_commands"),
            cpu_seconds_per_million: metric("cpu_seconds_per_million"),
            cpu_utilisation: metric("cpu_utilisation"),
            peak_rss_mib: metric("peak_rss_mib"),
            redis_apply_share_of_drain: metric("redis_apply_share_of_drain"),
        }
    };
    for c in consistencies.iter().filter(|c| !NAMED_DRAINS.contains(&c.as_str())) {
        rows.push(variant(format!("cdc-invalidator, {c}"), drain_key(c)));
    }
    if let Some(label) = baseline {
        for c in consistencies {
            rows.push(variant(
                format!("baseline {label}, {c}"),
                format!("{BASELINE}{}", drain_key(c)),
            ));
        }
    }
    rows
}

fn named_drain_rows(m: &Medians) -> [DrainRow; 5] {
    [
        DrainRow {
            label: "cdc-invalidator, strong".to_owned(),
            events_per_second: m.daemon_events_per_second,
            targets_per_second: m.daemon_targets_per_second,
            redis_commands: m.daemon_redis_commands,
            cpu_seconds_per_million: m.daemon_cpu_seconds_per_million,
            cpu_utilisation: m.daemon_cpu_utilisation,
            peak_rss_mib: m.daemon_peak_rss_mib,
            redis_apply_share_of_drain: m.daemon_redis_apply_share_of_drain,
        },
        DrainRow {
            label: "cdc-invalidator, strong, WAIT 1 replica".to_owned(),
            events_per_second: m.daemon_strong_wait1_events_per_second,
            targets_per_second: m.daemon_strong_wait1_targets_per_second,
            redis_commands: m.daemon_strong_wait1_redis_commands,
            cpu_seconds_per_million: m.daemon_strong_wait1_cpu_seconds_per_million,
            cpu_utilisation: m.daemon_strong_wait1_cpu_utilisation,
            peak_rss_mib: m.daemon_strong_wait1_peak_rss_mib,
            redis_apply_share_of_drain: m.daemon_strong_wait1_redis_apply_share_of_drain,
        },
        DrainRow {
            label: "cdc-invalidator, strong, 3-node cluster".to_owned(),
            events_per_second: m.daemon_strong_cluster_events_per_second,
            targets_per_second: m.daemon_strong_cluster_targets_per_second,
            redis_commands: m.daemon_strong_cluster_redis_commands,
            cpu_seconds_per_million: m.daemon_strong_cluster_cpu_seconds_per_million,
            cpu_utilisation: m.daemon_strong_cluster_cpu_utilisation,
            peak_rss_mib: m.daemon_strong_cluster_peak_rss_mib,
            // The medians carry no apply share for the cluster drain.
            redis_apply_share_of_drain: None,
        },
        DrainRow {
            label: "cdc-invalidator, eventual (default)".to_owned(),
            events_per_second: m.daemon_eventual_events_per_second,
            targets_per_second: m.daemon_eventual_targets_per_second,
            redis_commands: m.daemon_eventual_redis_commands,
            cpu_seconds_per_million: m.daemon_eventual_cpu_seconds_per_million,
            cpu_utilisation: m.daemon_eventual_cpu_utilisation,
            peak_rss_mib: m.daemon_eventual_peak_rss_mib,
            redis_apply_share_of_drain: m.daemon_eventual_redis_apply_share_of_drain,
        },
        DrainRow {
            label: "cdc-invalidator, Avro, strong".to_owned(),
            events_per_second: m.daemon_avro_events_per_second,
            targets_per_second: m.daemon_avro_targets_per_second,
            redis_commands: m.daemon_avro_redis_commands,
            cpu_seconds_per_million: m.daemon_avro_cpu_seconds_per_million,
            cpu_utilisation: m.daemon_avro_cpu_utilisation,
            peak_rss_mib: m.daemon_avro_peak_rss_mib,
            redis_apply_share_of_drain: m.daemon_avro_redis_apply_share_of_drain,
        },
    ]
}

fn whole(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |x| format!("{x:.0}"))
}

fn two_places(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |x| format!("{x:.2}"))
}

fn percent(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |x| format!("{:.0}%", x * 100.0))
}

/// JSON's rendering of a value, as the table has always shown these.
fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The guarded bump against the bare writes, the daemon against the Redis
/// ceiling its bumps per event imply, and CPU per event beside raw-consume's.
fn bump_cost_lines(r: &RunReport) -> [String; 3] {
    let m = &r.medians;
    let q = &r.ratios;
    [
        format!(
            "bump script / bare writes, {} keys per call: {} / {} bumps/s = {}; Redis CPU per bump {} / {} µs (bare over script {})",
            m.daemon_bumps_per_call,
            whole(m.redis_ceiling_bumps_per_second),
            whole(m.redis_bare_bumps_per_second),
            two_places(q.guarded_bump_over_bare),
            two_places(m.redis_script_cpu_us_per_bump),
            two_places(m.redis_bare_cpu_us_per_bump),
            two_places(q.guarded_bump_over_bare_by_redis_cpu)
        ),
        format!(
            "strong over the Redis ceiling it implies (script bumps/s / {} bumps per event = {} events/s): {}",
            two_places(m.daemon_bumps_per_event),
            whole(div(m.redis_ceiling_bumps_per_second, m.daemon_bumps_per_event)),
            two_places(q.daemon_strong_over_redis_implied_ceiling)
        ),
        format!(
            "CPU per event: daemon, strong {} µs; raw-consume {} µs",
            two_places(m.daemon_cpu_us_per_event),
            two_places(m.raw_consume_cpu_us_per_event)
        ),
    ]
}

pub fn print_table(r: &RunReport) {
    let m = &r.medians;
    let p = &r.params;
    println!();
    println!(
        "cdc-bench run {}: medians of {} runs; {} events, {} rows, {} keys/row, zipf {}, {} partitions",
        r.run_id,
        p.reps,
        p.events,
        p.rows,
        p.keys_per_row,
        json_text(&p.zipf),
        p.partitions
    );
    if !p.daemon_librdkafka.is_empty() {
        println!(
            "what-if: the daemon ran with [source.librdkafka] {:?}",
            p.daemon_librdkafka
        );
    }
    let row = |name: &str, cells: [String; 7]| {
        println!(
            "{name:<36} {:>10} {:>10} {:>11} {:>10} {:>6} {:>10} {:>9}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        )
    };
    let dash = || "-".to_owned();
    row(
        "drain of the topic",
        [
            "events/s",
            "targets/s",
            "redis cmds",
            "CPU s/Mev",
            "CPU",
            "peak MiB",
            "redis wait",
        ]
        .map(String::from),
    );
    row(
        "raw-consume (the consume limit)",
        [
            whole(m.raw_consume_events_per_second),
            dash(),
            dash(),
            two_places(m.raw_consume_cpu_seconds_per_million),
            dash(),
            dash(),
            dash(),
        ],
    );
    let baseline = r.baseline_daemon.as_ref().map(|b| b.label.as_str());
    for drain in drain_rows(m, &p.consistencies, baseline) {
        if drain.events_per_second.is_none() {
            continue;
        }
        row(
            &drain.label,
            [
                whole(drain.events_per_second),
                whole(drain.targets_per_second),
                whole(drain.redis_commands),
                two_places(drain.cpu_seconds_per_million),
                percent(drain.cpu_utilisation),
                two_places(drain.peak_rss_mib),
                percent(drain.redis_apply_share_of_drain),
            ],
        );
    }
    if m.raw_consume_avro_events_per_second.is_some() {
        row(
            "raw-consume, Avro topic (its limit)",
            [
                whole(m.raw_consume_avro_events_per_second),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
            ],
        );
    }
    row(
        "naive peer (Node, INCR per event)",
        [
            whole(m.node_events_per_second),
            dash(),
            whole(m.node_redis_commands),
            two_places(m.node_cpu_seconds_per_million),
            dash(),
            two_places(m.node_peak_rss_mib),
            dash(),
        ],
    );
    row(
        "redis-benchmark, bump script (limit)",
        [
            dash(),
            whole(m.redis_ceiling_bumps_per_second),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
        ],
    );
    if let Some(curve) = &m.script_curve {
        println!(
            "{:<36} {:>10} {:>10}",
            "bump script, bumps per call", "calls/s", "bumps/s"
        );
        for (chunk, point) in curve {
            println!(
                "{:<36} {:>10} {:>10}",
                chunk,
                whole(point.calls_per_second),
                whole(point.bumps_per_second)
            );
        }
        println!(
            "daemon: {} bumps per call, {} targets per event, {} bumps per event reach Redis (after coalescing), {} Redis commands per event",
            m.daemon_bumps_per_call,
            two_places(m.daemon_targets_per_event),
            two_places(m.daemon_bumps_per_event),
            two_places(m.daemon_redis_commands_per_event)
        );
    }
    for line in bump_cost_lines(r) {
        println!("{line}");
    }
    if let Some(decode) = &m.decode {
        println!(
            "{:<56} {:>10} {:>10}",
            "decode microbenchmark (criterion median)", "ns/record", "records/s"
        );
        for (id, median) in decode {
            println!(
                "{:<56} {:>10} {:>10}",
                id,
                whole(median.median_ns),
                whole(median.median_ns.map(|ns| 1e9 / ns))
            );
        }
    }
    println!(
        "{:<20} {:>8} {:>8} {:>9} {:>8} | {:>8} {:>8} {:>9} | {:>6} {:>7}",
        "latency, strong (ms)",
        "ext p50",
        "ext p99",
        "ext p99.9",
        "ext max",
        "hist p50",
        "hist p99",
        "hist p99.9",
        "CPU",
        "missing"
    );
    for (rate, v) in &m.latency {
        let a = &v.append_to_ack_ms;
        let h = &v.daemon_histogram_ms;
        println!(
            "{:<20} {:>8} {:>8} {:>9} {:>8} | {:>8} {:>8} {:>9} | {:>6} {:>7}",
            format!("{rate} events/s"),
            two_places(a.p50),
            two_places(a.p99),
            two_places(a.p999),
            two_places(a.max),
            two_places(h.p50),
            two_places(h.p99),
            two_places(h.p999),
            percent(v.daemon_cpu_utilisation),
            whole(v.missing)
        );
    }
    println!("  ext: external probe, Kafka log-append time -> Redis keyspace notification; hist: the daemon's propagation histogram (commit time -> ack, bucketed)");
    let q = &r.ratios;
    println!(
        "ratios (strong / eventual): ours/raw-consume {} / {}   ours/naive peer {} / {}   ours bumps/Redis ceiling {}",
        two_places(q.daemon_over_raw_consume),
        two_places(q.daemon_eventual_over_raw_consume),
        two_places(q.daemon_over_node),
        two_places(q.daemon_eventual_over_node),
        two_places(q.daemon_targets_over_redis_ceiling)
    );
    println!(
        "Avro: ours/raw-consume (Avro topic) {}   ours/naive peer (JSON) {}",
        two_places(q.daemon_avro_over_raw_consume_avro),
        two_places(q.daemon_avro_over_node)
    );
    if !q.variants.is_empty() {
        let quotients: Vec<String> = q
            .variants
            .iter()
            .map(|(name, ratio)| format!("{name} {ratio:.2}"))
            .collect();
        println!("variants over their base drain (events/s): {}", quotients.join("   "));
        let rows: Vec<String> = m
            .variants
            .iter()
            .filter_map(|(name, rows)| Some(format!("{} {rows:.0}", name.strip_suffix("_dead_letter_rows")?)))
            .collect();
        println!(
            "dead-letter rows (each equal to the topic's malformed records {}): {}",
            json_text(&r.load_malformed.values().map(|l| l.malformed).collect::<Vec<_>>()),
            rows.join("   ")
        );
    }
    println!(
        "load average before {} after {}",
        json_text(&r.load_average_before),
        json_text(&r.load_average_after)
    );
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::results::{ProbeOutput, RawConsumeResult, RedisBenchmarkResult};

    fn drain(events_per_second: f64, peak_rss_mib: f64) -> DrainResult {
        DrainResult {
            events_per_second,
            targets_per_second: events_per_second * 3.0,
            peak_rss_mib,
            ..DrainResult::default()
        }
    }

    fn repetition(rep: usize, strong: f64, eventual: Option<f64>) -> Repetition {
        let mut r = Repetition {
            rep,
            raw_consume: Some(RawConsumeResult {
                events_per_second: Some(1000.0),
                ..RawConsumeResult::default()
            }),
            redis_benchmark: Some(RedisBenchmarkResult {
                bumps_per_second: 2400.0,
                ..RedisBenchmarkResult::default()
            }),
            ..Repetition::default()
        };
        r.insert_drain("strong", drain(strong, strong / 10.0));
        if let Some(eps) = eventual {
            r.insert_drain("eventual", drain(eps, 1.0));
        }
        r
    }

    /// A probe's output line as `probe` prints it, with the daemon's cost.
    fn probe_result(rate: u64, p99: f64) -> ProbeResult {
        let output: ProbeOutput = serde_json::from_value(json!({
            "rate": rate, "duration_s": 20, "warmup_s": 2, "events": 100,
            "achieved_rate": rate as f64, "delivered": 100, "acknowledged": 100,
            "missing": 0, "missing_including_warmup": 0,
            "append_to_ack_ms": {"p50": 1.0, "p99": p99, "p999": p99, "max": p99, "min": 0.5},
            "send_to_ack_ms": {"p50": 1.0, "p99": p99, "p999": p99, "max": p99},
            "daemon_histogram": {"samples": 100.0, "p50_ms": 1.0, "p99_ms": p99, "p999_ms": null, "buckets": []},
        }))
        .expect("probe output parses");
        ProbeResult {
            output,
            rep: 1,
            daemon_cpu_utilisation: 0.25,
            daemon_peak_rss_mib: 12.0,
        }
    }

    #[test]
    fn medians_skip_the_repetitions_a_drain_is_missing_from() {
        let reps = [
            repetition(1, 100.0, Some(50.0)),
            repetition(2, 300.0, None),
            repetition(3, 200.0, Some(70.0)),
        ];
        let m = medians(&reps, &[], &[]);
        assert_eq!(m.daemon_events_per_second, Some(200.0));
        assert_eq!(m.daemon_eventual_events_per_second, Some(60.0));
        assert_eq!(m.daemon_strong_wait1_events_per_second, None);
        assert_eq!(m.node_events_per_second, None);
        assert_eq!(m.daemon_peak_rss_mib_max, 30.0);
        assert_eq!(m.redis_ceiling_bumps_per_second, Some(2400.0));
        assert_eq!(m.decode, None);
        assert!(m.latency.is_empty());
    }

    #[test]
    fn latency_medians_are_per_rate() {
        let probes = [
            probe_result(5000, 2.0),
            probe_result(5000, 4.0),
            probe_result(20000, 9.0),
        ];
        let m = medians(&[], &probes, &[5000, 20000, 40000]);
        assert_eq!(m.latency.keys().copied().collect::<Vec<_>>(), [5000, 20000]);
        assert_eq!(m.latency[&5000].append_to_ack_ms.p99, Some(3.0));
        assert_eq!(m.latency[&5000].daemon_histogram_ms.p99, Some(3.0));
        assert_eq!(m.latency[&5000].daemon_histogram_ms.p999, None);
        assert_eq!(m.latency[&20000].daemon_cpu_utilisation, Some(0.25));
    }

    #[test]
    fn ratios_need_both_sides_and_a_positive_divisor() {
        let m = Medians {
            daemon_events_per_second: Some(200.0),
            raw_consume_events_per_second: Some(400.0),
            daemon_eventual_events_per_second: Some(100.0),
            node_events_per_second: Some(0.0),
            ..Medians::default()
        };
        let r = ratios(&m, &[]);
        assert_eq!(r.daemon_over_raw_consume, Some(0.5));
        assert_eq!(r.daemon_eventual_over_raw_consume, Some(0.25));
        assert_eq!(r.daemon_over_node, None);
        assert_eq!(r.daemon_strong_wait1_over_strong, None);
    }

    /// The drain routed on the consumer task alone gets its ratio over the
    /// default drain; a consistency that is no variant gets none.
    #[test]
    fn an_inline_drain_is_compared_with_the_default_pool() {
        let reps: Vec<Repetition> = [(100.0, 90.0), (300.0, 150.0), (200.0, 160.0)]
            .into_iter()
            .enumerate()
            .map(|(i, (strong, inline))| {
                let mut r = repetition(i + 1, strong, None);
                r.insert_drain("strong-inline", drain(inline, 1.0));
                r
            })
            .collect();
        let m = medians(&reps, &[], &[]);
        assert_eq!(m.variants["daemon_strong_inline_events_per_second"], 150.0);
        let consistencies = ["strong".to_owned(), "strong-inline".to_owned(), "eventual".to_owned()];
        let q = ratios(&m, &consistencies);
        assert_eq!(q.variants["daemon_strong_inline_over_strong"], 0.75);
        assert_eq!(q.variants.len(), 1);
    }

    /// A malformed drain and a baseline: flat medians per variant, the
    /// ratio of each malformed drain to its clean base, per build.
    #[test]
    fn malformed_and_baseline_drains_get_medians_and_ratios_over_their_clean_drain() {
        let reps: Vec<Repetition> = [
            (100.0, 80.0, 90.0, 30.0),
            (300.0, 240.0, 100.0, 50.0),
            (200.0, 190.0, 95.0, 40.0),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (strong, malformed, baseline_strong, baseline_malformed))| {
            let mut r = repetition(i + 1, strong, None);
            let mut with_dead_letters = drain(malformed, 1.0);
            with_dead_letters.dead_letters = Some(crate::results::DeadLetterCount {
                malformed_records: 7,
                rows: 7,
                counted_by_daemon: 7.0,
            });
            r.insert_drain("strong-malformed10", with_dead_letters);
            r.baseline.insert("daemon".into(), drain(baseline_strong, 1.0));
            r.baseline
                .insert("daemon_strong_malformed10".into(), drain(baseline_malformed, 1.0));
            r
        })
        .collect();
        let m = medians(&reps, &[], &[]);
        assert_eq!(m.variants["daemon_strong_malformed10_events_per_second"], 190.0);
        assert_eq!(m.variants["daemon_strong_malformed10_dead_letter_rows"], 7.0);
        assert_eq!(m.variants["baseline_daemon_events_per_second"], 95.0);
        assert_eq!(m.variants["baseline_daemon_strong_malformed10_events_per_second"], 40.0);
        assert!(!m.variants.contains_key("baseline_daemon_dead_letter_rows"));
        let consistencies = ["strong".to_owned(), "strong-malformed10".to_owned()];
        let q = ratios(&m, &consistencies);
        assert_eq!(q.variants["daemon_strong_malformed10_over_strong"], 0.95);
        assert_eq!(
            q.variants["baseline_daemon_strong_malformed10_over_strong"],
            40.0 / 95.0
        );
        assert_eq!(q.variants.len(), 2);
        // Flat in the file, beside the named medians and ratios.
        let v = serde_json::to_value(&m).expect("serialises");
        assert_eq!(v["daemon_strong_malformed10_events_per_second"], 190.0);
        assert_eq!(v["daemon_events_per_second"], 200.0);
        let v = serde_json::to_value(&q).expect("serialises");
        assert_eq!(v["daemon_strong_malformed10_over_strong"], 0.95);
        // The table has a row per variant and per baseline drain.
        let labels: Vec<String> = drain_rows(&m, &consistencies, Some("978fa7c"))
            .into_iter()
            .filter(|row| row.events_per_second.is_some())
            .map(|row| row.label)
            .collect();
        assert_eq!(
            labels,
            [
                "cdc-invalidator, strong",
                "cdc-invalidator, strong-malformed10",
                "baseline 978fa7c, strong",
                "baseline 978fa7c, strong-malformed10"
            ]
        );
    }

    /// The guarded script against the bare writes, per repetition, then the
    /// strong drain against the ceiling its bumps per event imply.
    #[test]
    fn the_script_over_the_bare_writes_and_the_implied_ceiling() {
        use crate::results::BareWritesResult;
        let reps: Vec<Repetition> = [
            // script bumps/s, its µs per bump, bare bumps/s, its µs per bump, bumps per event
            (2400.0, 3.0, 4000.0, 1.5, 2.0),
            (1800.0, 4.0, 3600.0, 2.0, 1.0),
            (3000.0, 3.5, 5000.0, 1.75, 4.0),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (script, script_cpu, bare, bare_cpu, bumps_per_event))| {
            let mut r = repetition(i + 1, 600.0, None);
            r.redis_benchmark = Some(RedisBenchmarkResult {
                bumps_per_second: script,
                redis_cpu_us_per_bump: Some(script_cpu),
                ..RedisBenchmarkResult::default()
            });
            r.bare_writes = Some(BareWritesResult {
                bumps_per_second: bare,
                redis_cpu_us_per_bump: bare_cpu,
                ..BareWritesResult::default()
            });
            let strong = r.daemon.as_mut().expect("a strong drain");
            strong.bumps_per_event = bumps_per_event;
            strong.targets_per_event = bumps_per_event + 1.0;
            strong.cpu_seconds_per_million = 20.0 + i as f64;
            if let Some(raw) = r.raw_consume.as_mut() {
                raw.cpu_seconds_per_million = Some(2.0 + i as f64);
            }
            r
        })
        .collect();
        let m = medians(&reps, &[], &[]);
        assert_eq!(m.redis_ceiling_bumps_per_second, Some(2400.0));
        assert_eq!(m.redis_script_cpu_us_per_bump, Some(3.5));
        assert_eq!(m.redis_bare_bumps_per_second, Some(4000.0));
        assert_eq!(m.redis_bare_cpu_us_per_bump, Some(1.75));
        assert_eq!(m.daemon_bumps_per_event, Some(2.0));
        assert_eq!(
            m.daemon_targets_per_event,
            Some(3.0),
            "targets are counted before coalescing"
        );
        assert_eq!(m.daemon_cpu_us_per_event, Some(21.0));
        assert_eq!(m.raw_consume_cpu_us_per_event, Some(3.0));
        let q = ratios(&m, &[]);
        assert_eq!(q.guarded_bump_over_bare, Some(0.6));
        assert_eq!(q.guarded_bump_over_bare_by_redis_cpu, Some(0.5));
        // 2400 bumps/s at 2 bumps per event: Redis takes 1200 events/s; the drain did 600.
        assert_eq!(q.daemon_strong_over_redis_implied_ceiling, Some(0.5));
        let report = RunReport {
            run_id: "1".into(),
            git: Default::default(),
            daemon_binary_sha256: None,
            machine: Default::default(),
            params: Default::default(),
            load: Default::default(),
            load_avro: None,
            ratios: q,
            baseline_daemon: None,
            load_malformed: BTreeMap::new(),
            dead_letter_schema: None,
            reps,
            probes: Vec::new(),
            medians: m,
            profile: None,
            load_average_before: None,
            load_average_after: None,
        };
        let [bump, ceiling, cpu] = bump_cost_lines(&report);
        assert!(bump.contains("2400 / 4000 bumps/s = 0.60"), "{bump}");
        assert!(bump.contains("3.50 / 1.75 µs (bare over script 0.50)"), "{bump}");
        assert!(
            ceiling.contains("2.00 bumps per event = 1200 events/s): 0.50"),
            "{ceiling}"
        );
        assert_eq!(cpu, "CPU per event: daemon, strong 21.00 µs; raw-consume 3.00 µs");
        let v: Value = serde_json::to_value(&report).expect("serialises");
        for key in [
            "/medians/redis_bare_bumps_per_second",
            "/medians/daemon_bumps_per_event",
            "/medians/daemon_cpu_us_per_event",
            "/medians/raw_consume_cpu_us_per_event",
            "/ratios/guarded_bump_over_bare",
            "/ratios/daemon_strong_over_redis_implied_ceiling",
            "/reps/0/bare_writes/redis_cpu_us_per_bump",
            "/reps/0/redis_benchmark/redis_cpu_us_per_bump",
            "/reps/0/daemon/bumps_per_event",
        ] {
            assert!(v.pointer(key).and_then(Value::as_f64).is_some(), "{key} in {v:#}");
        }
    }

    /// The keys bench/plot.py and BENCHMARKS.md read, at their nesting.
    #[test]
    fn run_report_serialises_to_the_keys_plot_py_reads() {
        let mut rep = repetition(1, 100.0, Some(50.0));
        rep.insert_drain("eventual-wait1", drain(40.0, 1.0));
        let probes = vec![probe_result(5000, 2.0)];
        let reps = vec![rep];
        let medians = medians(&reps, &probes, &[5000]);
        let report = RunReport {
            run_id: "1700000000".into(),
            git: Default::default(),
            daemon_binary_sha256: None,
            machine: Default::default(),
            params: crate::results::Params {
                events: 1000,
                reps: 1,
                daemon_librdkafka: vec!["fetch.wait.max.ms=5".into()],
                ..Default::default()
            },
            load: Default::default(),
            load_avro: None,
            ratios: ratios(&medians, &[]),
            baseline_daemon: None,
            load_malformed: BTreeMap::new(),
            dead_letter_schema: None,
            reps,
            probes,
            medians,
            profile: None,
            load_average_before: Some([0.5, 0.25, 0.125]),
            load_average_after: None,
        };
        let v: Value = serde_json::to_value(&report).expect("serialises");
        let number = |pointer: &str| {
            v.pointer(pointer)
                .and_then(Value::as_f64)
                .unwrap_or_else(|| panic!("{pointer} is not a number in {v:#}"))
        };
        for key in ["raw_consume", "daemon", "daemon_eventual"] {
            number(&format!("/reps/0/{key}/events_per_second"));
        }
        number("/reps/0/daemon/targets_per_second");
        number("/reps/0/redis_benchmark/bumps_per_second");
        number("/reps/0/daemon_eventual_wait1/events_per_second");
        for drain in [
            "raw_consume_avro",
            "daemon_avro",
            "node",
            "decode",
            "daemon_strong_wait1",
        ] {
            assert!(
                v["reps"][0].get(drain).is_none(),
                "{drain} did not run, yet is in the file"
            );
        }
        for q in ["p50", "p99", "p999"] {
            number(&format!("/medians/latency/5000/append_to_ack_ms/{q}"));
            assert!(v
                .pointer(&format!("/medians/latency/5000/daemon_histogram_ms/{q}"))
                .is_some());
        }
        assert_eq!(number("/medians/daemon_events_per_second"), 100.0);
        assert!(v["medians"]["daemon_strong_cluster_events_per_second"].is_null());
        assert_eq!(number("/ratios/daemon_over_raw_consume"), 0.1);
        assert_eq!(v["run_id"], "1700000000");
        for key in [
            "events",
            "rows",
            "keys_per_row",
            "zipf",
            "partitions",
            "reps",
            "probe_duration_s",
        ] {
            number(&format!("/params/{key}"));
        }
        assert_eq!(v["params"]["daemon_librdkafka"], json!(["fetch.wait.max.ms=5"]));
        assert_eq!(
            v["probes"][0]["send_to_ack_ms"]["p99"], 2.0,
            "the probe's unread fields pass through"
        );
        assert_eq!(v["load_average_before"], json!([0.5, 0.25, 0.125]));
        assert!(v["profile"].is_null() && v["load_avro"].is_null());
    }
}
