"""The expert-group scaling policy as a pure function of load and time, its Serve wrappers and its Serve config."""

from __future__ import annotations

import pytest

from loraplex.autoscaling.policy import PolicyState, desired_replicas, knobs_from_kwargs, share_budget
from loraplex.config.app import GroupAutoscaling
from loraplex.deployments.autoscaling import AppBudgetPolicy, ExpertGroupPolicy, group_knobs, group_load
from loraplex.experts.errors import ConfigError

CFG = GroupAutoscaling(
    min_replicas=1,
    max_replicas=4,
    target_load=4,
    upscale_threshold=1.0,
    downscale_threshold=0.5,
    upscale_delay_s=2,
    downscale_delay_s=10,
)


def run(trace, cfg=CFG, start=1):
    """trace: [(time, load)] -> decisions, feeding each decision back as the current count."""
    state, current, out = PolicyState(), start, []
    for t, load in trace:
        current, state = desired_replicas(current, load, cfg, state, t)
        out.append(current)
    return out


def test_upscale_waits_for_the_delay_then_jumps_to_need():
    assert run([(0, 20), (1, 20), (2, 20), (3, 20)]) == [1, 1, 4, 4]


def test_hysteresis_band_holds_steady():
    # load per replica between target*0.5 and target*1.0: no change either way
    assert run([(t, 6) for t in range(0, 30, 5)], start=2) == [2] * 6


def test_downscale_needs_sustained_low_load_and_steps_one_at_a_time():
    decisions = run([(0, 1), (5, 1), (10, 1), (11, 1), (21, 1), (22, 1)], start=3)
    assert decisions == [3, 3, 2, 2, 1, 1]


def test_a_spike_resets_the_downscale_clock():
    assert run([(0, 1), (8, 12), (9, 1), (18, 1), (19, 1)], start=3) == [3, 3, 3, 3, 2]


def test_bounds_and_scale_to_zero():
    zero = GroupAutoscaling(min_replicas=0, max_replicas=2, target_load=1, downscale_delay_s=0, scale_to_zero_delay_s=5)
    assert run([(0, 100)], zero) == [2]  # capped at max
    assert run([(0, 0), (4, 0), (5, 0), (6, 3)], zero, start=1) == [
        1,
        1,
        0,
        2,
    ]  # idle -> zero; demand -> cold start at need
    assert run([(0, 0), (100, 0)], CFG, start=1) == [1, 1]  # min 1 never goes to zero


CASES = [
    ("min above max", dict(min_replicas=3, max_replicas=2), "min_replicas"),
    ("target", dict(target_load=0), "target_load: Input should be greater than 0"),
    ("thresholds", dict(upscale_threshold=0.5, downscale_threshold=0.6), "downscale_threshold"),
    ("unknown knob", dict(target=4), "target: Extra inputs are not permitted"),
]


@pytest.mark.parametrize("name,kw,match", CASES, ids=[c[0] for c in CASES])
def test_bad_policy_kwargs_are_one_config_error(name, kw, match):
    with pytest.raises(ConfigError, match=match):
        ExpertGroupPolicy(**kw)  # Serve passes a YAML's policy_kwargs here unchecked
    with pytest.raises(ConfigError) as e:
        knobs_from_kwargs({"target_load": -1, "max_replicas": 0})
    assert len(e.value.problems) == 2  # every problem at once


def test_knobs_left_out_take_the_app_configs_defaults():
    assert ExpertGroupPolicy().cfg == GroupAutoscaling()
    assert ExpertGroupPolicy(downscale_delay_s=5).cfg == GroupAutoscaling(downscale_delay_s=5)


def test_budget_is_shared_in_proportion_to_demand():
    wishes = {"support": 6, "extraction": 4, "code": 1}
    demand = {"support": 30.0, "extraction": 10.0, "code": 0.5}
    out = share_budget(wishes, demand, budget=6, minimum={"support": 1, "extraction": 1, "code": 1})
    assert sum(out.values()) == 6 and out["code"] == 1
    assert out["support"] > out["extraction"] >= 1
    assert share_budget({"a": 1, "b": 2}, {"a": 1, "b": 1}, 8, {}) == {"a": 1, "b": 2}  # budget not binding
    assert share_budget({"a": 5, "b": 5}, {"a": 1.0, "b": 0.0}, 4, {"a": 1, "b": 1}) == {"a": 3, "b": 1}


def _ctx(current, total, queued=0.0, inflight=(), state=None, t=0.0, cfg=None):
    from types import SimpleNamespace

    return SimpleNamespace(
        current_num_replicas=current,
        target_num_replicas=current,
        total_num_requests=total,
        total_queued_requests=queued,
        aggregated_metrics={"inflight": {i: v for i, v in enumerate(inflight)}},
        policy_state=state or {},
        current_time=t,
        config=cfg,
    )


