#!/usr/bin/env python3
"""Static checks of the deployment assets, run by scripts/check-deploy.

    validate.py dashboard deploy/grafana/dashboard.json
    validate.py alerts deploy/prometheus/alerts.yml
    validate.py provisioning deploy/grafana/provisioning deploy/grafana/dashboard.json
    validate.py images Dockerfile < <(docker-compose -f docker-compose.yml config)
    validate.py connector deploy/compose/debezium-postgres.json scripts/stack.d/debezium-postgres.json
    validate.py metrics src/metrics.rs
    validate.py warmup Dockerfile Cargo.toml
    validate.py selftest

Each command prints the problems it finds, one a line, and exits 1 if there
are any. The metric names below are the daemon's contract with the dashboard
and the alerts (src/metrics.rs exports exactly these); a name used in an
expression that is not listed here is an error, so a renamed metric cannot
leave an empty panel or a silent alert behind.
"""

import json
import re
import sys
from pathlib import Path

COUNTERS = {
    "cdc_invalidator_audit_late_total",
    "cdc_invalidator_audit_lost_total",
    "cdc_invalidator_audit_covered_total",
    "cdc_invalidator_redis_data_loss_total",
    "cdc_invalidator_events_total",
    "cdc_invalidator_targets_bumped_total",
    "cdc_invalidator_guard_noops_total",
    "cdc_invalidator_targets_coalesced_total",
    "cdc_invalidator_moot_events_total",
    "cdc_invalidator_escalations_total",
    "cdc_invalidator_dead_letters_total",
    "cdc_invalidator_messages_total",
    "cdc_invalidator_redis_errors_total",
    "cdc_invalidator_redis_reconnects_total",
    "cdc_invalidator_kafka_errors_total",
    "cdc_invalidator_group_leaves_total",
    "cdc_invalidator_audit_checks_total",
    "cdc_invalidator_notices_total",
    "cdc_invalidator_audit_violations_total",
}
GAUGES = {
    "cdc_invalidator_source_idle_seconds",
    "cdc_invalidator_source_idle_topics",
    "cdc_invalidator_connector_up",
    "cdc_invalidator_connector_tasks",
    "cdc_invalidator_consumer_lag_records",
    "cdc_invalidator_stored_offset",
    "cdc_invalidator_in_flight_records",
    "cdc_invalidator_paused_partitions",
    "cdc_invalidator_stalled_partitions",
    "cdc_invalidator_ready",
    "cdc_invalidator_audit_stale_ratio",
    "cdc_invalidator_audit_build_info",
    "cdc_invalidator_build_info",
    "cdc_invalidator_last_progress_timestamp_seconds",
}
HISTOGRAMS = {
    "cdc_invalidator_invalidation_propagation_seconds",
    "cdc_invalidator_apply_latency_seconds",
    "cdc_invalidator_redis_apply_seconds",
    "cdc_invalidator_dead_letter_write_seconds",
    "cdc_invalidator_batch_targets",
    "cdc_invalidator_lookup_seconds",
    "cdc_invalidator_fanout_rows",
}
HISTOGRAM_SERIES = {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
DASHBOARD_METRICS = COUNTERS | GAUGES | HISTOGRAM_SERIES
# Alerts may also use Prometheus's own per-target series.
ALERT_METRICS = DASHBOARD_METRICS | {"up"}
# Series that only make sense under rate()/increase()/irate().
MONOTONIC = COUNTERS | HISTOGRAM_SERIES

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "and", "or", "unless", "atan2", "inf", "nan",
}

NAME = r"[A-Za-z_:][A-Za-z0-9_:]*"


