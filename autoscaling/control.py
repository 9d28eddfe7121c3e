"""The scaling policies the simulation compares: how each turns a group's measured load into replica targets,
including Serve's own wrapper around a policy (delay logic, min/max bounds, the cold-start fast path).

- `loraplex`: `loraplex.autoscaling.policy.desired_replicas` per group, then `share_budget` over the GPU
  budget (what `loraplex.deployments.autoscaling.AppBudgetPolicy` does), then Serve's min/max bounds with
  Serve's own delays at 0 (as `GroupAutoscaling.serve_autoscaling_config` sets them): only the policy's
  hysteresis acts.
- `loraplex_double_delay`: the earlier wiring, Serve's delays set to the policy's delays as well. The
  policy asks for each scale-down on a single tick, which Serve's delay logic resets on the next:
  groups shrink only when the budget cuts them (docs/autoscaling.md, "Fixed: double delay").
- `ray_default`: Ray's `replica_queue_length_autoscaling_policy` per group
  (ceil(ongoing / target_ongoing_requests)) with Serve's delay logic (upscale 30 s, downscale 600 s,
  look-back 30 s) and no budget but the hard GPU cap.
- `static`: GPUs split once in proportion to the initial group demand, never changed.

Metrics reach a policy as Serve delivers them (`LoadMetrics`): the group load (queued + running requests,
like `loraplex.deployments.autoscaling.group_load`) is sampled every `control_interval_s`, pushed every
`metrics_push_interval_s` and averaged over the policy's look-back window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from loraplex.autoscaling.policy import PolicyState, desired_replicas, share_budget
from loraplex.autoscaling.replicas import ReplicaPool
from loraplex.autoscaling.simconfig import SimConfig
from loraplex.autoscaling.traffic import Trace
from loraplex.experts.errors import ConfigError

POLICIES = ("loraplex", "loraplex_double_delay", "ray_default", "static")


def serve_delay(desired: int, target: int, up_delay_s: float, down_delay_s: float, state: dict, now: float) -> int:
    """Mirror of `ray.serve.autoscaling_policy._apply_delay_logic` (Ray 2.60): a change in one direction
    applies only after the policy asked for it continuously for the delay; a reversal resets the clock."""
    counter, since = state.get("counter", 0), state.get("since")
    decision = target
    if desired > target:
        if counter < 0:
            counter, since = 0, None
        counter += 1
        since = now if since is None else since
        if now - since + 1e-6 >= up_delay_s:
            counter, since, decision = 0, None, desired
    elif desired < target:
        if counter > 0:
            counter, since = 0, None
        counter -= 1
        since = now if since is None else since
        if now - since + 1e-6 >= down_delay_s:
            counter, since, decision = 0, None, max(1, desired) if target > 1 else desired
    else:
        counter, since = 0, None
    state["counter"], state["since"] = counter, since
    return decision


def initial_split(weights: Sequence[float], total: int, minimum: int = 1) -> list[int]:
    """`total` replicas in proportion to `weights`, each group at least `minimum` (largest remainder)."""
    G = len(weights)
    w = np.asarray(weights, dtype=float)
    w = w if w.sum() > 0 else np.ones(G)
    floor: set[int] = set()
    while True:  # groups whose share is under the floor get the floor; the rest share what is left
        free = [g for g in range(G) if g not in floor]
        left = total - minimum * len(floor)
        wf = w[free].sum()
        quota = {g: (w[g] / wf if wf > 0 else 1.0 / len(free)) * left for g in free}
        low = [g for g in free if quota[g] < minimum]
        if not low or len(low) == len(free):
            break
        floor.update(low)
    out = [minimum] * G
    for g in free:
        out[g] = max(minimum, int(quota[g]))
    left = total - sum(out)
    for g in sorted(free, key=lambda g: quota[g] - int(quota[g]), reverse=True)[: max(0, left)]:
        out[g] += 1
    return out


def initial_replicas(policy: str, cfg: SimConfig, trace: Trace) -> list[int]:
    """Start counts: static splits all GPUs; the autoscaled policies start sized to the initial demand."""
    a = cfg.autoscaling
    rates = trace.initial_rates()
    if policy == "static":
        return initial_split(rates, cfg.gpus, a.min_replicas)
    per_replica_rps = a.target_load / cfg.latency_at(a.target_load)
    want = {
        g: min(a.max_replicas, max(a.min_replicas, math.ceil(rates[g] / per_replica_rps))) for g in range(cfg.groups)
    }
    fit = share_budget(want, {g: float(rates[g]) for g in want}, cfg.gpus, {g: a.min_replicas for g in want})
    return [fit[g] for g in range(cfg.groups)]


class LoadMetrics:
    """Group load as a Serve policy sees it: one sample per control tick, pushed every `push_every` ticks and
    averaged over the last `look_back` samples; between pushes the policy keeps seeing the previous average."""

    def __init__(self, n_ticks: int, groups: int, push_every: int, look_back: int):
        self.samples = np.zeros((n_ticks, groups))
        self.metric = np.zeros(groups)
        self.push_every, self.look_back = push_every, look_back

    def observe(self, c_idx: int, load: np.ndarray) -> np.ndarray:
        """Record control tick `c_idx`'s load per group; the metric the policy sees now."""
        self.samples[c_idx] = load
        if c_idx % self.push_every == 0:
            self.metric = self.samples[max(0, c_idx - self.look_back + 1) : c_idx + 1].mean(axis=0)
        return self.metric


