"""Frontier: p99 against replica-hours over the per-replica target (`frontier`), and where one policy's curve
stands against another's points (`frontier_gap`): the results behind docs/autoscaling_frontier.json.

A single operating point trades latency for replicas through the target, so two policies are compared along
their p99-vs-replica-hours curves rather than at one target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from loraplex.autoscaling.simconfig import SimConfig
from loraplex.autoscaling.simulation import simulate
from loraplex.autoscaling.traffic import make_trace

SWEEP_TARGETS = (16.0, 24.0, 32.0, 48.0, 64.0)


def frontier(
    cfg: SimConfig | None = None,
    seeds: Sequence[int] = (0,),
    policies: Sequence[str] = ("loraplex", "ray_default"),
    targets: Sequence[float] = SWEEP_TARGETS,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Each policy at each per-replica target (`target_load`, which is Ray's `target_ongoing_requests` too) on
    each seed's trace, and `frontier_gap` of every other policy against `ray_default`.

    One operating point trades latency for replicas, so two policies are compared along their p99-vs-replica-hours
    curves: {"targets", "seeds", "points": {seed: {policy: [summary + "target_load" + "dominated", one per target]}},
    "gaps": {seed: {policy: [frontier_gap against each ray_default point]}}}; `cfg.autoscaling.target_load` is the
    reference target (the single-comparison default)."""
    cfg = cfg or SimConfig()
    out = {
        "config": cfg.to_dict(),
        "reference_target": cfg.autoscaling.target_load,
        "targets": list(targets),
        "seeds": list(seeds),
        "points": {},
        "gaps": {},
    }
    for seed in seeds:
        trace = make_trace(cfg, seed)  # the traffic does not depend on the target
        pts = {
            p: [
                {
                    "target_load": t,
                    **simulate(p, cfg.with_knobs(target_load=t), seed, trace=trace, progress=progress).summary(),
                }
                for t in targets
            ]
            for p in policies
        }
        for points in pts.values():
            _mark_dominated(points)
        out["points"][str(seed)] = pts
        if "ray_default" in pts:
            out["gaps"][str(seed)] = {
                p: [frontier_gap(pts[p], ref) for ref in pts["ray_default"]] for p in pts if p != "ray_default"
            }
    return out


def _mark_dominated(points: Sequence[dict]) -> None:
    """`dominated`: another target of the same policy is no worse in p99, replica-hours and drop rate, and better in
    one (such a point is off the policy's own frontier)."""
    keys = ("p99_s", "replica_hours", "drop_rate")
    for r in points:
        r["dominated"] = any(
            all(o[k] <= r[k] for k in keys) and any(o[k] < r[k] for k in keys) for o in points if o is not r
        )


def _along(points: Sequence[dict], x: str, value: float, y: str) -> dict | None:
    """`points` (in target order) as a piecewise-linear curve; where `x` equals `value`, the lowest `y` (and the
    drop rate and target there), or None when no segment brackets `value`."""
    best = None
    for a, b in zip(points, points[1:]):
        lo, hi = sorted((a[x], b[x]))
        if not lo <= value <= hi:
            continue
        w = 0.0 if hi == lo else (value - a[x]) / (b[x] - a[x])
        at = {k: a[k] + w * (b[k] - a[k]) for k in (y, "drop_rate", "target_load")}
        if best is None or at[y] < best[y]:
            best = at
    return None if best is None else {k: round(v, 6 if k == "drop_rate" else 3) for k, v in best.items()}


def frontier_gap(points: Sequence[dict], ref: dict) -> dict:
    """Where `points` (one policy's frontier, in target order) stands against one reference point `ref`:
    replica-hours at the reference's p99 and p99 at the reference's replica-hours, linearly interpolated between
    neighbouring targets (None when the sweep does not bracket it: add targets). A point whose drop rate is
    more than 0.1 pt above the reference's does not count (`drops_not_worse`, like `evaluate_target`)."""
    at_p99 = _along(points, "p99_s", ref["p99_s"], "replica_hours")
    at_hours = _along(points, "replica_hours", ref["replica_hours"], "p99_s")

    def ok(at: dict | None) -> bool:
        return at is not None and at["drop_rate"] <= ref["drop_rate"] + 1e-3

    out = {
        "ref_target_load": ref["target_load"],
        "ref_p99_s": ref["p99_s"],
        "ref_replica_hours": ref["replica_hours"],
        "ref_drop_rate": ref["drop_rate"],
        "at_ref_p99": at_p99,
        "at_ref_hours": at_hours,
        "hours_saved": None if at_p99 is None else round(1 - at_p99["replica_hours"] / ref["replica_hours"], 3),
        "p99_ratio": None if at_hours is None else round(at_hours["p99_s"] / ref["p99_s"], 3),
    }
    out["drops_not_worse"] = {"at_ref_p99": ok(at_p99), "at_ref_hours": ok(at_hours)}
    out["same_p99_30pct_fewer_hours"] = bool(ok(at_p99) and out["hours_saved"] >= 0.30)
    out["half_p99_equal_hours"] = bool(ok(at_hours) and out["p99_ratio"] <= 0.5)
    out["met"] = out["same_p99_30pct_fewer_hours"] or out["half_p99_equal_hours"]
    return out
