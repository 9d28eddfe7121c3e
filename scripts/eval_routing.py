#!/usr/bin/env python
"""Evaluate MoE routing on the held-out demo split through the real engine; write JSON, a confusion PNG
and the Markdown table for docs/routing.md (logic: loraplex.demo.routing_eval).

    python scripts/eval_routing.py --json docs/routing.json --png docs/routing_confusion.png \
        --markdown docs/routing_table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=Path("models/demo"), help="built demo folder (base/, adapters/)")
    p.add_argument("--router", type=Path, default=None, help="trained router folder (default: MODELS/router)")
    p.add_argument("--n", type=int, default=150, help="held-out examples per task")
    p.add_argument("--seed", type=int, default=0, help="held-out data seed")
    p.add_argument(
        "--json", type=Path, required=True, help="write the full report (systems table, router metrics) here"
    )
    p.add_argument("--png", type=Path, default=None, help="also plot the router's confusion matrix here")
    p.add_argument("--markdown", type=Path, default=None, help="also write the results table as Markdown here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    from loraplex.config.engine import EngineConfig
    from loraplex.demo.evaluation import heldout_examples
    from loraplex.demo.routing_eval import evaluate_routing, plot_confusion, reference_example, render_markdown
    from loraplex.experts.engine import Engine
    from loraplex.router.router import Router

    torch.set_num_threads(2)
    engine = Engine.from_config(
        EngineConfig(
            base_model=str(a.models / "base"),
            adapter_roots=[str(a.models / "adapters")],
            max_slots=4,
            max_host_adapters=8,
        )
    )
    router = Router.load(a.router or a.models / "router")
    report = evaluate_routing(engine, router, heldout_examples(a.n, a.seed))
    report["reference_example"] = reference_example(router)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2))
    if a.png:
        plot_confusion(report, a.png)
    md = render_markdown(report)
    if a.markdown:
        a.markdown.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
