"""Every policy on one seeded trace (`compare`), and whether loraplex meets the goal against Ray's default
(`evaluate_target`): the results behind docs/autoscaling_sim.json."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np

from loraplex.autoscaling.control import POLICIES
from loraplex.autoscaling.results import SimResult
from loraplex.autoscaling.simconfig import SimConfig
from loraplex.autoscaling.simulation import simulate
from loraplex.autoscaling.traffic import make_trace


def evaluate_target(
    loraplex: SimResult, default: SimResult, p99_tolerance: float = 0.10, hours_tolerance: float = 0.05
) -> dict:
    """The goal: the default policy's p99 (within `p99_tolerance`) with >= 30 % fewer replica-hours, or
    >= 2x lower p99 at equal replica-hours (within `hours_tolerance`); never more drops."""
    ratio_p99 = loraplex.p99 / default.p99
    ratio_hours = loraplex.replica_hours / default.replica_hours
    drops_ok = loraplex.drop_rate <= default.drop_rate + 1e-3
    a = ratio_p99 <= 1 + p99_tolerance and ratio_hours <= 0.70
    b = ratio_p99 <= 0.5 and ratio_hours <= 1 + hours_tolerance
    return {
        "p99_ratio": round(ratio_p99, 3),
        "replica_hours_ratio": round(ratio_hours, 3),
        "replica_hours_saved": round(1 - ratio_hours, 3),
        "drops_not_worse": bool(drops_ok),
        "same_p99_30pct_fewer_hours": bool(a and drops_ok),
        "half_p99_equal_hours": bool(b and drops_ok),
        "met": bool((a or b) and drops_ok),
        "rule": f"p99 <= {1 + p99_tolerance:.2f}x and hours <= 0.70x, or p99 <= 0.5x and hours <= "
        f"{1 + hours_tolerance:.2f}x; drop rate <= default + 0.1 pt",
    }


def compare(
    cfg: SimConfig | None = None,
    seed: int = 0,
    policies: Sequence[str] = POLICIES,
    progress: Callable[[int], None] | None = None,
    every_s: float = 60.0,
) -> dict:
    """Run every policy on the same seeded trace; a JSON-able dict (see scripts/simulate_autoscaling.py)."""
    cfg = cfg or SimConfig()
    trace = make_trace(cfg, seed)
    results = {p: simulate(p, cfg, seed, trace=trace, progress=progress) for p in policies}
    target = cfg.autoscaling.target_load
    out = {
        "config": cfg.to_dict(),
        "seed": seed,
        "trace": {
            "requests": int(len(trace.arrival)),
            "mean_rps": round(len(trace.arrival) / cfg.horizon_s, 2),
            "hot_group": trace.hot_group,
            "bursts": [asdict(b) for b in trace.bursts],
            "per_replica_rps_at_target": round(target / cfg.latency_at(target), 3),
            "latency_unloaded_s": round(cfg.latency_at(1), 3),
            "latency_at_target_s": round(cfg.latency_at(target), 3),
            "rates_every_s": every_s,
            "group_rps": _downsample(trace.rates, cfg.dt_s, every_s),
        },
        "policies": {p: r.to_dict(every_s=every_s) for p, r in results.items()},
    }
    if "ray_default" in results:
        out["targets"] = {
            p: evaluate_target(results[p], results["ray_default"])
            for p in ("loraplex", "loraplex_double_delay")
            if p in results
        }
    return out


def _downsample(x: np.ndarray, dt: float, every_s: float) -> list:
    k = max(1, int(round(every_s / dt)))
    n = x.shape[0] // k * k
    return np.round(x[:n].reshape(-1, k, x.shape[1]).mean(axis=1), 3).tolist()
