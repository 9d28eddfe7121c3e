#!/usr/bin/env python
"""Compare expert-group autoscaling policies in a seeded simulation of a large multi-LoRA deployment.

Policies: `loraplex` (experts/autoscaling_policy.py's desired_replicas + share_budget, Serve's own delays
off as deployments/app.py configures it, so only the policy's hysteresis acts), `loraplex_double_delay`
(the earlier wiring: Serve's delay logic on top of the policy's), `ray_default` (Ray Serve's ongoing-requests policy,
upscale 30 s / downscale 600 s, FCFS on the GPU cap) and `static` (GPUs split once by initial demand).
No Ray is started: see experts/autoscaling_sim.py for the model and docs/autoscaling.md for results.

    python scripts/simulate_autoscaling.py --json docs/autoscaling_sim.json --plot docs/autoscaling_sim.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experts.autoscaling_sim import POLICIES, SimConfig, compare, total_steps  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    d = SimConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None, help="write the full results (summary, series, config) here")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG here (latency CDF, p99 over time, replicas, replica-hours)")
    p.add_argument("--hours", type=float, default=d.hours, help=f"simulated hours (default {d.hours})")
    p.add_argument("--gpus", type=int, default=d.gpus, help=f"GPU budget = most replicas at once (default {d.gpus})")
    p.add_argument("--adapters", type=int, default=d.adapters, help=f"LoRA adapters (default {d.adapters})")
    p.add_argument("--groups", type=int, default=d.groups, help=f"expert groups (default {d.groups})")
    p.add_argument("--seed", type=int, default=0, help="seed of the traffic and cold starts (default 0)")
    p.add_argument("--rps-per-gpu", type=float, default=d.rps_per_gpu, help=f"mean arrival rate per budget GPU (default {d.rps_per_gpu})")
    p.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated subset of {','.join(POLICIES)}")
    p.add_argument("--instant-shifts", action="store_true", help="popularity rotations switch at once instead of over 5 minutes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    bad = [x for x in a.policies.split(",") if x not in POLICIES]
    if bad:
        p.error(f"unknown policies {bad}; choose from {list(POLICIES)}")
    return a


def table(result: dict) -> str:
    rows = [("policy", "p50 s", "p99 s", "dropped", "drop %", "GPU-h", "serving GPU-h", "mean GPUs", "peak", "starts")]
    for name, r in result["policies"].items():
        rows.append((name, f"{r['p50_s']:.2f}", f"{r['p99_s']:.2f}", str(r["dropped"]), f"{100 * r['drop_rate']:.2f}",
                     f"{r['replica_hours']:.1f}", f"{r['serving_hours']:.1f}", f"{r['mean_gpus']:.1f}", str(r["peak_gpus"]), str(r["replica_starts"])))
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (x + 2) for x in w) + "|")
    return "\n".join(lines)


def target_lines(result: dict) -> list[str]:
    out = []
    for name, t in result.get("targets", {}).items():
        out.append(f"{name} vs ray_default: p99 x{t['p99_ratio']}, replica-hours x{t['replica_hours_ratio']}, "
                   f"drops not worse: {t['drops_not_worse']} -> target {'MET' if t['met'] else 'NOT met'} ({t['rule']})")
    return out


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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    a = parse_args(argv)
    extra = {"shift_ramp_s": 0.0} if a.instant_shifts else {}
    cfg = SimConfig(hours=a.hours, gpus=a.gpus, adapters=a.adapters, groups=a.groups, rps_per_gpu=a.rps_per_gpu, **extra)
    policies = a.policies.split(",")
    start = time.process_time()
    if a.no_progress:
        result = compare(cfg, a.seed, policies)
    else:
        from tqdm import tqdm

        with tqdm(total=total_steps(cfg, policies), unit="step", desc="simulating", file=sys.stderr, mininterval=1.0) as bar:
            result = compare(cfg, a.seed, policies, progress=bar.update)
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


if __name__ == "__main__":
    raise SystemExit(main())
