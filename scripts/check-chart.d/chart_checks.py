#!/usr/bin/env python3
"""Checks of the Helm chart that span more than one render or file, run by
scripts/check-chart (helm-unittest covers what one render shows).

    chart_checks.py rules RENDERED.yaml ALERTS.yml RULES_OUT.yml
        The PrometheusRule's groups equal ALERTS.yml's; writes them to
        RULES_OUT.yml for `promtool check rules`.
    chart_checks.py checksum HELM CHART
        The pods' config checksum changes with config.toml, only with it, and
        is absent when the config is not the chart's to see.
    chart_checks.py secrets HELM CHART VALUES...
        With each values file: no Secret is rendered, every credential variable
        comes from a secretKeyRef, and no planted credential appears anywhere.
    chart_checks.py shutdown HELPERS.tpl PIPELINE.rs
        The chart's shutdown budget equals the daemon's constants.
    chart_checks.py leave HELM CHART
        StatefulSet pods leave the consumer group at stop
        (CDC_LEAVE_GROUP_ON_STOP=true) unless staticMembership.leaveGroupOnStop
        is false; Deployment pods (dynamic members, which leave anyway) are
        not told.
    chart_checks.py package CHART.tgz ALERTS.yml DASHBOARD.json
        The packaged chart carries the alert rules and dashboard themselves
        and the helm test pod, and leaves out the unit tests.

Exit status 0 when the check holds, 1 with a message when it does not.
"""

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

# Variables that can carry credentials (templates/_helpers.tpl, credentialEnv).
CREDENTIAL_ENV = {
    "CDC_REDIS_URL",
    "CDC_LOOKUP_URL",
    "CDC_DEAD_LETTERS_URL",
    "CDC_SCHEMA_REGISTRY_URL",
    "CDC_SCHEMA_REGISTRY_USER",
    "CDC_SCHEMA_REGISTRY_PASSWORD",
    "CDC_CONNECT_URL",
}


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def documents(text):
    return [d for d in yaml.safe_load_all(text) if d]


