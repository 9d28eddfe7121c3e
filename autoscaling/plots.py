"""PNG figures of `compare` and `frontier` results (docs/autoscaling_sim.png, docs/autoscaling_frontier.png).

matplotlib is imported inside the functions (with the non-interactive Agg backend): the simulation itself
needs only numpy, and a run without --plot never loads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = {
    "loraplex": "tab:blue",
    "loraplex_double_delay": "tab:cyan",
    "ray_default": "tab:orange",
    "static": "tab:gray",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(result: dict, path: Path) -> None:
    """p99 against GPU-h, one panel per seed, one line per policy (points labelled target / drop %, hollow when
    dominated by another target of the same policy); the
    ray_default reference point, the two target corners (30 % fewer GPU-h, half the p99) and where each other
    policy's line crosses the reference's p99 and GPU-h."""
    plt = _pyplot()
    colors = COLORS
    seeds = list(result["points"])
    fig, axes = plt.subplots(1, len(seeds), figsize=(6.5 * len(seeds), 5.5), squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        for name, points in result["points"][seed].items():
            xs, ys = [r["replica_hours"] for r in points], [r["p99_s"] for r in points]
            ax.plot(xs, ys, "o-", color=colors.get(name), label=name)
            dom = [r for r in points if r["dominated"]]
            ax.plot(
                [r["replica_hours"] for r in dom], [r["p99_s"] for r in dom], "o", mfc="white", color=colors.get(name)
            )
            for r in points:
                ax.annotate(
                    f"{r['target_load']:g} / {100 * r['drop_rate']:.1f}%",
                    (r["replica_hours"], r["p99_s"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=colors.get(name),
                )
        ref = next(
            (
                r
                for r in result["points"][seed].get("ray_default", [])
                if r["target_load"] == result["reference_target"]
            ),
            None,
        )
        if ref is not None:
            h, p = ref["replica_hours"], ref["p99_s"]
            ax.plot(
                [h], [p], "*", ms=14, color="tab:orange", mec="k", label=f"ray_default @ {result['reference_target']:g}"
            )
            ax.plot([0.7 * h, h], [p, 0.5 * p], "kx", ms=9, mew=2, label="target: -30 % GPU-h or 0.5x p99")
            ax.axhline(p, color="k", lw=0.6, ls=":")
            ax.axvline(h, color="k", lw=0.6, ls=":")
            for name, per_ref in result["gaps"].get(seed, {}).items():
                g = next((x for x in per_ref if x["ref_target_load"] == result["reference_target"]), None)
                at = [x for x in ((g or {}).get("at_ref_p99"), (g or {}).get("at_ref_hours")) if x]
                ax.plot(
                    [x.get("replica_hours", h) for x in at],
                    [x.get("p99_s", p) for x in at],
                    "D",
                    ms=6,
                    mfc="none",
                    ls="none",
                    color=colors.get(name),
                    label=f"{name} at that p99 / GPU-h (interpolated)",
                )
        ax.set(xlabel="GPU-hours (replica-hours)", ylabel="p99 latency s", title=f"seed {seed}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    cfg = result["config"]
    fig.suptitle(
        f"p99 vs replica-hours over the per-replica target (labels: target / drop %); {cfg['gpus']} GPUs, "
        f"{cfg['adapters']} adapters in {cfg['groups']} groups, {cfg['hours']} h"
    )
    _save(fig, path)


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_compare(result: dict, path: Path) -> None:
    """Six panels of a `compare` result: latency CDF, p99 per 5-minute arrival window, GPUs held by all groups, the
    hot group's replicas against its demand, replica-hours per policy (light: cold start + drain), offered load."""
    plt = _pyplot()
    pols = result["policies"]
    colors = COLORS
    hot = result["trace"]["hot_group"]
    fig, ax = plt.subplots(2, 3, figsize=(17, 9))
    for name, r in pols.items():
        q = r["latency_quantiles"]
        xs = [q[k] for k in q]
        ys = [float(k) / 100 for k in q]
        ax[0, 0].plot(xs, ys, label=name, color=colors.get(name))
        w = r["p99_window"]
        ax[0, 1].plot(
            np.array(w["t_s"]) / 60,
            [np.nan if v is None else v for v in w["p99_s"]],
            label=name,
            color=colors.get(name),
        )
        s = r["series"]
        t_min = np.array(s["t_s"]) / 60
        ax[0, 2].plot(t_min, s["total_replicas"], label=name, color=colors.get(name))
        ax[1, 0].plot(t_min, [row[hot] for row in s["replicas"]], label=f"{name} (held)", color=colors.get(name))
        ax[1, 0].plot(t_min, [row[hot] for row in s["ready"]], ls=":", color=colors.get(name))
    ax[0, 0].set(
        xscale="log",
        xlabel="latency s (log)",
        ylabel="fraction of completed requests",
        title="Latency CDF, completed requests",
    )
    ax[0, 1].set(
        xlabel="minutes",
        ylabel="p99 s",
        title=f"p99 latency per {int(pols[next(iter(pols))]['p99_window']['window_s'] // 60)}-min arrival window",
    )
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
        ax[1, 1].text(
            i, hours[i], f"{hours[i]:.0f}\n{100 * pols[n]['drop_rate']:.2f}% drop", ha="center", va="bottom", fontsize=8
        )
    ax[1, 1].set(xticks=x, xticklabels=names, ylabel="GPU-hours", title="Replica-hours (light: cold start + drain)")
    ax[1, 1].set_ylim(0, max(hours) * 1.2)
    bottom = np.zeros(rates.shape[0])
    for g in range(rates.shape[1]):
        ax[1, 2].fill_between(t_r, bottom, bottom + rates[:, g], lw=0, alpha=0.9 if g == hot else 0.5)
        bottom += rates[:, g]
    ax[1, 2].set(
        xlabel="minutes",
        ylabel="requests/s",
        title=f"Offered load per group (stacked; {result['trace']['requests']} requests)",
    )
    for a in (ax[0, 0], ax[0, 1], ax[0, 2]):
        a.legend(fontsize=8)
    fig.suptitle(
        f"Autoscaling simulation: {cfg['gpus']} GPUs, {cfg['adapters']} adapters in {cfg['groups']} groups, "
        f"{cfg['hours']} h, seed {result['seed']}"
    )
    _save(fig, path)
