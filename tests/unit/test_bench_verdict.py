"""The serving benchmark's verdict: which rates are sustainable and what the summary reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplex.bench.verdict import Criteria, summarize

ROOT = Path(__file__).resolve().parents[2]


def step(system, rate, p99, *, p50=None, achieved=None, errors=0.0, completed=10, actual=None, tokens=None):
    achieved = rate if achieved is None else achieved
    return {
        "system": system,
        "offered_rps": rate,
        "offered_actual_rps": actual,
        "completed": completed,
        "error_rate": errors,
        "achieved_rps": achieved,
        "tokens_per_s": achieved * 16 if tokens is None else tokens,
        "p50_ms": p99 / 2 if p50 is None and p99 is not None else p50,
        "p99_ms": p99,
    }


C = Criteria(slo_ms=1000.0, max_error_rate=0.01, min_achieved=0.9)


def test_passes_each_criterion():
    assert C.passes(step("x", 4, 1000))  # the SLO bound is inclusive
    assert not C.passes(step("x", 4, 1001))
    assert not C.passes(step("x", 4, 500, errors=0.01))  # errors must stay below the bound
    assert not C.passes(step("x", 4, 500, achieved=3.5))
    assert C.passes(step("x", 4, 500, achieved=3.5, actual=3.8))  # judged against the rate the draw actually offered
    assert not C.passes(step("x", 4, None, completed=0))


def synthetic():
    steps = []
    for rate, bl_p99, lp_p99 in [(1, 300, 200), (2, 800, 250), (4, 3000, 400), (8, 5000, 900), (16, None, 4000)]:
        if bl_p99 is not None:
            steps.append(step("baseline", rate, bl_p99))
        steps.append(step("loraplex", rate, lp_p99, achieved=rate * 0.95 if rate < 16 else 9.0))
    for s in steps:
        s["sustainable"] = C.passes(s)
    return steps


def test_summary_on_a_synthetic_ladder():
    out = summarize(synthetic(), C)
    bl, lp = out["baseline"], out["loraplex"]
    assert out["slo_p99_ms"] == 1000.0 and out["criteria"] == "p99 <= 1000 ms, errors < 1%, achieved >= 90% of offered"
    assert bl["sustainable_rps"] == 2 and bl["highest_rate_offered"] == 8 and not bl["lower_bound_only"]
    assert lp["sustainable_rps"] == 8 and lp["sustainable_achieved_rps"] == pytest.approx(7.6)
    assert lp["peak_achieved_rps"] == pytest.approx(9.0)
    assert (
        lp["sustainable_ratio"] == 4.0
        and lp["target_3x_met"]
        and out["sustainable_ratio"] == 4.0
        and out["target_3x_met"]
    )
    m = lp["at_matched_rate"]  # both systems at the baseline's sustainable rate (2 req/s)
    assert (m["offered_rps"], m["p99_ms"], m["baseline_p99_ms"], m["p99_ratio_baseline_over_this"]) == (
        2,
        250,
        800,
        3.2,
    )


def test_summary_never_failing_is_a_lower_bound_and_nothing_sustainable_is_zero():
    steps = [step("baseline", 1, 5000), step("loraplex", 1, 100), step("loraplex", 2, 100)]
    for s in steps:
        s["sustainable"] = C.passes(s)
    out = summarize(steps, C)
    assert out["loraplex"]["lower_bound_only"] and out["loraplex"]["sustainable_rps"] == 2
    assert out["baseline"]["sustainable_rps"] == 0.0 and out["baseline"]["p99_ms_at_sustainable"] is None
    assert out["loraplex"]["sustainable_ratio"] is None and not out["target_3x_met"]  # no ratio to a zero baseline
    assert "at_matched_rate" not in out["loraplex"]


@pytest.mark.parametrize("name", ["bench_serving.json", "bench_serving_seed1.json"])
def test_committed_runs_reproduce_their_summary(name):
    report = json.loads((ROOT / "docs" / name).read_text())
    criteria = Criteria(report["summary"]["slo_p99_ms"])  # the runs used the default error and achieved bounds
    assert all(criteria.passes(s) == s["sustainable"] for s in report["steps"])
    assert summarize(report["steps"], criteria) == report["summary"]


def test_native_vs_vllm_server_ratios_and_targets():
    from loraplex.bench.verdict import native_vs_vllm

    def tp(system, rate, p99, tpot):
        st = step(system, rate, p99)
        return {**st, "tpot_p50_ms": tpot, "ttft_p50_ms": 10, "sustainable": C.passes(st)}

    steps = [tp("vllm-server", 1, 500, 30), tp("vllm-server", 4, 2000, 45)]
    steps += [tp("loraplex", 1, 300, 20), tp("loraplex", 4, 900, 50)]
    closed = [
        {
            "system": "vllm-server",
            "shape": "base",
            "concurrency": 32,
            "achieved_rps": 19.0,
            "tpot_p50_ms": 40,
            "p99_ms": 2,
        },
        {
            "system": "loraplex",
            "shape": "base",
            "concurrency": 32,
            "achieved_rps": 20.9,
            "tpot_p50_ms": 30,
            "p99_ms": 2,
        },
        {
            "system": "vllm-server",
            "shape": "distinct",
            "concurrency": 32,
            "achieved_rps": 6.0,
            "tpot_p50_ms": 1,
            "p99_ms": 1,
        },
        {
            "system": "loraplex",
            "shape": "distinct",
            "concurrency": 32,
            "achieved_rps": 11.0,
            "tpot_p50_ms": 1,
            "p99_ms": 1,
        },
    ]
    summary = summarize(steps, C, ("vllm-server", "loraplex"))
    out = native_vs_vllm(summary, steps, closed)
    assert out["sustainable_ratio"] == 4.0 and out["sustainable_target_met"]  # 4 req/s against 1 (2000 ms > SLO)
    assert out["tpot_p50"]["4"] == {"loraplex_ms": 50, "vllm_server_ms": 45, "ratio": 1.111}
    assert not out["tpot_target_met"]  # 1.11x at 4 req/s
    assert out["base:32"]["ratio"] == 1.1 and out["base:32"]["target_met"]
    assert out["distinct:32"]["ratio"] == 1.83 and not out["distinct:32"]["target_met"]  # the target is 2x


def test_closed_loop_shapes_parse_and_bad_ones_name_the_kinds():
    from loraplex.bench.load import parse_closed_loop

    assert parse_closed_loop("base:32, distinct:8") == [("base", 32), ("distinct", 8)]
    assert parse_closed_loop("") == []
    for bad in ("base", "mix:4", "base:0", "distinct:x"):
        with pytest.raises(ValueError, match="KIND:CONCURRENCY with KIND in"):
            parse_closed_loop(bad)
