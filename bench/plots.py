"""PNG plots of the benchmark and soak reports, drawn from the report dicts the scripts write as JSON.

Only reads report fields, so a plot can be redrawn from a saved JSON. matplotlib is imported inside each
function with the Agg backend: it is a dev dependency and the machines running these have no display.
"""

from __future__ import annotations

import math
from pathlib import Path

from loraplex.bench.systems import LABELS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_engine(report: dict, path: Path) -> None:
    """Engine benchmark: tokens/s per config (with the ratio to base_only) and the adapters-in-batch sweep."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    res = dict(report["results"])
    first = report["setup"].get("dtype", "float32")
    for dt, other in (report.get("by_dtype") or {}).items():
        if dt != first:  # the other dtypes' main configs, labelled with their dtype
            res.update({f"{k} [{dt}]": v for k, v in other["results"].items()})
    names = list(res)
    ax1.barh(
        names,
        [res[n]["tok_per_s"] for n in names],
        color=["#888" if not n.startswith("loraplex") else "#2a7" for n in names],
    )
    for i, n in enumerate(names):
        ax1.text(res[n]["tok_per_s"], i, f" {res[n]['vs_base']:.2f}x", va="center")
    s = report["setup"]
    ax1.set_xlabel("generated tokens / s (higher is better)")
    ax1.set_title(
        f"batch {s['batch']}, {s['adapters']} adapters r{s['rank']}, "
        f"hidden {s['hidden']}x{s['layers']}L, {s['threads']} threads"
    )
    if report["sweep"]:
        xs = [r["adapters_in_batch"] for r in report["sweep"]]
        for k in ("peft_mixed_batch", "loraplex_distinct", "loraplex_top2_blend"):
            if k in report["sweep"][0]:
                ax2.plot(xs, [r[k] for r in report["sweep"]], marker="o", label=k)
        ax2.axhline(1.0, color="#888", ls="--", label="base_only")
        ax2.set_xscale("log", base=2)
        ax2.set_xlabel("distinct adapters in batch (batch = max(32, n))")
        ax2.set_ylabel("throughput vs base_only")
        ax2.legend()
        ax2.set_title("adapters-in-batch sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_serving(report: dict, path: Path) -> None:
    """Serving benchmark: latency vs offered rate (with the SLO) and achieved vs offered (with sustainable rates)."""
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    colors = {
        "loraplex": "#2a7",
        "baseline": "#c44",
        "vllm-server": "#36c",
        "loraplex-vllm": "#e90",
        "loraplex-vllm-mix": "#a5c",
    }
    summ = report["summary"]
    closed = report.get("closed_loop") or []
    if closed:
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.8))
        _closed_bars(ax3, closed, colors)
    else:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for s in report["setup"]["systems"]:
        xs = [x for x in report["steps"] if x["system"] == s]
        if not xs:
            continue
        r = [x["offered_rps"] for x in xs]
        ax1.plot(r, [x["p99_ms"] for x in xs], marker="o", color=colors[s], label=f"{LABELS[s]} p99")
        ax1.plot(r, [x["p50_ms"] for x in xs], marker=".", ls="--", color=colors[s], label=f"{LABELS[s]} p50")
        ax2.plot(r, [x["achieved_rps"] for x in xs], marker="o", color=colors[s], label=LABELS[s])
        sus = summ.get(s, {}).get("sustainable_rps")
        if sus:
            ax2.axvline(sus, color=colors[s], ls=":", lw=1)
    slo = summ.get("slo_p99_ms")
    if slo and not math.isnan(slo):
        ax1.axhline(slo, color="#555", ls=":", label=f"SLO p99 {slo:.0f} ms")
    all_r = [x["offered_rps"] for x in report["steps"]] or [1]
    ax2.plot(
        [min(all_r), max(all_r)], [min(all_r), max(all_r)], color="#999", ls="--", lw=1, label="achieved = offered"
    )
    rates = sorted(set(all_r))
    labelled = rates[:: max(1, len(rates) // 9)]  # a fine ladder would overprint its labels
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (req/s, Poisson)")
        ax.set_xticks(labelled, [f"{r:.3g}" for r in labelled])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax1.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax2.set_yticks(labelled, [f"{r:.3g}" for r in labelled])
    ax1.set_ylabel("latency (ms)")
    ax1.legend(fontsize=7)
    ax2.set_ylabel("achieved (completed req/s)")
    ax2.legend(fontsize=7)
    st = report["setup"]
    ratio = " / ".join(
        f"{s} {summ[s]['sustainable_ratio']}x {summ[s]['reference']}"
        for s in st["systems"]
        if s in summ and summ[s].get("sustainable_ratio") is not None
    )
    versus = summ.get("native_vs_vllm_server") or {}
    if versus.get("sustainable_ratio") is not None:
        ratio = f"loraplex {versus['sustainable_ratio']}x vllm-server" + (f" / {ratio}" if ratio else "")
    fig.suptitle(
        f"{st.get('dtype', 'float32')}, {st['adapters']} adapters r{st['rank']}, Zipf s={st['zipf_s']}, "
        f"hidden {st['model']['hidden']}x{st['model']['layers']}L, "
        f"{st['max_tokens']} new tokens, 1 replica x {st['replica_cpus']} CPU each; sustainable: {ratio}",
        fontsize=9,
    )
    ax1.set_title("latency vs offered load")
    ax2.set_title("throughput: achieved vs offered (dotted: sustainable)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _closed_bars(ax, closed: list[dict], colors: dict) -> None:
    """Closed-loop runs (N requests in flight): completed req/s per shape, one bar per system."""
    shapes = sorted({f"{x['shape']}:{x['concurrency']}" for x in closed})
    systems = sorted({x["system"] for x in closed})
    width = 0.8 / max(1, len(systems))
    for j, s in enumerate(systems):
        vals = [
            next((x["achieved_rps"] for x in closed if x["system"] == s and f"{x['shape']}:{x['concurrency']}" == k), 0)
            for k in shapes
        ]
        xs = [i + j * width for i in range(len(shapes))]
        ax.bar(xs, vals, width, color=colors.get(s, "#888"), label=LABELS.get(s, s))
        for x, v in zip(xs, vals):
            ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], [f"{k} in flight" for k in shapes])
    ax.set_ylabel("completed req/s")
    ax.set_title("closed loop (vllm bench serve --max-concurrency)")
    ax.legend(fontsize=7)


def plot_soak(report: dict, path: Path) -> None:
    """Soak: total RSS of the Ray/Serve processes over time and latency p50/p99 per window."""
    plt = _pyplot()
    rss, windows = report["rss_total_mb"], report["windows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([t for t, _ in rss], [m for _, m in rss])
    ax1.set_xlabel("s")
    ax1.set_ylabel("RSS of all Ray/Serve processes (MiB)")
    ax2.plot([w["t"] for w in windows], [w["p50"] for w in windows], label="p50")
    ax2.plot([w["t"] for w in windows], [w["p99"] for w in windows], label="p99")
    ax2.set_xlabel("s")
    ax2.set_ylabel("latency (s)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_adapters(report: dict, path: Path) -> None:
    """Adapters at scale: latency of the cold run against the all-resident run, load and step times, the hottest
    adapter's split across replicas."""
    plt = _pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    phases = report["phases"]
    names = list(phases)
    for i, q in enumerate(("p50_ms", "p99_ms")):
        vals = [phases[n]["client"].get(q) or 0 for n in names]
        ax1.bar([j + 0.38 * i for j in range(len(names))], vals, width=0.38, label=q.replace("_ms", ""))
    ax1.set_xticks([j + 0.19 for j in range(len(names))], names)
    ax1.set_ylabel("end-to-end latency, ms")
    ax1.set_title(f"{report['config']['rate']} req/s Poisson, Zipf({report['config']['zipf']})")
    ax1.legend()
    cold = phases.get("cold", {}).get("replicas")
    if cold:
        bars = {
            "disk->host p50": cold["disk_to_host_ms"]["p50"],
            "disk->host p99": cold["disk_to_host_ms"]["p99"],
            "host->slot p50": cold["host_to_slot_ms"]["p50"],
            "host->slot p99": cold["host_to_slot_ms"]["p99"],
            "wait p50": cold["request_wait_for_load_ms"]["p50"],
            "wait p99": cold["request_wait_for_load_ms"]["p99"],
            "step, load in flight": cold["decode_step"]["loading_vs_arrival"]["loading_ms"],
            "step, warm arrival": cold["decode_step"]["loading_vs_arrival"]["arrival_ms"],
            "step, quiet": cold["decode_step"]["loading_vs_idle"]["idle_ms"],
        }
        ax2.barh(list(bars), [v or 0 for v in bars.values()], color="#2a7")
        ax2.set_xlabel("ms")
        ax2.set_title("cold run: load times and decode-step time")
        split = cold["hottest"]["requests_per_replica"]
        ax3.bar([r[:8] for r in split], list(split.values()), color="#27a")
        ax3.set_title(f"hottest adapter {cold['hottest']['adapter']}: requests per replica")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_fit(report: dict, path: Path) -> None:
    """A composition fit: held-out loss per epoch (and the weights), and every candidate on the held-out data."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    h = report["history"]
    xs = [r["epoch"] for r in h]
    ax1.plot(xs, [r["train_loss"] for r in h], label="train loss")
    ax1.plot(xs, [r["heldout_loss"] for r in h], label="held-out loss")
    ax1.axvline(report["best_epoch"], color="#888", ls="--", label="best epoch")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy per completion token")
    axw = ax1.twinx()
    for a in report["adapters"]:
        axw.plot(xs, [r["weights"][a] for r in h], ls=":", label=f"w[{a}]")
    axw.set_ylabel("weight")
    ax1.legend(loc="upper left")
    axw.legend(loc="upper right")
    ax1.set_title(f"{report['space']} blend of {', '.join(report['adapters'])}")
    names = [r["candidate"] for r in report["table"]]
    ax2.barh(names, [r["heldout_exact_match"] for r in report["table"]], color="#2a7")
    for i, r in enumerate(report["table"]):
        ax2.text(r["heldout_exact_match"], i, f" {r['heldout_exact_match']:.2f} (loss {r['heldout_loss']:.3f})")
    ax2.set_xlabel("held-out exact match (greedy, through the engine)")
    ax2.set_xlim(0, 1.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