def helm_template(helm, chart, *args):
    result = subprocess.run(
        [helm, "template", "check", str(chart), *args],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        fail(f"helm template {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def workloads(docs):
    return [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]


def pod_annotations(docs, name_suffix=""):
    found = {}
    for d in workloads(docs):
        if d["metadata"]["name"].endswith(name_suffix):
            found[d["metadata"]["name"]] = d["spec"]["template"]["metadata"].get("annotations", {})
    return found


def check_rules(rendered, alerts, out):
    rules = [d for d in documents(Path(rendered).read_text()) if d["kind"] == "PrometheusRule"]
    if len(rules) != 1:
        fail(f"expected one PrometheusRule, found {len(rules)}")
    expected = yaml.safe_load(Path(alerts).read_text())
    groups = rules[0]["spec"]["groups"]
    if groups != expected["groups"]:
        for want, got in zip(expected["groups"], groups, strict=False):
            for w, g in zip(want.get("rules", []), got.get("rules", []), strict=False):
                if w != g:
                    fail(f"rule {w.get('alert') or w.get('record')} differs:\nalerts.yml: {w}\nchart:      {g}")
        fail("the PrometheusRule's groups differ from alerts.yml (group names or counts)")
    count = sum(len(g.get("rules", [])) for g in groups)
    Path(out).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    print(f"{len(groups)} group(s), {count} rules, equal to {alerts}")


def check_checksum(helm, chart):
    base = "config.toml=" + "[source]\nbrokers = \"a:9092\"\n"
    other = "config.toml=" + "[source]\nbrokers = \"b:9092\"\n"

    def checksum(*args):
        docs = documents(helm_template(helm, chart, *args))
        sums = {name: a.get("checksum/config") for name, a in pod_annotations(docs).items()}
        if not sums:
            fail("no workload rendered")
        return sums

    first = checksum("--set-string", base)
    again = checksum("--set-string", base, "--set", "replicaCount=1", "--set", "commonLabels.team=x")
    changed = checksum("--set-string", other)
    external = checksum("--set", "config.existingConfigMap=mine")
    for name, value in first.items():
        if not value or not re.fullmatch(r"[0-9a-f]{64}", value):
            fail(f"{name}: no sha256 checksum/config annotation: {value!r}")
    if first != again:
        fail(f"the checksum moved without a config change: {first} vs {again}")
    if any(first[n] == changed[n] for n in first):
        fail(f"the checksum did not change with config.toml: {first} vs {changed}")
    if any(v is not None for v in external.values()):
        fail(f"a checksum was rendered for an existing ConfigMap the chart cannot see: {external}")
    print(f"checksum follows config.toml and only it ({len(first)} workload(s))")


# Planted into refused values, so that an echo of it anywhere is found.
PLANTED = "planted-credential-7f3a"

OPTIONAL_APIS = [
    "--api-versions", "monitoring.coreos.com/v1/PodMonitor",
    "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
    "--api-versions", "keda.sh/v1alpha1/ScaledObject",
]


def check_secrets(helm, chart, values_files):
    for values in values_files:
        # A credential variable in every render (the files' own as well).
        args = ["-f", values, "--set", "secretEnv.CDC_CONNECT_URL.name=cdc-connect,secretEnv.CDC_CONNECT_URL.key=url"]
        docs = documents(helm_template(helm, chart, *args, *OPTIONAL_APIS))
        if any(d["kind"] == "Secret" for d in docs):
            fail(f"{values}: the chart rendered a Secret")
        checked = 0
        for d in docs:
            spec = d.get("spec", {})
            pod = spec["template"]["spec"] if "template" in spec else (spec if d["kind"] == "Pod" else None)
            if not pod:
                continue
            names = set()
            for container in pod.get("containers", []):
                for env in container.get("env", []):
                    names.add(env["name"])
                    if env["name"] in CREDENTIAL_ENV or env["name"].endswith(("PASSWORD", "_URL", "_USER")):
                        if "value" in env:
                            fail(f"{values}: {d['kind']} {d['metadata']['name']}: {env['name']} has an inline value")
                        if "secretKeyRef" not in env.get("valueFrom", {}):
                            fail(f"{values}: {env['name']} does not come from a Secret: {env}")
                        checked += 1
            if d["kind"] in ("StatefulSet", "Deployment") and "CDC_CONNECT_URL" not in names:
                fail(f"{values}: {d['kind']} {d['metadata']['name']} lacks the secretEnv variable")
        print(f"{values}: no Secret, {checked} credential variable(s), all secretKeyRef")
    # Credentials in the values must be refused, not rendered.
    refused = [
        ["--set-string", "config.toml=[redis]\nurl = \"redis://u:" + PLANTED + "@r:6379\"\n"],
        ["--set-string", "config.toml=[avro]\npassword = \"" + PLANTED + "\"\n"],
        ["--set-string", "config.toml=[source.librdkafka]\n\"sasl.password\" = \"" + PLANTED + "\"\n"],
        ["--set", "extraEnv[0].name=CDC_REDIS_URL", "--set-string", "extraEnv[0].value=redis://:" + PLANTED + "@r"],
        ["--set-string", "secretEnv.CDC_REDIS_URL.value=" + PLANTED],
    ]
    for args in refused:
        result = subprocess.run([helm, "template", "check", str(chart), *args], capture_output=True, text=True)
        if result.returncode == 0:
            fail(f"helm template {args} rendered instead of refusing a credential")
        if PLANTED in result.stdout:
            fail(f"helm template {args} printed the credential")
    print(f"{len(refused)} ways of passing a credential inline are refused")


def check_shutdown(helpers, pipeline):
    tpl = Path(helpers).read_text()
    rust = Path(pipeline).read_text()

    def chart(name):
        m = re.search(r'define "cdc-invalidator\.' + name + r'" -\}\}(\d+)\{\{', tpl)
        if not m:
            fail(f"{helpers}: no {name}")
        return int(m.group(1))

    def daemon(name):
        m = re.search(name + r": Duration = Duration::from_secs\((\d+)\)", rust)
        if not m:
            fail(f"{pipeline}: no {name} in whole seconds")
        return int(m.group(1))

    pairs = [("shutdownDrainSeconds", "SHUTDOWN_DRAIN_TIMEOUT"), ("shutdownCommitSeconds", "SHUTDOWN_COMMIT_TIMEOUT")]
    for ours, theirs in pairs:
        if chart(ours) != daemon(theirs):
            fail(f"chart {ours} = {chart(ours)} s but the daemon's {theirs} = {daemon(theirs)} s: update _helpers.tpl")
    print("shutdown budget: " + ", ".join(f"{t} = {daemon(t)} s" for _, t in pairs))


def daemon_env(docs):
    """The daemon container's environment, name -> value, of the one workload."""
    (workload,) = [d for d in workloads(docs) if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "daemon"]
    (container,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "cdc-invalidator"]
    return workload["kind"], {e["name"]: e.get("value") for e in container.get("env", [])}


def check_leave(helm, chart):
    cases = [
        ((), "StatefulSet", "true"),
        (("--set", "staticMembership.leaveGroupOnStop=false"), "StatefulSet", "false"),
        (("--set", "workload=Deployment"), "Deployment", None),
    ]
    for args, kind, expected in cases:
        rendered_kind, env = daemon_env(documents(helm_template(helm, chart, *args)))
        if rendered_kind != kind:
            fail(f"helm template {' '.join(args)}: expected a {kind}, got {rendered_kind}")
        if env.get("CDC_LEAVE_GROUP_ON_STOP") != expected:
            fail(
                f"helm template {' '.join(args)}: CDC_LEAVE_GROUP_ON_STOP is "
                f"{env.get('CDC_LEAVE_GROUP_ON_STOP')!r}, expected {expected!r}"
            )
        if kind == "StatefulSet" and not env.get("CDC_INSTANCE_ID"):
            fail(f"helm template {' '.join(args)}: a StatefulSet pod without CDC_INSTANCE_ID")
    print("StatefulSet pods leave the group at stop unless told not to; Deployment pods are not told")


def check_package(archive, alerts, dashboard):
    with tarfile.open(archive) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
        if "templates/tests/test-readyz.yaml" not in members:
            fail(f"{archive}: the helm test pod (templates/tests/) is missing")
        for inside, outside in (("files/alerts.yml", alerts), ("files/dashboard.json", dashboard)):
            member = members.get(inside)
            if member is None or not member.isfile():
                fail(f"{archive}: {inside} is missing or not a regular file")
            if tar.extractfile(member).read() != Path(outside).read_bytes():
                fail(f"{archive}: {inside} differs from {outside}")
        for excluded in ("tests/", "README.md.gotmpl"):
            if any(name.startswith(excluded) for name in members):
                fail(f"{archive}: {excluded} should be left out (.helmignore)")
    print(f"{archive}: carries alerts.yml and dashboard.json as files")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[1], argv[2:]
    if command == "rules" and len(args) == 3:
        check_rules(*args)
    elif command == "checksum" and len(args) == 2:
        check_checksum(*args)
    elif command == "secrets" and len(args) >= 3:
        check_secrets(args[0], args[1], args[2:])
    elif command == "shutdown" and len(args) == 2:
        check_shutdown(*args)
    elif command == "leave" and len(args) == 2:
        check_leave(*args)
    elif command == "package" and len(args) == 3:
        check_package(*args)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