class LoraplexControl:
    """`AppBudgetPolicy` inside Serve: each group's `desired_replicas`, the budget shared, then Serve's wrapper
    (the cold-start fast path, its delay logic with `serve_delays`, the min/max bounds)."""

    def __init__(self, cfg: SimConfig, serve_delays: tuple[float, float]):
        self.cfg = cfg
        self.serve_up, self.serve_down = serve_delays
        self.look_back_s = cfg.autoscaling.look_back_period_s
        self.pstate = [PolicyState() for _ in range(cfg.groups)]
        self.dstate: list[dict] = [{} for _ in range(cfg.groups)]

    def decide(self, now: float, metric: np.ndarray, pool: ReplicaPool) -> None:
        a, G = self.cfg.autoscaling, self.cfg.groups
        wishes, demand = {}, {}
        for g in range(G):
            running, target = pool.n_ready(g), pool.target_of(g)
            current = max(running, target) if running else target
            wishes[g], self.pstate[g] = desired_replicas(current, float(metric[g]), a, self.pstate[g], now)
            demand[g] = float(metric[g])
        shares = share_budget(wishes, demand, self.cfg.gpus, {g: a.min_replicas for g in range(G)})
        for g in range(G):
            target = pool.target_of(g)
            if not pool.n_ready(g) and metric[g] > 0:  # Serve's cold-start fast path
                n = max(1, target)
            else:
                n = serve_delay(shares[g], target, self.serve_up, self.serve_down, self.dstate[g], now)
            pool.set_target(g, min(a.max_replicas, max(a.min_replicas, n)), now)


class RayDefaultControl:
    """Ray's `replica_queue_length_autoscaling_policy` per group inside Serve's wrapper with Serve's default delays."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.look_back_s = cfg.ray_look_back_s
        self.dstate: list[dict] = [{} for _ in range(cfg.groups)]

    def decide(self, now: float, metric: np.ndarray, pool: ReplicaPool) -> None:
        cfg, a = self.cfg, self.cfg.autoscaling
        for g in range(cfg.groups):
            running, target = pool.n_ready(g), pool.target_of(g)
            if running == 0:
                n = max(1, target) if metric[g] > 0 else target
            else:
                desired = math.ceil(metric[g] / a.target_load - 1e-9)
                n = serve_delay(
                    desired, target, cfg.ray_upscale_delay_s, cfg.ray_downscale_delay_s, self.dstate[g], now
                )
            pool.set_target(g, min(a.max_replicas, max(a.min_replicas, n)), now)


def controller(policy: str, cfg: SimConfig) -> LoraplexControl | RayDefaultControl | None:
    """The control loop of `policy` (one of `POLICIES`); None for `static`, which never rescales."""
    if policy not in POLICIES:
        raise ConfigError([f"unknown policy {policy!r}; choose one of {list(POLICIES)}"])
    if policy == "static":
        return None
    if policy == "ray_default":
        return RayDefaultControl(cfg)
    a = cfg.autoscaling
    # Serve's own delay logic around the loraplex policy: off as build_app configures it, or set to the
    # policy's delays too (`loraplex_double_delay`, the earlier wiring).
    return LoraplexControl(
        cfg, (a.upscale_delay_s, a.downscale_delay_s) if policy == "loraplex_double_delay" else (0.0, 0.0)
    )
