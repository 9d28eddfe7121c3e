"""`loraplex serve --check`: every problem of a Serve YAML's loraplex apps at once, before anything starts."""

from __future__ import annotations

from pathlib import Path

import yaml

from loraplex.cli.main import check_config, main

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_pass_and_a_broken_one_lists_each_problem(tmp_path, capsys):
    for name in ("serve.yaml", "serve.vllm.yaml", "serve.gpu.yaml"):
        assert check_config(ROOT / "config" / name) == [], name
    doc = yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())
    args = doc["applications"][0]["args"]
    args["limits"]["max_tokens_limit"] = 0
    args["bogus"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    problems = check_config(bad)
    assert any("limits.max_tokens_limit" in p for p in problems) and any("bogus" in p for p in problems)
    assert main(["serve", "--check", str(bad)]) == 1
    assert "invalid config" in capsys.readouterr().err
    assert main(["serve", "--check", str(ROOT / "config" / "serve.yaml")]) == 0
    assert check_config(tmp_path / "missing.yaml") == [f"{tmp_path / 'missing.yaml'}: no such file"]


CRD = {
    "spec": {
        "versions": [
            {
                "name": "v1",
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "replicas": {"type": "integer"},
                                    "memory": {"x-kubernetes-int-or-string": True},
                                    "mode": {"type": "string", "enum": ["disabled", "token"]},
                                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                    "items": {"type": "array", "items": {"type": "object", "properties": {"a": {}}}},
                                },
                            },
                        },
                    }
                },
            }
        ]
    }
}


def test_the_crd_check_reports_schema_errors_and_pruned_fields():
    from loraplex.cli.rayservice_check import check

    good = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "x"},
        "spec": {"replicas": 2, "memory": "56Gi", "mode": "token", "free": {"any": 1}, "items": [{"a": 1}]},
    }
    assert check(good, CRD) == []
    bad = {**good, "spec": {**good["spec"], "replicas": "two", "mode": "tokens", "typo": 1, "items": [{"b": 2}]}}
    problems = check(bad, CRD)
    assert any("spec.replicas" in p and "not of type 'integer'" in p for p in problems)
    assert any("spec.mode" in p and "is not one of" in p for p in problems)
    assert ".spec.typo: not in the CRD's schema (would be pruned)" in problems
    assert ".spec.items[0].b: not in the CRD's schema (would be pruned)" in problems
