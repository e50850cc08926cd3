#!/usr/bin/env python3
"""Lays out JSON schemas for kubeconform, from files package registries ship.

    schemas.py kube WHEEL VERSION OUT_DIR
        Kubernetes VERSION's strict schemas from the kubernetes-validate wheel
        (kubernetes_validate/kubernetes-json-schema/vVERSION-local-strict),
        written to OUT_DIR/<kind>-<group>-<version>.json, which kubeconform
        finds with -schema-location 'OUT_DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json'.
        The wheel's files name each other by absolute URLs under their "$id"
        (https://kubernetes.io/api/...), which kubeconform would try to fetch:
        the ids are dropped and the references made relative to the files.

    schemas.py crd OUT_DIR CRD.yaml...
        Every served version of each CustomResourceDefinition, written to
        OUT_DIR/<group>/<kind, lowercase>_<version>.json, which kubeconform
        finds with
        -schema-location 'OUT_DIR/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json'.
        The schemas are made strict the way kubeconform's -strict treats
        built-in kinds: an object that lists its properties refuses any other
        property, unless the CRD says it keeps unknown fields.
        `x-kubernetes-int-or-string` becomes an integer-or-string type, which
        is what the API server accepts.
"""

import json
import sys
import zipfile
from pathlib import Path

import yaml

DEFINITIONS_REF = "/api/_definitions.json"


def relative_refs(node):
    """Drops "$id"s and turns /api/_definitions.json references into relative ones."""
    if isinstance(node, list):
        return [relative_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "$id":
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith(DEFINITIONS_REF):
            value = "_definitions.json" + value[len(DEFINITIONS_REF):]
        out[key] = relative_refs(value)
    return out


def kube(wheel, version, out_dir):
    prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not name.startswith(prefix) or not name.endswith(".json"):
                continue
            schema = relative_refs(json.loads(archive.read(name)))
            (out / name[len(prefix):]).write_text(json.dumps(schema) + "\n")
            written += 1
    if written == 0:
        raise SystemExit(f"{wheel}: no schemas for Kubernetes {version}")
    print(f"{written} schemas in {out}")


def strict(node):
    """Returns a copy of an OpenAPI v3 schema node with the rules above applied."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["type"] = ["integer", "string"]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def crd(out, paths):
    out_dir = Path(out)
    written = 0
    for path in paths:
        for document in yaml.safe_load_all(Path(path).read_text()):
            if not document or document.get("kind") != "CustomResourceDefinition":
                continue
            spec = document["spec"]
            group = spec["group"]
            kind = spec["names"]["kind"].lower()
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if schema is None:
                    raise SystemExit(f"{path}: {kind} {version['name']} has no openAPIV3Schema")
                schema = strict(schema)
                schema["$schema"] = "http://json-schema.org/draft-07/schema#"
                target = out_dir / group / f"{kind}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
                written += 1
    if written == 0:
        raise SystemExit("no CustomResourceDefinition found")
    print(f"{written} schemas in {out_dir}")


def main(argv):
    if len(argv) >= 5 and argv[1] == "kube":
        kube(argv[2], argv[3], argv[4])
    elif len(argv) >= 4 and argv[1] == "crd":
        crd(argv[2], argv[3:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
