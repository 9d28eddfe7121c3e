#!/usr/bin/env python
"""Compare expert-group autoscaling policies in a seeded simulation of a large multi-LoRA deployment.

Policies: `loraplex` (autoscaling/policy.py's desired_replicas + share_budget, Serve's own delays
off as deployments/app.py configures it, so only the policy's hysteresis acts), `loraplex_double_delay`
(the earlier wiring: Serve's delay logic on top of the policy's), `ray_default` (Ray Serve's ongoing-requests policy,
upscale 30 s / downscale 600 s, FCFS on the GPU cap) and `static` (GPUs split once by initial demand).
No Ray is started: see autoscaling/simulator.py for the model and docs/autoscaling.md for results.

    python scripts/simulate_autoscaling.py --json docs/autoscaling_sim.json --plot docs/autoscaling_sim.png

`--sweep` runs each policy (default loraplex and ray_default) at several per-replica targets instead and
compares them along their p99-vs-replica-hours frontiers:

    python scripts/simulate_autoscaling.py --sweep 16,24,32,48,64 --json docs/autoscaling_frontier.json --plot docs/autoscaling_frontier.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraplex.autoscaling.simulator import POLICIES, SimConfig, compare, frontier, total_steps  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    d = SimConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None, help="write the full results (summary, series, config; with --sweep the frontier) here")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG here (latency CDF, p99 over time, replicas, replica-hours; with --sweep p99 vs GPU-h)")
    p.add_argument("--hours", type=float, default=d.hours, help=f"simulated hours (default {d.hours})")
    p.add_argument("--gpus", type=int, default=d.gpus, help=f"GPU budget = most replicas at once (default {d.gpus})")
    p.add_argument("--adapters", type=int, default=d.adapters, help=f"LoRA adapters (default {d.adapters})")
    p.add_argument("--groups", type=int, default=d.groups, help=f"expert groups (default {d.groups})")
    p.add_argument("--seed", type=int, default=0, help="seed of the traffic and cold starts (default 0)")
    p.add_argument("--rps-per-gpu", type=float, default=d.rps_per_gpu, help=f"mean arrival rate per budget GPU (default {d.rps_per_gpu})")
    p.add_argument("--policies", default=None, help=f"comma-separated subset of {','.join(POLICIES)} (default: all; with --sweep loraplex,ray_default)")
    p.add_argument("--sweep", default=None, metavar="TARGETS",
                   help="comma-separated per-replica targets (target_load = Ray's target_ongoing_requests): run each policy at each "
                        f"and compare p99 against replica-hours with ray_default at {d.target_load:g} (--json/--plot get the frontier)")
    p.add_argument("--seeds", default=None, help="with --sweep: comma-separated seeds (default: --seed)")
    p.add_argument("--instant-shifts", action="store_true", help="popularity rotations switch at once instead of over 5 minutes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    a.policies = a.policies or ("loraplex,ray_default" if a.sweep else ",".join(POLICIES))
    if a.seeds and not a.sweep:
        p.error("--seeds needs --sweep")
    bad = [x for x in a.policies.split(",") if x not in POLICIES]
    if bad:
        p.error(f"unknown policies {bad}; choose from {list(POLICIES)}")
    return a


def _markdown(rows: list[tuple[str, ...]]) -> str:
    """A Markdown table with aligned columns; the first row is the header."""
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (x + 2) for x in w) + "|")
    return "\n".join(lines)


def table(result: dict) -> str:
    rows = [("policy", "p50 s", "p99 s", "dropped", "drop %", "GPU-h", "serving GPU-h", "mean GPUs", "peak", "starts")]
    for name, r in result["policies"].items():
        rows.append((name, f"{r['p50_s']:.2f}", f"{r['p99_s']:.2f}", str(r["dropped"]), f"{100 * r['drop_rate']:.2f}",
                     f"{r['replica_hours']:.1f}", f"{r['serving_hours']:.1f}", f"{r['mean_gpus']:.1f}", str(r["peak_gpus"]), str(r["replica_starts"])))
    return _markdown(rows)


def target_lines(result: dict) -> list[str]:
    out = []
    for name, t in result.get("targets", {}).items():
        out.append(f"{name} vs ray_default: p99 x{t['p99_ratio']}, replica-hours x{t['replica_hours_ratio']}, "
                   f"drops not worse: {t['drops_not_worse']} -> target {'MET' if t['met'] else 'NOT met'} ({t['rule']})")
    return out


def sweep_table(result: dict) -> str:
    rows = [("seed", "policy", "target", "p50 s", "p99 s", "drop %", "GPU-h", "peak", "starts", "dominated")]
    for seed, pts in result["points"].items():
        for name, points in pts.items():
            for r in points:
                rows.append((seed, name, f"{r['target_load']:g}", f"{r['p50_s']:.2f}", f"{r['p99_s']:.2f}", f"{100 * r['drop_rate']:.2f}",
                             f"{r['replica_hours']:.1f}", str(r["peak_gpus"]), str(r["replica_starts"]), "yes" if r["dominated"] else ""))
    return _markdown(rows)


def gap_table(result: dict) -> str:
    """Every other policy against each ray_default point ('*' the reference target, '(dominated)' a point off
    ray_default's own frontier): its GPU-h at that p99 and its p99 at those GPU-h, interpolated along its sweep."""
    rows = [("seed", "policy", "vs ray_default at", "ray p99 s / GPU-h / drop %", "GPU-h at same p99 (saved, drop %)",
             "p99 at same GPU-h (ratio, drop %)", "target")]
    for seed, gaps in result["gaps"].items():
        ray = {r["target_load"]: r for r in result["points"][seed]["ray_default"]}
        for name, per_ref in gaps.items():
            for g in per_ref:
                a, b, t = g["at_ref_p99"], g["at_ref_hours"], g["ref_target_load"]
                rows.append((seed, name, f"{t:g}{' *' if t == result['reference_target'] else ''}{' (dominated)' if ray[t]['dominated'] else ''}",
                             f"{g['ref_p99_s']:.1f} / {g['ref_replica_hours']:.1f} / {100 * g['ref_drop_rate']:.2f}",
                             "not bracketed" if a is None else f"{a['replica_hours']:.1f} ({100 * g['hours_saved']:+.1f} %, {100 * a['drop_rate']:.2f})",
                             "not bracketed" if b is None else f"{b['p99_s']:.1f} (x{g['p99_ratio']:.2f}, {100 * b['drop_rate']:.2f})",
                             "MET" if g["met"] else "not met"))
    return _markdown(rows)


def plot_frontier(result: dict, path: Path) -> None:
    """p99 against GPU-h, one panel per seed, one line per policy (points labelled target / drop %, hollow when
    dominated by another target of the same policy); the
    ray_default reference point, the two target corners (30 % fewer GPU-h, half the p99) and where each other
    policy's line crosses the reference's p99 and GPU-h."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"loraplex": "tab:blue", "loraplex_double_delay": "tab:cyan", "ray_default": "tab:orange", "static": "tab:gray"}
    seeds = list(result["points"])
    fig, axes = plt.subplots(1, len(seeds), figsize=(6.5 * len(seeds), 5.5), squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        for name, points in result["points"][seed].items():
            xs, ys = [r["replica_hours"] for r in points], [r["p99_s"] for r in points]
            ax.plot(xs, ys, "o-", color=colors.get(name), label=name)
            dom = [r for r in points if r["dominated"]]
            ax.plot([r["replica_hours"] for r in dom], [r["p99_s"] for r in dom], "o", mfc="white", color=colors.get(name))
            for r in points:
                ax.annotate(f"{r['target_load']:g} / {100 * r['drop_rate']:.1f}%", (r["replica_hours"], r["p99_s"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7, color=colors.get(name))
        ref = next((r for r in result["points"][seed].get("ray_default", []) if r["target_load"] == result["reference_target"]), None)
        if ref is not None:
            h, p = ref["replica_hours"], ref["p99_s"]
            ax.plot([h], [p], "*", ms=14, color="tab:orange", mec="k", label=f"ray_default @ {result['reference_target']:g}")
            ax.plot([0.7 * h, h], [p, 0.5 * p], "kx", ms=9, mew=2, label="target: -30 % GPU-h or 0.5x p99")
            ax.axhline(p, color="k", lw=0.6, ls=":")
            ax.axvline(h, color="k", lw=0.6, ls=":")
            for name, per_ref in result["gaps"].get(seed, {}).items():
                g = next((x for x in per_ref if x["ref_target_load"] == result["reference_target"]), None)
                at = [x for x in ((g or {}).get("at_ref_p99"), (g or {}).get("at_ref_hours")) if x]
                ax.plot([x.get("replica_hours", h) for x in at], [x.get("p99_s", p) for x in at], "D", ms=6, mfc="none", ls="none",
                        color=colors.get(name), label=f"{name} at that p99 / GPU-h (interpolated)")
        ax.set(xlabel="GPU-hours (replica-hours)", ylabel="p99 latency s", title=f"seed {seed}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    cfg = result["config"]
    fig.suptitle(f"p99 vs replica-hours over the per-replica target (labels: target / drop %); {cfg['gpus']} GPUs, "
                 f"{cfg['adapters']} adapters in {cfg['groups']} groups, {cfg['hours']} h")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pols = result["policies"]
    colors = {"loraplex": "tab:blue", "loraplex_double_delay": "tab:cyan", "ray_default": "tab:orange", "static": "tab:gray"}
    hot = result["trace"]["hot_group"]
    fig, ax = plt.subplots(2, 3, figsize=(17, 9))
    for name, r in pols.items():
        q = r["latency_quantiles"]
        xs = [q[k] for k in q]
        ys = [float(k) / 100 for k in q]
        ax[0, 0].plot(xs, ys, label=name, color=colors.get(name))
        w = r["p99_window"]
        ax[0, 1].plot(np.array(w["t_s"]) / 60, [np.nan if v is None else v for v in w["p99_s"]], label=name, color=colors.get(name))
        s = r["series"]
        t_min = np.array(s["t_s"]) / 60
        ax[0, 2].plot(t_min, s["total_replicas"], label=name, color=colors.get(name))
        ax[1, 0].plot(t_min, [row[hot] for row in s["replicas"]], label=f"{name} (held)", color=colors.get(name))
        ax[1, 0].plot(t_min, [row[hot] for row in s["ready"]], ls=":", color=colors.get(name))
    ax[0, 0].set(xscale="log", xlabel="latency s (log)", ylabel="fraction of completed requests", title="Latency CDF, completed requests")
    ax[0, 1].set(xlabel="minutes", ylabel="p99 s", title=f"p99 latency per {int(pols[next(iter(pols))]['p99_window']['window_s'] // 60)}-min arrival window")
    cfg = result["config"]
    ax[0, 2].axhline(cfg["gpus"], color="k", lw=0.8, ls="--")
    ax[0, 2].set(xlabel="minutes", ylabel="GPUs held", title=f"GPUs held by all groups (budget {cfg['gpus']})")
    rates = np.array(result["trace"]["group_rps"])
    t_r = (np.arange(rates.shape[0]) + 0.5) * result["trace"]["rates_every_s"] / 60
    per_rep = result["trace"]["per_replica_rps_at_target"]
    ax[1, 0].plot(t_r, rates[:, hot] / per_rep, color="k", lw=1, ls="--", label="demand / per-replica rate at target")
    ax[1, 0].set(xlabel="minutes", ylabel="replicas", title=f"Hot group {hot}: replicas held (solid), serving (dotted)")
    ax[1, 0].legend(fontsize=7)
    names = list(pols)
    hours = [pols[n]["replica_hours"] for n in names]
    serving = [pols[n]["serving_hours"] for n in names]
    x = np.arange(len(names))
    ax[1, 1].bar(x, hours, color=[colors.get(n) for n in names], alpha=0.45, label="held")
    ax[1, 1].bar(x, serving, color=[colors.get(n) for n in names], label="serving")
    for i, n in enumerate(names):
        ax[1, 1].text(i, hours[i], f"{hours[i]:.0f}\n{100 * pols[n]['drop_rate']:.2f}% drop", ha="center", va="bottom", fontsize=8)
    ax[1, 1].set(xticks=x, xticklabels=names, ylabel="GPU-hours", title="Replica-hours (light: cold start + drain)")
    ax[1, 1].set_ylim(0, max(hours) * 1.2)
    bottom = np.zeros(rates.shape[0])
    for g in range(rates.shape[1]):
        ax[1, 2].fill_between(t_r, bottom, bottom + rates[:, g], lw=0, alpha=0.9 if g == hot else 0.5)
        bottom += rates[:, g]
    ax[1, 2].set(xlabel="minutes", ylabel="requests/s", title=f"Offered load per group (stacked; {result['trace']['requests']} requests)")
    for a in (ax[0, 0], ax[0, 1], ax[0, 2]):
        a.legend(fontsize=8)
    fig.suptitle(f"Autoscaling simulation: {cfg['gpus']} GPUs, {cfg['adapters']} adapters in {cfg['groups']} groups, "
                 f"{cfg['hours']} h, seed {result['seed']}")
    _save(fig, path)


def _with_progress(a: argparse.Namespace, total: int, desc: str, run):
    """`run(progress)` with a tqdm bar on stderr, or `run(None)` under --no-progress."""
    if a.no_progress:
        return run(None)
    from tqdm import tqdm

    with tqdm(total=total, unit="step", desc=desc, file=sys.stderr, mininterval=1.0) as bar:
        return run(bar.update)


def main(argv=None) -> int:
    a = parse_args(argv)
    extra = {"shift_ramp_s": 0.0} if a.instant_shifts else {}
    cfg = SimConfig(hours=a.hours, gpus=a.gpus, adapters=a.adapters, groups=a.groups, rps_per_gpu=a.rps_per_gpu, **extra)
    policies = a.policies.split(",")
    start = time.process_time()
    if a.sweep:
        return sweep(a, cfg, policies, start, argv)
    result = _with_progress(a, total_steps(cfg, policies), "simulating", lambda progress: compare(cfg, a.seed, policies, progress=progress))
    result["cpu_s"] = round(time.process_time() - start, 1)
    result["command"] = "python scripts/simulate_autoscaling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{cfg.hours} h, {cfg.gpus} GPUs, {cfg.adapters} adapters / {cfg.groups} groups, seed {a.seed}: "
          f"{result['trace']['requests']} requests ({result['trace']['mean_rps']} req/s mean), {len(result['trace']['bursts'])} bursts, "
          f"{result['cpu_s']} s CPU")
    print(table(result))
    for line in target_lines(result):
        print(line)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, separators=(",", ":")))
        print(f"wrote {a.json}")
    if a.plot:
        plot(result, a.plot)
        print(f"wrote {a.plot}")
    return 0


def sweep(a: argparse.Namespace, cfg: SimConfig, policies: list[str], start: float, argv=None) -> int:
    targets = [float(x) for x in a.sweep.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [a.seed]
    result = _with_progress(a, total_steps(cfg, policies) * len(targets) * len(seeds), "sweeping",
                            lambda progress: frontier(cfg, seeds, policies, targets, progress=progress))
    result["cpu_s"] = round(time.process_time() - start, 1)
    result["command"] = "python scripts/simulate_autoscaling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{cfg.hours} h, {cfg.gpus} GPUs, {cfg.adapters} adapters / {cfg.groups} groups, seeds {seeds}, targets {targets}: {result['cpu_s']} s CPU")
    print(sweep_table(result))
    if result["gaps"]:
        print(gap_table(result))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {a.json}")
    if a.plot:
        plot_frontier(result, a.plot)
        print(f"wrote {a.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
