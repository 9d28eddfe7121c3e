"""Observability over real HTTP on the demo app: /metrics (promtool-valid, every dashboard query's metric in
it), /v1/stats summed over replicas, /health readiness, request ids and the structured access line."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loraplex.demo.data import make_examples
from tests.unit.test_observability import promtool_check

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _traffic(server: str) -> None:
    e = make_examples("intent", 1, seed=9, split="heldout")[0]
    x = make_examples("entities", 1, seed=9, split="heldout")[0]
    for body in (
        {"model": "intent", "prompt": e.prompt, "max_tokens": 6, "temperature": 0},
        {"model": "auto", "prompt": x.prompt, "max_tokens": 6, "temperature": 0},
        {"model": "nope", "prompt": "x"},
    ):
        httpx.post(f"{server}/v1/completions", json=body, timeout=60)
    chat = {"model": "intent", "messages": [{"role": "user", "content": e.prompt}], "stream": True, "max_tokens": 6}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=chat, timeout=60) as r:
        list(r.iter_lines())


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _scrape_until(server: str, ready, timeout_s: float = 20.0) -> str:
    deadline = time.time() + timeout_s
    while True:
        r = httpx.get(f"{server}/metrics", timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        if ready(_families(r.text)) or time.time() > deadline:
            return r.text
        time.sleep(0.5)


def _samples(fams: dict, name: str) -> list:
    return [s for f in fams.values() for s in f.samples if s.name == name]


def test_metrics_scrape_is_valid_and_covers_the_dashboard(server):
    _traffic(server)
    text = _scrape_until(
        server,
        lambda f: len({s.labels["deployment"] for s in _samples(f, "loraplex_time_to_first_token_seconds_count")}) >= 2,
    )
    promtool_check(text)
    fams = _families(text)
    ok = [s for s in _samples(fams, "loraplex_requests_total") if s.labels["status"] == "200"]
    assert any(s.labels["adapter"] == "intent" and s.labels["group"] == "support" for s in ok)
    assert any(s.labels["status"] == "404" for s in _samples(fams, "loraplex_requests_total"))
    ttft = _samples(fams, "loraplex_time_to_first_token_seconds_count")
    assert {s.labels["deployment"] for s in ttft} >= {"support", "extraction"}
    assert all(s.labels["role"] == "expert" and s.labels["replica"] for s in ttft)
    assert sum(s.value for s in _samples(fams, "loraplex_routing_confidence_count")) >= 1
    assert sum(s.value for s in _samples(fams, "loraplex_inter_token_latency_seconds_count")) >= 4
    assert sum(s.value for s in _samples(fams, "loraplex_completion_tokens_total")) >= 6
    devices = {(s.labels["adapter"], s.labels["tier"]) for s in _samples(fams, "loraplex_adapter_resident")}
    assert ("intent", "device") in devices
    # every metric a dashboard panel queries is in the scrape (a panel on a missing metric is a dead panel)
    dashboard = json.loads((ROOT / "config" / "grafana" / "loraplex.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(loraplex_[a-z_]+)", e)}
    exposed = set(fams) | {s.name for f in fams.values() for s in f.samples}
    missing = sorted(m for m in used if m not in exposed and re.sub(r"_(total|bucket|sum|count)$", "", m) not in fams)
    assert not missing, f"dashboard queries metrics the scrape lacks: {missing}"


def test_stats_sum_every_replica_and_health_names_groups(server):
    health = httpx.get(f"{server}/health", timeout=30)
    assert health.status_code == 200
    assert set(health.json()["groups"]) == {"support", "extraction"} and all(health.json()["groups"].values())
    stats = httpx.get(f"{server}/v1/stats", timeout=30).json()
    for group in ("support", "extraction"):
        g = stats[group]
        assert g["total"]["replicas"] == len(g["replicas"]) >= 1
        assert g["total"]["requests"] == sum(r["requests"] for r in g["replicas"].values())


def test_request_id_is_echoed_used_as_response_id_and_logged(server):
    rid = f"obs-{int(time.time() * 1000)}"
    e = make_examples("sentiment", 1, seed=4, split="heldout")[0]
    body = {"model": "sentiment", "prompt": e.prompt, "max_tokens": 4, "temperature": 0, "user": "alice"}
    r = httpx.post(f"{server}/v1/completions", json=body, headers={"x-request-id": rid}, timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == rid and r.json()["id"] == f"cmpl-{rid}"
    own = httpx.post(f"{server}/v1/completions", json={**body, "request_id": "mine-1"}, timeout=60)
    assert own.json()["id"] == "cmpl-mine-1"  # vLLM's body field names the request when sent
    logs = Path("/tmp/ray/session_latest/logs/serve")
    deadline = time.time() + 20
    line = None
    while line is None and time.time() < deadline:
        for f in logs.glob("replica_*.log"):
            for text in f.read_text(errors="replace").splitlines():
                if rid in text and '"event": "access"' in text:
                    line = text
        time.sleep(0.5)
    assert line is not None, f"no access line for {rid} under {logs}"
    record = json.loads(line[line.index("{") :])
    assert record["request_id"] == rid and record["status"] == 200 and record["group"] == "support"
    assert record["adapter"] == "sentiment" and record["completion_tokens"] >= 1 and record["user"] == "alice"
    assert record["ttft_ms"] is not None and record["latency_ms"] >= record["ttft_ms"]
