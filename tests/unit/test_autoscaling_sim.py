"""The autoscaling simulation (loraplex.autoscaling: simulation, control, traffic, compare, frontier): deterministic,
conserves requests, accounts GPU time, reads the policy knobs from GroupAutoscaling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loraplex.autoscaling.compare import compare
from loraplex.autoscaling.control import POLICIES, initial_split, serve_delay
from loraplex.autoscaling.frontier import frontier, frontier_gap
from loraplex.autoscaling.simconfig import DOCS_PRESET, Burst, SimConfig
from loraplex.autoscaling.simulation import simulate
from loraplex.autoscaling.traffic import make_trace
from loraplex.config.app import GroupAutoscaling
from loraplex.experts.errors import ConfigError

# A small deployment: 8 GPUs, 40 adapters in 4 groups, 12 simulated minutes (a fraction of a second per policy).
SMALL = SimConfig(
    hours=0.2, gpus=8, adapters=40, groups=4, rps_per_gpu=1.0, cold_start_s=(20.0, 40.0), shift_every_s=300.0
)


@pytest.fixture(scope="module")
def runs():
    return {p: simulate(p, SMALL, seed=1) for p in POLICIES}


def test_same_seed_same_result_other_seed_other_traffic(runs):
    again = simulate("loraplex", SMALL, seed=1)
    assert again.summary() == runs["loraplex"].summary()
    assert np.array_equal(again.latency, runs["loraplex"].latency) and np.array_equal(
        again.replicas, runs["loraplex"].replicas
    )
    a, b = make_trace(SMALL, seed=1), make_trace(SMALL, seed=2)
    assert len(a.arrival) != len(b.arrival) or not np.array_equal(a.arrival, b.arrival)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_arrived_request_is_completed_dropped_or_still_in_the_system(runs, policy):
    r = runs[policy]
    assert r.n_arrived > 1000
    assert r.n_completed + r.n_dropped + r.n_in_system_end == r.n_arrived
    assert r.latency.size == r.n_completed and (r.latency > 0).all()


def test_static_replicas_never_change_and_use_the_whole_budget(runs):
    r = runs["static"]
    assert (r.replicas == r.replicas[0]).all() and (r.ready == r.replicas).all()
    assert r.replicas[0].sum() == SMALL.gpus and (r.replicas[0] >= SMALL.autoscaling.min_replicas).all()
    assert r.replica_starts == 0


def test_a_sustained_burst_gets_its_group_more_replicas():
    cfg = SimConfig(
        hours=0.15,
        gpus=16,
        adapters=40,
        groups=4,
        rps_per_gpu=0.8,
        cold_start_s=(20.0, 40.0),
        bursts=(Burst(start_s=60.0, duration_s=3600.0, group=1, multiplier=6.0),),
    )
    for policy in ("loraplex", "loraplex_double_delay"):
        r = simulate(policy, cfg, seed=0)
        start = int(r.replicas[0, 1])
        assert r.replicas[:, 1].max() > start, policy
        assert r.ready[-1, 1] > start, policy  # and they came up and serve
        assert r.replicas.sum(axis=1).max() <= cfg.gpus


@pytest.mark.parametrize("policy", POLICIES)
def test_replica_hours_equal_the_integral_of_the_replica_count(runs, policy):
    r = runs[policy]
    integral = r.replicas.sum(dtype=np.int64) * SMALL.dt_s / 3600.0  # per-group series, every step
    assert r.replica_hours == pytest.approx(integral, rel=1e-12)  # counted from the GPU pool
    assert r.serving_hours <= r.replica_hours
    assert r.replicas.sum(axis=1).max() <= SMALL.gpus


def test_trace_follows_the_configured_rates():
    t = make_trace(SMALL, seed=0)
    assert (np.diff(t.arrival) >= 0).all() and t.arrival[-1] < SMALL.horizon_s
    expected = t.rates.sum() * SMALL.dt_s
    assert abs(len(t.arrival) - expected) < 5 * np.sqrt(expected)
    assert (t.group == t.group_of[t.adapter]).all()  # every request's adapter belongs to its group


def test_initial_split_is_proportional_with_a_floor():
    assert initial_split([8, 1, 1], 10, 1) == [8, 1, 1]
    assert initial_split([1, 1, 1, 1], 6, 1) == [2, 2, 1, 1]
    assert initial_split([100, 1, 1, 1], 8, 1) == [5, 1, 1, 1]
    assert sum(initial_split([0.7, 0.2, 0.1, 0.0], 64, 1)) == 64


def test_serve_delay_matches_rays_delay_logic():
    """The mirror in the simulation against Ray 2.60's own `_apply_delay_logic` on a random decision sequence."""
    ap = pytest.importorskip("ray.serve.autoscaling_policy")
    from ray.serve.config import AutoscalingConfig

    cfg = AutoscalingConfig(min_replicas=1, max_replicas=10, upscale_delay_s=3, downscale_delay_s=7)
    rng = np.random.default_rng(0)
    ours, theirs, target_a, target_b = {}, {}, 3, 3
    for i in range(400):
        now = 1000.0 + i * 0.5
        wish = int(rng.integers(1, 8))
        desired_a = wish if i % 40 < 20 else target_a  # phases of changing wishes, then calm
        desired_b = wish if i % 40 < 20 else target_b
        target_a = serve_delay(desired_a, target_a, 3, 7, ours, now)
        target_b, theirs = ap._apply_delay_logic(desired_b, target_b, cfg, theirs, _now=now)
        assert target_a == target_b, i


