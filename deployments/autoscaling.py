"""Ray Serve autoscaling policies wrapping the pure `loraplex.autoscaling.policy` functions.

- `ExpertGroupPolicy`: deployment-level (one instance per expert group, knobs via `policy_kwargs`).
- `AppBudgetPolicy`: application-level (`applications[].autoscaling_policy` in the Serve YAML), the
  same per-group decision, then a global replica budget shared in proportion to load.

Both read a group's knobs as `GroupAutoscaling`, the model `groups[].autoscaling` validated as, so a
knob left out of `policy_kwargs` falls back to the same default as in the app config.
"""

from __future__ import annotations

import time

from loraplex.autoscaling.policy import PolicyState, desired_replicas, knobs_from_kwargs, share_budget
from loraplex.config.app import GroupAutoscaling

EXPERT_PREFIX = "expert_"


def group_load(ctx) -> float:
    """Requests queued at the router's handles plus requests inside the replicas (custom `inflight`)."""
    replica_side = sum((ctx.aggregated_metrics or {}).get("inflight", {}).values())
    return max(float(ctx.total_num_requests or 0.0), float(ctx.total_queued_requests or 0.0) + replica_side)


def group_knobs(ctx) -> GroupAutoscaling:
    """The group's knobs under the app-level policy: its deployment-level policy kwargs when present (build_app puts
    them there), else what Serve's own `autoscaling_config` says (min/max, target, delays; the rest at defaults)."""
    c = ctx.config
    kwargs = dict(getattr(getattr(c, "policy", None), "policy_kwargs", None) or {})
    if kwargs:
        return knobs_from_kwargs(kwargs)
    return knobs_from_kwargs(
        {
            "min_replicas": c.min_replicas,
            "max_replicas": c.max_replicas,
            "target_load": c.target_ongoing_requests,
            "upscale_delay_s": c.upscale_delay_s,
            "downscale_delay_s": c.downscale_delay_s,
        }
    )


def _decide(ctx, cfg: GroupAutoscaling) -> tuple[int, dict]:
    state = PolicyState.from_dict(ctx.policy_state)
    current = (
        max(ctx.current_num_replicas, ctx.target_num_replicas) if ctx.current_num_replicas else ctx.target_num_replicas
    )
    n, state = desired_replicas(current, group_load(ctx), cfg, state, ctx.current_time or time.time())
    return n, state.as_dict()


class ExpertGroupPolicy:
    def __init__(self, **kwargs):
        self.cfg = knobs_from_kwargs(kwargs)

    def __call__(self, ctx) -> tuple[int, dict]:
        return _decide(ctx, self.cfg)


class AppBudgetPolicy:
    def __init__(self, replica_budget: int = 8):
        self.budget = replica_budget

    def __call__(self, contexts: dict) -> tuple[dict, dict]:
        wishes, demand, floor, states = {}, {}, {}, {}
        for dep_id, ctx in contexts.items():
            cfg = group_knobs(ctx)
            wishes[dep_id], states[dep_id] = _decide(ctx, cfg)
            demand[dep_id] = group_load(ctx)
            floor[dep_id] = cfg.min_replicas
        return share_budget(wishes, demand, self.budget, floor), states
