"""Metrics of many processes as one exposition, the board's liveness rules, and request ids, without Ray."""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from loraplex.experts.request import Timing
from loraplex.observability.board import Board
from loraplex.observability.exposition import merge
from loraplex.observability.metrics import ExpertMetrics, IngressMetrics


def promtool_check(text: str) -> None:
    """`promtool check metrics` on an exposition: exit 0 and no lint problems."""
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make tools` installs it (Debian package prometheus)"
    out = subprocess.run([tool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def _expert(adapter: str, tokens: int) -> ExpertMetrics:
    m = ExpertMetrics()
    m.observe_result(adapter, Timing(0.01, 0.2, 0.5, [0.02, 0.03]), 3)
    m.observe_stats(
        {
            "last_batch_size": 3,
            "inflight": 2,
            "pending": 1,
            "tokens": tokens,
            "store_host_misses": 2,
            "store_device_misses": 1,
            "store_load_seconds": 0.4,
            "resident": [adapter],
            "cached": [adapter, "b"],
        }
    )
    return m


def test_two_replicas_and_an_ingress_merge_into_one_valid_exposition():
    ing = IngressMetrics()
    ing.observe(
        {"mode": "auto", "group": "support", "confidence": 0.91, "head": "trained", "weights": {"intent": 1.0}},
        "intent",
        200,
        0.8,
        {"prompt_tokens": 12, "completion_tokens": 4},
    )
    sources = [
        ({"role": "ingress", "replica": "i1"}, ing.render()),
        ({"role": "expert", "replica": "r1", "deployment": "support"}, _expert("intent", 10).render()),
        ({"role": "expert", "replica": "r2", "deployment": "support"}, _expert("sentiment", 7).render()),
    ]
    text = merge(sources)
    promtool_check(text)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    tokens = {s.labels["replica"]: s.value for s in fams["loraplex_generated_tokens"].samples}
    assert tokens == {"r1": 10.0, "r2": 7.0}
    assert text.count("# TYPE loraplex_time_to_first_token_seconds histogram") == 1  # one family, two replicas
    ttft = [s for s in fams["loraplex_time_to_first_token_seconds"].samples if s.name.endswith("_count")]
    assert {(s.labels["replica"], s.labels["adapter"]) for s in ttft} == {("r1", "intent"), ("r2", "sentiment")}
    itl = [s for s in fams["loraplex_inter_token_latency_seconds"].samples if s.name.endswith("_count")]
    assert [s.value for s in itl] == [2.0, 2.0]  # every gap observed
    resident = {
        (s.labels["replica"], s.labels["adapter"], s.labels["tier"]) for s in fams["loraplex_adapter_resident"].samples
    }
    assert ("r1", "intent", "device") in resident and ("r2", "b", "host") in resident
    req = fams["loraplex_requests"].samples[0]
    assert (req.labels["group"], req.labels["adapter"], req.labels["status"], req.value) == (
        "support",
        "intent",
        "200",
        1.0,
    )
    assert "_created" not in text


def test_counters_advance_by_what_changed_and_evicted_adapters_leave():
    m = ExpertMetrics()
    base = {"last_batch_size": 1, "inflight": 0, "tokens": 5, "resident": ["a"], "cached": ["a"]}
    m.observe_stats(base)
    m.observe_stats({**base, "tokens": 9, "resident": [], "cached": ["a"]})
    fams = {f.name: f for f in text_string_to_metric_families(m.render())}
    assert [s.value for s in fams["loraplex_generated_tokens"].samples if s.name.endswith("_total")] == [9.0]
    assert {(s.labels["adapter"], s.labels["tier"]) for s in fams["loraplex_adapter_resident"].samples} == {
        ("a", "host")
    }


def test_board_sums_replicas_and_forgets_silent_ones():
    now = [0.0]
    board = Board(ttl_s=10, clock=lambda: now[0])
    board.push("expert", "support", "r1", "", {"requests": 3, "inflight": 1, "resident": ["a"]})
    board.push("expert", "support", "r2", "", {"requests": 4, "inflight": 0})
    board.push("expert", "extraction", "r3", "", {"requests": 1})
    board.push("ingress", None, "i1", "")
    stats = board.stats()
    assert stats["support"]["total"] == {"requests": 7, "inflight": 1, "replicas": 2}
    assert set(stats["support"]["replicas"]) == {"r1", "r2"} and board.groups() == {"support": 2, "extraction": 1}
    now[0] = 8.0
    board.push("expert", "support", "r1", "", {"requests": 5})
    now[0] = 12.0  # r2, r3 and i1 silent for 12 s: gone
    assert board.groups() == {"support": 1}
    assert board.stats()["support"]["total"] == {"requests": 5, "replicas": 1}
