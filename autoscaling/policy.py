"""How many replicas an expert group needs, from its observed load: a pure function, no Ray.

Load is requests in the system for the group: queued at the router's handles (demand the router has
already routed but no replica has picked up: upscaling starts before replica queues build) plus
requests in the replicas (running rows and waiting batches). Hysteresis: scale up when load per
replica exceeds `target * upscale_threshold`, down only when it stays below
`target * downscale_threshold` for `downscale_delay_s`; idle groups may go to zero after
`scale_to_zero_delay_s` when `min_replicas == 0`.

`share_budget` splits a global replica (GPU) budget across groups in proportion to their demand when
the sum of the groups' wishes exceeds it.

The knobs are the group's `loraplex.config.app.GroupAutoscaling` itself, the model `groups[].autoscaling`
validates as: the Serve wrappers and the simulation read the same fields and the same defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from loraplex.config.app import GroupAutoscaling
from loraplex.experts.errors import ConfigError


def knobs_from_kwargs(kwargs: Mapping) -> GroupAutoscaling:
    """A group's knobs from a plain mapping (Serve's `policy_kwargs`, a simulation's overrides); bad ones raise one
    `ConfigError` listing every problem, like the rest of the engine's configuration. Serve passes policy kwargs
    through unchecked, so this is where a hand-written Serve YAML's knobs get validated."""
    try:
        return GroupAutoscaling(**kwargs)
    except ValidationError as e:
        raise ConfigError(
            [f"{'.'.join(map(str, err['loc'])) or 'autoscaling'}: {err['msg']}" for err in e.errors()]
        ) from e


@dataclass
class PolicyState:
    """Carried between ticks (Serve keeps it in `policy_state`)."""

    above_since: float | None = None
    below_since: float | None = None
    idle_since: float | None = None
    history: list[tuple[float, float, int]] = field(default_factory=list)  # (time, load, decision), last few

    def as_dict(self) -> dict:
        return {
            "above_since": self.above_since,
            "below_since": self.below_since,
            "idle_since": self.idle_since,
            "history": self.history[-20:],
        }

    @classmethod
    def from_dict(cls, d: Mapping | None) -> PolicyState:
        d = d or {}
        return cls(d.get("above_since"), d.get("below_since"), d.get("idle_since"), list(d.get("history", [])))


def desired_replicas(
    current: int, load: float, cfg: GroupAutoscaling, state: PolicyState, now: float
) -> tuple[int, PolicyState]:
    """Replicas the group should have; `current` is the running (or target) count."""
    need = math.ceil(load / cfg.target_load) if load > 0 else 0
    decision = current
    if current == 0:
        decision = max(1, need) if load > 0 else 0  # cold start: the router is holding requests
        state.above_since = state.below_since = None
    else:
        per_replica = load / current
        if per_replica > cfg.target_load * cfg.upscale_threshold:
            state.below_since = None
            state.above_since = state.above_since if state.above_since is not None else now
            if now - state.above_since >= cfg.upscale_delay_s:
                decision = max(current + 1, need)
                state.above_since = None  # each further step waits its own delay
        elif per_replica < cfg.target_load * cfg.downscale_threshold:
            state.above_since = None
            state.below_since = state.below_since if state.below_since is not None else now
            if current > 1 and now - state.below_since >= cfg.downscale_delay_s:
                decision = max(1, need, current - 1)  # one step at a time: no oscillation
                state.below_since = now
        else:
            state.above_since = state.below_since = None
    if load > 0:
        state.idle_since = None
    else:
        state.idle_since = state.idle_since if state.idle_since is not None else now
        if cfg.min_replicas == 0 and now - state.idle_since >= cfg.scale_to_zero_delay_s:
            decision = 0
    decision = min(cfg.max_replicas, max(cfg.min_replicas, decision))
    state.history = (state.history + [(round(now, 3), round(load, 3), decision)])[-20:]
    return decision, state


def share_budget(
    wishes: Mapping[str, int], demand: Mapping[str, float], budget: int, minimum: Mapping[str, int]
) -> dict[str, int]:
    """Fit per-group wishes into `budget` replicas: minimums first, the rest in proportion to demand.

    Largest-remainder rounding; a group never gets more than it wished for.
    """
    if sum(wishes.values()) <= budget:
        return dict(wishes)
    out = {g: min(minimum.get(g, 0), wishes[g]) for g in wishes}
    left = budget - sum(out.values())
    if left <= 0:
        return out
    extra_wish = {g: wishes[g] - out[g] for g in wishes}
    total = sum(demand.get(g, 0.0) for g in wishes if extra_wish[g] > 0) or 1.0
    quota = {g: left * demand.get(g, 0.0) / total if extra_wish[g] > 0 else 0.0 for g in wishes}
    give = {g: min(extra_wish[g], int(quota[g])) for g in wishes}
    left -= sum(give.values())
    for g in sorted(wishes, key=lambda g: quota[g] - int(quota[g]), reverse=True):
        if left <= 0:
            break
        if give[g] < extra_wish[g]:
            give[g] += 1
            left -= 1
    return {g: out[g] + give[g] for g in wishes}
