"""Validate a RayService manifest against KubeRay's RayService CRD: the OpenAPI schema's errors, and the
fields the API server would silently prune (unknown to the schema). The CRD file is KubeRay's, not ours:
download the one of the KubeRay release you run (it is not vendored here), e.g. for 1.7.0:

    curl -LO https://raw.githubusercontent.com/ray-project/kuberay/v1.7.0/ray-operator/config/crd/bases/ray.io_rayservices.yaml
    python scripts/check_rayservice.py --crd ray.io_rayservices.yaml config/cluster/rayservice.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _json_schema(node):
    """Kubernetes' `x-kubernetes-int-or-string` as plain JSON Schema (the rest is JSON Schema already)."""
    if isinstance(node, dict):
        out = {k: _json_schema(v) for k, v in node.items()}
        if out.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return out
    if isinstance(node, list):
        return [_json_schema(v) for v in node]
    return node


def pruned_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Paths in `obj` that a structural schema does not declare (the API server drops them without an error)."""
    out: list[str] = []
    if isinstance(obj, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema["properties"]
        for k, v in obj.items():
            if path == "" and k in ("apiVersion", "kind", "metadata"):
                continue
            if k not in props:
                out.append(f"{path}.{k}")
            else:
                out += pruned_fields(v, props[k], f"{path}.{k}")
    elif isinstance(obj, list) and "items" in schema:
        for i, v in enumerate(obj):
            out += pruned_fields(v, schema["items"], f"{path}[{i}]")
    return out


def check(manifest: dict, crd: dict, version: str = "v1") -> list[str]:
    import jsonschema

    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = ver["schema"]["openAPIV3Schema"]
    errors = jsonschema.Draft7Validator(_json_schema(schema)).iter_errors(manifest)
    problems = [f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}" for e in errors]
    problems += [f"{p}: not in the CRD's schema (would be pruned)" for p in pruned_fields(manifest, schema)]
    return sorted(problems)


def main(argv: list[str] | None = None) -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", type=Path, nargs="?", default=Path("config/cluster/rayservice.yaml"))
    p.add_argument("--crd", type=Path, required=True, help="KubeRay's ray.io_rayservices.yaml")
    a = p.parse_args(argv)
    crd = yaml.safe_load(a.crd.read_text())
    services = [d for d in yaml.safe_load_all(a.manifest.read_text()) if d and d.get("kind") == "RayService"]
    if not services:
        print(f"{a.manifest}: no RayService", file=sys.stderr)
        return 1
    problems = [f"{d['metadata']['name']}: {p}" for d in services for p in check(d, crd)]
    print("\n".join(problems) if problems else f"{a.manifest}: valid against {a.crd} (no errors, nothing pruned)")
    return 1 if problems else 0
