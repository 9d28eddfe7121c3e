"""The `loraplex` console script against the running demo app (installed entry point, real HTTP)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
LORAPLEX = str(Path(sys.executable).parent / "loraplex")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LORAPLEX, *args], capture_output=True, text=True, timeout=120)


def test_adapters_list_add_remove_and_route(server, roots):
    from tests.integration.conftest import DEMO

    managed, imports = roots
    listed = run("adapters", "list", "--url", server)
    assert listed.returncode == 0, listed.stderr
    assert {"intent", "entities"} <= {m["id"] for m in json.loads(listed.stdout)["data"]}
    shutil.copytree(DEMO / "adapters" / "entities", imports / "cli_entities")
    added = run(
        "adapters", "add", "cli/ents", str(imports / "cli_entities"), "--example", "pull the ids out", "--url", server
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["routing_examples"] == 1
    again = run("adapters", "add", "cli/ents", str(imports / "cli_entities"), "--url", server)
    assert again.returncode == 1 and "already exists" in again.stderr
    route = run("route", "what does this customer need? my parcel never showed up", "--url", server)
    assert route.returncode == 0 and json.loads(route.stdout)["routing"]["mode"].startswith("auto")
    removed = run("adapters", "remove", "cli/ents", "--url", server)
    assert removed.returncode == 0, removed.stderr
    assert "cli/ents" not in {m["id"] for m in json.loads(run("adapters", "list", "--url", server).stdout)["data"]}
    gone = run("route", "x", "--url", "http://127.0.0.1:9")
    assert gone.returncode == 2 and "cannot reach" in gone.stderr