def _strip(expr):
    """PromQL with strings, Grafana variables, label matchers, ranges and
    grouping clauses blanked out, leaving function names and metric names."""
    e = re.sub(r"\$\{[^}]*\}|\$\w+", " ", expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'|`[^`]*`", '""', e)
    e = re.sub(r"\{[^{}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    return e


def metric_names(expr):
    """The metric names an expression selects (not its functions, keywords,
    labels or numbers)."""
    e = _strip(expr)
    names = []
    for m in re.finditer(r"(?<![\w.:])(" + NAME + ")", e):
        name = m.group(1)
        if re.match(r"\s*\(", e[m.end():]):
            continue  # a function or an aggregation
        if name.lower() in PROMQL_KEYWORDS:
            continue
        names.append(name)
    return names


def rated_names(expr):
    """Metric names that appear directly inside rate(), irate() or increase()."""
    return re.findall(r"\b(?:rate|irate|increase)\s*\(\s*(" + NAME + ")", _strip(expr))


def check_expr(where, expr, allowed, problems):
    names = metric_names(expr)
    if not names:
        problems.append(f"{where}: no metric name found in expr {expr!r}")
    for name in names:
        if name not in allowed:
            hint = ""
            if name in HISTOGRAMS:
                hint = " (a histogram: use its _bucket, _sum or _count series)"
            problems.append(f"{where}: unknown metric {name!r}{hint}")
    for name in rated_names(expr):
        if name in allowed and name not in MONOTONIC:
            problems.append(f"{where}: {name!r} is a gauge; rate()/increase() apply to counters")


def load_yaml(path):
    import yaml  # python3-yaml; docker-compose depends on it

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


# ---------------------------------------------------------------- dashboard


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def check_dashboard(path):
    problems = []
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        return [f"{path}: does not parse as JSON: {e}"]

    for field in ("title", "uid"):
        if not isinstance(d.get(field), str) or not d[field].strip():
            problems.append(f"dashboard: missing {field}")
    if not isinstance(d.get("schemaVersion"), int):
        problems.append("dashboard: missing schemaVersion")

    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds_var = variables.get("datasource")
    if not ds_var or ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        problems.append("dashboard: needs a template variable 'datasource' of type datasource (prometheus)")
    expected_ds = {"type": "prometheus", "uid": "${datasource}"}

    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        if v.get("datasource") != expected_ds:
            problems.append(f"variable {name}: datasource must be {expected_ds}")
        q = v.get("definition") or (v.get("query") or {}).get("query", "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q)
        check_expr(f"variable {name}", m.group(1) if m else q, DASHBOARD_METRICS, problems)

    panels = list(all_panels(d.get("panels") or []))
    if not panels:
        problems.append("dashboard: no panels")
    ids = {}
    boxes = []
    for p in panels:
        pid = p.get("id")
        title = p.get("title", "?")
        where = f"panel {pid} {title!r}"
        if not isinstance(pid, int):
            problems.append(f"{where}: id must be an integer")
        elif pid in ids:
            problems.append(f"{where}: id collides with panel {ids[pid]!r}")
        else:
            ids[pid] = title
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{where}: gridPos needs integer x, y, w, h")
        else:
            if g["x"] + g["w"] > 24:
                problems.append(f"{where}: wider than the 24-column grid")
            for other_title, o in boxes:
                if (g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"]
                        and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]):
                    problems.append(f"{where}: overlaps panel {other_title!r}")
            boxes.append((title, g))
        if p.get("type") == "row":
            if p.get("targets"):
                problems.append(f"{where}: a row has no queries")
            continue  # a row only groups panels
        if not title or title == "?":
            problems.append(f"panel {pid}: missing title")
        if p.get("datasource") != expected_ds:
            problems.append(f"{where}: datasource must be {expected_ds}, found {p.get('datasource')}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no targets")
        refs = set()
        for t in targets:
            ref = t.get("refId")
            if not ref or ref in refs:
                problems.append(f"{where}: missing or repeated refId {ref!r}")
            refs.add(ref)
            if "datasource" in t and t["datasource"] != expected_ds:
                problems.append(f"{where} target {ref}: datasource must be {expected_ds}")
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where} target {ref}: missing expr")
                continue
            check_expr(f"{where} target {ref}", expr, DASHBOARD_METRICS, problems)
    return problems


# ---------------------------------------------------------------- alerts


def check_alerts(path):
    problems = []
    doc = load_yaml(path)
    rules = [r for g in (doc or {}).get("groups", []) for r in g.get("rules", [])]
    if not rules:
        return [f"{path}: no rules"]
    for r in rules:
        name = r.get("alert") or r.get("record")
        where = f"rule {name}"
        if "alert" in r:
            if not r.get("for"):
                problems.append(f"{where}: no for: duration")
            if (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                problems.append(f"{where}: severity label must be critical, warning or info")
            ann = r.get("annotations") or {}
            for a in ("summary", "description"):
                if not str(ann.get(a, "")).strip():
                    problems.append(f"{where}: missing {a} annotation")
            if len(str(ann.get("description", ""))) < 80:
                problems.append(f"{where}: description should say what to check (runbook)")
        check_expr(where, str(r.get("expr", "")), ALERT_METRICS, problems)
    return problems


# ---------------------------------------------------------------- provisioning


def check_provisioning(prov_dir, dashboard_path):
    problems = []
    prov = Path(prov_dir)
    sources = []
    for f in sorted((prov / "datasources").glob("*.y*ml")):
        sources += (load_yaml(f) or {}).get("datasources", [])
    prom = [s for s in sources if s.get("type") == "prometheus"]
    if not prom:
        problems.append("provisioning: no prometheus datasource")
    providers = []
    for f in sorted((prov / "dashboards").glob("*.y*ml")):
        providers += (load_yaml(f) or {}).get("providers", [])
    if not any((p.get("options") or {}).get("path") for p in providers):
        problems.append("provisioning: no dashboard provider with options.path")
    with open(dashboard_path, encoding="utf-8") as f:
        d = json.load(f)
    ds_var = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}.get("datasource", {})
    default_uid = (ds_var.get("current") or {}).get("value")
    if prom and default_uid not in {s.get("uid") for s in prom}:
        problems.append(f"provisioning: the dashboard's default datasource {default_uid!r} "
                        f"is not a provisioned uid {[s.get('uid') for s in prom]}")
    return problems


# ---------------------------------------------------------------- images


def _tag_problem(image):
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses latest"
    return None


def check_images(dockerfile, compose_config_text):
    import yaml

    problems = []
    stages = set()
    for line in Path(dockerfile).read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            image = m.group(1)
            if image not in stages and image != "scratch":
                p = _tag_problem(image)
                if p:
                    problems.append(f"Dockerfile: {p}")
            if m.group(2):
                stages.add(m.group(2))
    cfg = yaml.safe_load(compose_config_text) or {}
    services = cfg.get("services") or {}
    if not services:
        problems.append("compose: no services")
    for name, svc in services.items():
        image = svc.get("image")
        if not image:
            problems.append(f"compose service {name}: no image")
        elif "build" not in svc:
            p = _tag_problem(image)
            if p:
                problems.append(f"compose service {name}: {p}")
        for port in svc.get("ports") or []:
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            if host_ip != "127.0.0.1":
                problems.append(f"compose service {name}: port {port} is not published on 127.0.0.1")
    return problems


# ---------------------------------------------------------------- connector


# Keys whose values differ on purpose between the two stacks: hostnames and
# the placeholders scripts/stack fills in (@SLOT@, @CAPTURED_SCHEMA@, ...).
CONNECTOR_LOCAL_KEYS = {
    "database.hostname", "database.port", "database.user", "database.password",
    "database.dbname", "topic.prefix", "publication.name", "slot.name",
    "schema.include.list",
    # The stack's replication follows its broker count (scripts/stack up --brokers).
    "topic.creation.default.replication.factor", "topic.creation.default.min.insync.replicas",
}


def check_connector(compose_json, stack_json):
    problems = []
    with open(compose_json, encoding="utf-8") as f:
        mine = json.load(f)
    with open(stack_json, encoding="utf-8") as f:
        theirs = json.load(f)
    for k in sorted(set(mine) ^ set(theirs)):
        side = compose_json if k in mine else stack_json
        problems.append(f"connector: key {k!r} only in {side}")
    for k in sorted(set(mine) & set(theirs) - CONNECTOR_LOCAL_KEYS):
        if mine[k] != theirs[k]:
            problems.append(f"connector: {k} is {mine[k]!r} here but {theirs[k]!r} in {stack_json}")
    for k in sorted(CONNECTOR_LOCAL_KEYS & set(mine)):
        if "@" in str(mine[k]):
            problems.append(f"connector: {k} still holds a placeholder {mine[k]!r}")
    return problems


# ---------------------------------------------------------------- selftest


def path_dependencies(manifest):
    """Every crate the manifest names by path, and the ones those name, as
    paths relative to the manifest's directory."""
    import tomllib

    root = manifest.parent.resolve()
    found, todo = set(), [manifest.resolve()]
    while todo:
        current = todo.pop()
        data = tomllib.loads(current.read_text())
        for table in ("dependencies", "dev-dependencies", "build-dependencies"):
            for spec in data.get(table, {}).values():
                if isinstance(spec, dict) and "path" in spec:
                    crate = (current.parent / spec["path"]).resolve()
                    relative = crate.relative_to(root).as_posix()
                    if relative not in found:
                        found.add(relative)
                        todo.append(crate / "Cargo.toml")
    return sorted(found)


def check_warmup(dockerfile, manifest):
    """The image's dependency warm-up builds the daemon alone, so it needs
    the manifest and a stub of every crate the daemon names by path: one
    missing makes the warm-up fail and every build compile everything."""
    text = Path(dockerfile).read_text()
    stubs = re.search(r"for stub in ([^;]*);", text)
    listed = stubs.group(1).split() if stubs else []
    problems = []
    if not stubs:
        problems.append(f"{dockerfile}: no `for stub in ...;` loop in the dependency warm-up")
    # The warm-up narrows the workspace with a one-line sed on `members`.
    if not re.search(r"(?m)^members = \[[^\]\n]*\]$", Path(manifest).read_text()):
        problems.append(f"{manifest}: `members = [...]` must stay on one line (the Dockerfile's warm-up rewrites it with sed)")
    for crate in path_dependencies(Path(manifest)):
        if f"COPY {crate}/Cargo.toml {crate}/Cargo.toml" not in text:
            problems.append(f"{dockerfile}: the warm-up does not COPY {crate}/Cargo.toml")
        if stubs and crate not in listed:
            problems.append(f"{dockerfile}: the warm-up's stub loop does not list {crate}")
    return problems


def selftest():
    """The checker must be able to fail: known-bad input gives problems."""
    problems = []
    cases = {
        'sum by (le) (rate(cdc_invalidator_redis_apply_seconds_bucket{job=~"$job"}[$__rate_interval]))':
            ["cdc_invalidator_redis_apply_seconds_bucket"],
        "histogram_quantile(0.99, sum by (job, le) (rate(x_bucket[5m]))) > 0.5": ["x_bucket"],
        "(deriv(a[10m]) > 0) and on (job, instance) (b offset 10m == 1)": ["a", "b"],
        "count by (version) (cdc_invalidator_build_info) * 1e3": ["cdc_invalidator_build_info"],
    }
    for expr, want in cases.items():
        got = metric_names(expr)
        if got != want:
            problems.append(f"selftest: metric_names({expr!r}) = {got}, want {want}")
    bad = []
    check_expr("t", "rate(cdc_invalidator_events_totl[5m])", DASHBOARD_METRICS, bad)
    check_expr("t", "rate(cdc_invalidator_ready[5m])", DASHBOARD_METRICS, bad)
    check_expr("t", "cdc_invalidator_batch_targets", DASHBOARD_METRICS, bad)
    check_expr("t", "up", DASHBOARD_METRICS, bad)
    if len(bad) != 4:
        problems.append(f"selftest: expected 4 problems from bad expressions, got {bad}")
    return problems


def check_metrics_source(path):
    """The lists above must be exactly the names src/metrics.rs declares."""
    declared = set(re.findall(r'pub(?:\(crate\))? const [A-Z_]+: &str = "(cdc_invalidator_[a-z_]+)";', Path(path).read_text()))
    listed = COUNTERS | GAUGES | HISTOGRAMS
    problems = [f"{path}: {n} is exported but unknown to the dashboard and alert checks" for n in sorted(declared - listed)]
    problems += [f"{path}: {n} is checked for but no longer exported" for n in sorted(listed - declared)]
    return problems


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "dashboard":
        problems = check_dashboard(args[0])
    elif cmd == "alerts":
        problems = check_alerts(args[0])
    elif cmd == "provisioning":
        problems = check_provisioning(args[0], args[1])
    elif cmd == "images":
        problems = check_images(args[0], sys.stdin.read())
    elif cmd == "connector":
        problems = check_connector(args[0], args[1])
    elif cmd == "metrics":
        problems = check_metrics_source(args[0])
    elif cmd == "warmup":
        problems = check_warmup(args[0], args[1])
    elif cmd == "selftest":
        problems = selftest()
    else:
        print(f"unknown command {cmd!r}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
