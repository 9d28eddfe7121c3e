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