def test_compare_is_json_able_and_has_every_policy():
    out = compare(SimConfig(hours=0.05, gpus=8, adapters=40, groups=4), seed=0)
    assert set(out["policies"]) == set(POLICIES)
    assert set(out["targets"]) == {"loraplex", "loraplex_double_delay"}
    json.dumps(out)


def test_frontier_has_one_point_per_target_and_a_higher_target_holds_fewer_gpus():
    cfg = SimConfig(
        hours=0.2, gpus=16, adapters=40, groups=4, rps_per_gpu=0.3, cold_start_s=(20.0, 40.0), shift_every_s=300.0
    )
    out = frontier(cfg, seeds=(1,), targets=(4.0, 16.0, 64.0))
    json.dumps(out)
    for policy, points in out["points"]["1"].items():
        assert [r["target_load"] for r in points] == [4.0, 16.0, 64.0]
        hours = [r["replica_hours"] for r in points]
        assert hours == sorted(hours, reverse=True) and hours[0] > hours[-1], policy
    assert len(out["gaps"]["1"]["loraplex"]) == 3  # one per ray_default point


def test_frontier_gap_interpolates_between_targets_and_counts_drops():
    pts = [
        {"target_load": 16.0, "p99_s": 30.0, "replica_hours": 160.0, "drop_rate": 0.0},
        {"target_load": 32.0, "p99_s": 40.0, "replica_hours": 120.0, "drop_rate": 0.01},
        {"target_load": 64.0, "p99_s": 60.0, "replica_hours": 100.0, "drop_rate": 0.03},
    ]
    ref = {"target_load": 32.0, "p99_s": 50.0, "replica_hours": 150.0, "drop_rate": 0.02}
    g = frontier_gap(pts, ref)
    assert g["at_ref_p99"] == {"replica_hours": 110.0, "drop_rate": 0.02, "target_load": 48.0}
    assert g["hours_saved"] == pytest.approx(1 - 110 / 150, abs=1e-3)
    assert g["at_ref_hours"]["p99_s"] == 32.5 and g["p99_ratio"] == 0.65
    assert g["same_p99_30pct_fewer_hours"] is False and not g["met"]  # 26.7 % saved
    assert frontier_gap(pts, {**ref, "replica_hours": 165.0})["at_ref_hours"] is None  # outside the sweep
    worse_drops = frontier_gap(pts, {**ref, "replica_hours": 200.0, "p99_s": 55.0, "drop_rate": 0.0})
    assert worse_drops["hours_saved"] >= 0.30 and not worse_drops["same_p99_30pct_fewer_hours"]


def test_an_unknown_policy_is_one_problem_naming_the_choices():
    with pytest.raises(ConfigError) as e:
        simulate("nope", SMALL, seed=0)
    assert len(e.value.problems) == 1  # not one problem per character of the message
    assert "unknown policy 'nope'" in e.value.problems[0] and "ray_default" in e.value.problems[0]


def test_the_policy_knobs_are_a_group_autoscaling_and_the_docs_runs_pin_theirs():
    cfg = SimConfig()
    assert isinstance(cfg.autoscaling, GroupAutoscaling) and cfg.autoscaling == DOCS_PRESET
    # the values docs/autoscaling.md and docs/autoscaling_{sim,frontier}.json were produced with
    knobs = {
        "min_replicas": 1,
        "max_replicas": 32,
        "target_load": 32.0,
        "upscale_threshold": 1.0,
        "downscale_threshold": 0.5,
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 60.0,
        "look_back_period_s": 10.0,
    }
    assert {k: cfg.to_dict()["autoscaling"][k] for k in knobs} == knobs
    slower = SMALL.with_knobs(downscale_delay_s=600.0)
    assert (
        slower.autoscaling.downscale_delay_s == 600.0
        and slower.autoscaling.target_load == SMALL.autoscaling.target_load
    )
    with pytest.raises(ConfigError, match="downscale_threshold"):
        SMALL.with_knobs(downscale_threshold=2.0)


def test_a_longer_downscale_delay_holds_more_gpus():
    """The simulated loraplex policy acts on the knobs it is given (not a copy of its own)."""
    quick, slow = (simulate("loraplex", SMALL.with_knobs(downscale_delay_s=d), seed=1) for d in (10.0, 600.0))
    assert slow.replica_hours > quick.replica_hours