def test_serve_wrappers_read_the_context():
    from types import SimpleNamespace

    assert group_load(_ctx(1, total=3, queued=2, inflight=[4, 1])) == 7  # handle queue + replica-side rows
    pol = ExpertGroupPolicy(min_replicas=1, max_replicas=3, target_load=2, downscale_delay_s=5)
    n, state = pol(_ctx(1, total=9))
    assert n == 3 and state["history"][-1][2] == 3
    n, state = pol(_ctx(3, total=0, state=state, t=1))
    assert n == 3  # low load must last downscale_delay_s
    n, _ = pol(_ctx(3, total=0, state=state, t=7))
    assert n == 2
    cfg = SimpleNamespace(
        min_replicas=1, max_replicas=4, target_ongoing_requests=2, upscale_delay_s=0, downscale_delay_s=5
    )
    wishes, _ = AppBudgetPolicy(replica_budget=4)(
        {"hot": _ctx(1, total=20, cfg=cfg), "cold": _ctx(1, total=1, cfg=cfg)}
    )
    assert wishes == {"hot": 3, "cold": 1}


def test_app_policy_uses_each_groups_own_knobs():
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        min_replicas=1,
        max_replicas=9,
        target_ongoing_requests=2,
        upscale_delay_s=0,
        downscale_delay_s=0,
        policy=SimpleNamespace(
            policy_kwargs={"min_replicas": 0, "max_replicas": 3, "target_load": 5, "downscale_delay_s": 42}
        ),
    )
    got = group_knobs(SimpleNamespace(config=cfg))
    assert (got.min_replicas, got.max_replicas, got.target_load, got.downscale_delay_s) == (0, 3, 5, 42)
    plain = SimpleNamespace(
        min_replicas=1, max_replicas=9, target_ongoing_requests=2, upscale_delay_s=3, downscale_delay_s=7, policy=None
    )
    assert group_knobs(SimpleNamespace(config=plain)) == GroupAutoscaling(
        max_replicas=9, target_load=2, upscale_delay_s=3, downscale_delay_s=7
    )


def test_serve_autoscaling_config_is_what_build_app_deploys():
    a = GroupAutoscaling(
        enabled=True,
        min_replicas=0,
        max_replicas=3,
        target_load=5,
        downscale_threshold=0.25,
        downscale_delay_s=42,
        scale_to_zero_delay_s=120,
        look_back_period_s=15,
    )
    assert a.serve_autoscaling_config(num_replicas=2) == {
        "min_replicas": 0,
        "max_replicas": 3,
        "initial_replicas": 2,
        "target_ongoing_requests": 5.0,
        "upscale_delay_s": 0,
        "downscale_delay_s": 0,
        "downscale_to_zero_delay_s": 0,
        "look_back_period_s": 15.0,
        "policy": {
            "policy_function": "loraplex.deployments.autoscaling:ExpertGroupPolicy",
            "policy_kwargs": {
                "min_replicas": 0,
                "max_replicas": 3,
                "target_load": 5.0,
                "upscale_threshold": 1.0,
                "downscale_threshold": 0.25,
                "upscale_delay_s": 0.0,
                "downscale_delay_s": 42.0,
                "scale_to_zero_delay_s": 120.0,
            },
        },
    }
    assert a.serve_autoscaling_config(num_replicas=9)["initial_replicas"] == 3  # start count clamped to [min, max]
    assert (
        GroupAutoscaling(enabled=True, min_replicas=2).serve_autoscaling_config(num_replicas=1)["initial_replicas"] == 2
    )
    assert GroupAutoscaling().serve_autoscaling_config(num_replicas=2) is None  # off: fixed num_replicas


def test_the_deployed_policy_rebuilds_the_groups_knobs():
    a = GroupAutoscaling(
        enabled=True, min_replicas=0, max_replicas=3, target_load=5, upscale_threshold=2.0, scale_to_zero_delay_s=120
    )
    kwargs = a.serve_autoscaling_config(num_replicas=1)["policy"]["policy_kwargs"]
    knobs = a.model_dump(exclude={"enabled", "look_back_period_s"})
    assert ExpertGroupPolicy(**kwargs).cfg.model_dump(exclude={"enabled", "look_back_period_s"}) == knobs


def test_serve_accepts_the_autoscaling_config():
    config = pytest.importorskip("ray.serve.config")
    d = GroupAutoscaling(enabled=True, max_replicas=3).serve_autoscaling_config(num_replicas=1)
    parsed = config.AutoscalingConfig(**d)
    assert parsed.policy.policy_function == "loraplex.deployments.autoscaling:ExpertGroupPolicy"
    assert parsed.policy.policy_kwargs == d["policy"]["policy_kwargs"]
