#!/usr/bin/env python
"""Evaluate MoE routing on the held-out demo split through the real engine; write JSON, a confusion PNG
and the Markdown table for docs/routing.md.

    python scripts/eval_routing.py --json docs/routing.json --png docs/routing_confusion.png --markdown docs/routing_table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=Path("models/demo"), help="demo folder (base/, adapters/)")
    p.add_argument("--router", type=Path, default=None, help="trained router folder (default: MODELS/router)")
    p.add_argument("--n", type=int, default=150, help="held-out examples per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--png", type=Path, default=None, help="confusion matrix plot")
    p.add_argument("--markdown", type=Path, default=None, help="write the results table as Markdown")
    return p.parse_args()


def markdown(report: dict) -> str:
    table = report["table"]
    tasks = [k for k in next(iter(table.values())) if k not in ("mean", "gap_recovered")]
    lines = ["| system | " + " | ".join(tasks) + " | mean | gap recovered |", "|---|" + "---:|" * (len(tasks) + 2)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[t]:.1f}%" for t in tasks) + f" | {100 * row['mean']:.1f}% | {row['gap_recovered']:.3f} |")
    r = report["router"]
    lat = r["latency_ms"]
    lines += ["", f"Router accuracy {100 * r['accuracy']:.2f}%, ECE {r['ece']:.4f}, mean confidence {r['mean_confidence']:.3f}; "
              f"latency per request p50/p99: batch 1 {lat['batch_1']['p50']:.2f}/{lat['batch_1']['p99']:.2f} ms, "
              f"batch 32 {lat['batch_32']['p50']:.2f}/{lat['batch_32']['p99']:.2f} ms."]
    ref = report["reference_example"]
    lines += ["", f"Reference example {ref['text']!r}: confidence {ref['confidence']:.3f}, fallback={ref['fallback']}, probs {ref['probs']}, weights {ref['weights']}."]
    return "\n".join(lines) + "\n"


def plot_confusion(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = report["router"]["confusion"]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(c["matrix"], cmap="Blues")
    ax.set_xticks(range(len(c["labels"])), c["labels"])
    ax.set_yticks(range(len(c["labels"])), c["labels"])
    for i, row in enumerate(c["matrix"]):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xlabel("routed to")
    ax.set_ylabel("task")
    ax.set_title(f"router confusion (acc {100 * report['router']['accuracy']:.1f}%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    a = parse_args()
    import torch

    torch.set_num_threads(2)
    from loraplex.config.engine import EngineConfig
    from loraplex.demo.evaluation import heldout_examples
    from loraplex.experts.engine import Engine
    from loraplex.demo.routing_eval import evaluate_routing, reference_example
    from loraplex.router.router import Router

    engine = Engine.from_config(EngineConfig(base_model=str(a.models / "base"), adapter_roots=[str(a.models / "adapters")], max_slots=4, max_host_adapters=8))
    router = Router.load(a.router or a.models / "router")
    report = evaluate_routing(engine, router, heldout_examples(a.n, a.seed))
    report["reference_example"] = reference_example(router)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    if a.png:
        plot_confusion(report, a.png)
    md = markdown(report)
    if a.markdown:
        a.markdown.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
