"""The benchmark workloads are seeded: the same spec offers the same load, so committed results can be rerun."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from loraplex.bench.workloads import (
    WorkloadSpec,
    consistency_pairs,
    make_workload,
    parse_rates,
    rate_ladder,
    step_duration,
    zipf_weights,
)

ROOT = Path(__file__).resolve().parents[2]
NAMES = [f"a{i}" for i in range(8)]
SPEC = WorkloadSpec(
    seed=0, vocab=50, prompt_tokens=3, zipf_s=1.1, step_seconds=5, min_requests=0, max_step_seconds=10, max_requests=100
)


def test_same_spec_same_arrivals_and_steps_differ():
    assert make_workload(SPEC, 4.0, 0, NAMES) == make_workload(SPEC, 4.0, 0, NAMES)
    assert make_workload(SPEC, 4.0, 0, NAMES) != make_workload(SPEC, 4.0, 1, NAMES)
    assert make_workload(SPEC, 4.0, 0, NAMES) != make_workload(replace(SPEC, seed=1), 4.0, 0, NAMES)


def test_workload_pinned_draw():
    """A change in how the RNG is consumed would silently change every committed benchmark's load."""
    work = make_workload(SPEC, 2.0, 0, ["a0", "a1", "a2", "a3"])
    assert [(round(w.offset, 6), w.adapter, w.prompt) for w in work[:3]] == [
        (0.930304, "a1", [29, 5, 19]),
        (2.613193, "a2", [22, 33, 25]),
        (3.050986, "a3", [35, 11, 21]),
    ]
    assert consistency_pairs(SPEC, ["a0", "a1"], n=2) == [("a0", [23, 12, 28]), ("a1", [44, 6, 7])]


def test_arrivals_are_poisson_within_the_window():
    work = make_workload(replace(SPEC, step_seconds=200, max_step_seconds=200, max_requests=10_000), 5.0, 0, NAMES)
    offsets = [w.offset for w in work]
    assert offsets == sorted(offsets) and 0 < offsets[0] and offsets[-1] <= 200
    assert 900 < len(work) < 1100  # 5 req/s for 200 s
    assert all(3 <= t < SPEC.vocab for w in work for t in w.prompt) and all(len(w.prompt) == 3 for w in work)


def test_zipf_popularity_is_fixed_for_the_run():
    big = replace(SPEC, step_seconds=400, max_step_seconds=400, max_requests=10_000)
    tops = {Counter(w.adapter for w in make_workload(big, 10.0, step, NAMES)).most_common(1)[0][0] for step in range(3)}
    assert len(tops) == 1  # the same adapter is the hottest at every step
    counts = Counter(w.adapter for w in make_workload(big, 10.0, 0, NAMES))
    share = counts.most_common(1)[0][1] / sum(counts.values())
    assert share == pytest.approx(zipf_weights(len(NAMES), 1.1)[0], abs=0.03)


def test_max_requests_caps_a_step():
    assert len(make_workload(replace(SPEC, max_requests=7), 100.0, 0, NAMES)) == 7


def test_step_duration_bounds():
    assert step_duration(SPEC, 1.0) == 5  # step_seconds
    assert step_duration(replace(SPEC, min_requests=40), 1.0) == 10  # 40 s wanted, capped at max_step_seconds
    assert step_duration(replace(SPEC, min_requests=40), 5.0) == 8  # long enough for 40 arrivals


def test_zipf_weights():
    w = zipf_weights(4, 1.0)
    assert sum(w) == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(2.0) and w[0] / w[3] == pytest.approx(4.0)


def test_rate_ladder_matches_the_committed_run():
    setup = json.loads((ROOT / "docs" / "bench_serving.json").read_text())["setup"]
    assert rate_ladder(1.0, 45.0, 2**0.25) == setup["rates"]
    assert rate_ladder(1.0, 4.0, 2.0) == [1.0, 2.0, 4.0]  # the upper end is inclusive
    assert parse_rates("2, 8,,") == [2.0, 8.0]
