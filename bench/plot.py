"""Plot one cdc-bench run: throughput (medians, with the range of the
repetitions) and latency percentiles at each steady rate.

    python3 bench/plot.py bench/results/<run>.json bench/results/<run>.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def values(reps, *path):
    out = []
    for r in reps:
        v = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            out.append(float(v))
    return out


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return float("nan")
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def main(src, dst):
    with open(src) as f:
        run = json.load(f)
    reps = run["reps"]
    params = run["params"]
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(17, 5.6), gridspec_kw={"width_ratios": [1.5, 0.8, 1.4]})

    # Events/s: the consume limit, the daemon, the naive peer.
    bars = [
        ("raw consume\nJSON (limit)", values(reps, "raw_consume", "events_per_second"), "#999999"),
        ("ours\nstrong", values(reps, "daemon", "events_per_second"), "#1f77b4"),
        ("ours\neventual", values(reps, "daemon_eventual", "events_per_second"), "#6baed6"),
        ("raw consume\nAvro (limit)", values(reps, "raw_consume_avro", "events_per_second"), "#cccccc"),
        ("ours Avro\nstrong", values(reps, "daemon_avro", "events_per_second"), "#2ca02c"),
        ("naive peer\nNode, JSON", values(reps, "node", "events_per_second"), "#d62728"),
    ]
    bars = [b for b in bars if b[1]]
    xs = range(len(bars))
    meds = [median(v) for _, v, _ in bars]
    errs = [[m - min(v) for (_, v, _), m in zip(bars, meds, strict=True)], [max(v) - m for (_, v, _), m in zip(bars, meds, strict=True)]]
    left.bar(xs, meds, yerr=errs, color=[c for _, _, c in bars], capsize=4)
    left.set_xticks(list(xs), [b[0] for b in bars], fontsize=8)
    left.set_yscale("log")
    left.set_ylim(bottom=1000)
    left.set_ylabel("events/s (log scale)")
    left.set_title("Drain throughput, events/s")
    for x, m in zip(xs, meds, strict=True):
        left.annotate(f"{m:,.0f}", (x, m), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=9)

    # Redis bumps/s: the daemon's targets against redis-benchmark's EVALSHA.
    rb = [
        ("redis-benchmark\nbump script,\nbumps/s (limit)", values(reps, "redis_benchmark", "bumps_per_second"), "#999999"),
        ("cdc-invalidator\ntargets", values(reps, "daemon", "targets_per_second"), "#1f77b4"),
    ]
    rb = [b for b in rb if b[1]]
    xs2 = range(len(rb))
    meds2 = [median(v) for _, v, _ in rb]
    errs2 = [[m - min(v) for (_, v, _), m in zip(rb, meds2, strict=True)], [max(v) - m for (_, v, _), m in zip(rb, meds2, strict=True)]]
    mid.bar(xs2, meds2, yerr=errs2, color=[c for _, _, c in rb], capsize=4)
    mid.set_xticks(list(xs2), [b[0] for b in rb])
    mid.set_ylabel("guarded bumps/s")
    mid.set_title("Redis side, bumps/s")
    for x, m in zip(xs2, meds2, strict=True):
        mid.annotate(f"{m:,.0f}", (x, m), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=9)

    # Latency percentiles per rate.
    lat = run["medians"].get("latency", {})
    rates = sorted(lat, key=int)
    labels = ["p50", "p99", "p999"]
    width = 0.13
    for i, rate in enumerate(rates):
        ext = lat[rate]["append_to_ack_ms"]
        hist = lat[rate]["daemon_histogram_ms"]
        for j, q in enumerate(labels):
            x = i + (j - 1) * 2 * width
            e = ext.get(q)
            h = hist.get(q)
            if e is not None:
                right.bar(x - width / 2, e, width, color="#1f77b4", label="external probe: Kafka append -> Redis" if (i, j) == (0, 0) else None)
                right.annotate(f"{q}\n{e:.1f}", (x - width / 2, e), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
            if h is not None:
                right.bar(x + width / 2, h, width, color="#ff7f0e", label="daemon histogram: commit -> Redis (bucketed)" if (i, j) == (0, 0) else None)
    right.axhline(10, color="#d62728", linestyle="--", linewidth=1, label="target: p99 <= 10 ms at 5k/s")
    right.set_xticks(range(len(rates)), [f"{int(r):,} events/s" for r in rates])
    right.set_yscale("log")
    right.set_ylabel("ms (log scale)")
    right.set_title(f"Latency at steady rates ({params['probe_duration_s']} s each): p50, p99, p99.9")
    right.legend(fontsize=8, loc="upper left")

    fig.suptitle(
        f"cdc-bench run {run['run_id']}: {params['events']:,} events, {params['rows']:,} rows, "
        f"{params['keys_per_row']} keys/row, zipf {params['zipf']}, {params['partitions']} partitions; "
        f"medians of {params['reps']} runs (bars: range)"
        + (f"\nwhat-if: daemon [source.librdkafka] {', '.join(params['daemon_librdkafka'])}" if params.get("daemon_librdkafka") else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
