#!/usr/bin/env python
"""Evaluate MoE routing: on your own held-out JSONL (--data), or on the demo's held-out split through the
real engine (the default); write JSON and a confusion PNG.

Your data (logic: loraplex.router.evaluation): one {"prompt", "adapter"} per line (an optional "answer"
scores the served answers of the routed and the labelled adapter, with --base-model). With
--adapter-roots, the adapters' routing_examples.jsonl files form the prototype head, as the ingress
serves it; the report shows accuracy per adapter, ECE, fallback rate, the deciding head and batch-1
routing latency.

    python scripts/eval_routing.py --data heldout.jsonl --router routers/v1 --adapter-roots /models/adapters \
        --json eval.json --png confusion.png

The demo (logic: loraplex.demo.routing_eval):

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
    p.add_argument("--data", type=Path, default=None, help="your held-out JSONL ({prompt, adapter[, answer]})")
    p.add_argument(
        "--adapter-roots",
        nargs="+",
        default=None,
        help="with --data: adapter roots; their routing_examples.jsonl files make the prototype head",
    )
    p.add_argument("--no-examples", action="store_true", help="with --data: the trained head alone (a 'before')")
    p.add_argument(
        "--max-examples", type=int, default=None, help="with --data: use only the first N routing examples per adapter"
    )
    p.add_argument("--base-model", default=None, help="with --data and answers: run the engine on this base model")
    p.add_argument("--latency-n", type=int, default=100, help="batch-1 routing calls timed")
    p.add_argument(
        "--json", type=Path, required=True, help="write the full report (systems table, router metrics) here"
    )
    p.add_argument("--png", type=Path, default=None, help="also plot the router's confusion matrix here")
    p.add_argument("--markdown", type=Path, default=None, help="also write the results table as Markdown here")
    return p.parse_args(argv)


def run_on_data(a: argparse.Namespace) -> dict:
    import torch

    from loraplex.experts.adapters.routing_examples import read_examples
    from loraplex.experts.adapters.store import adapter_folder, find_adapters
    from loraplex.router.dataset import load_jsonl
    from loraplex.router.evaluation import evaluate
    from loraplex.router.policy import BASE
    from loraplex.router.prototypes import ExampleBank
    from loraplex.router.router import Router

    torch.set_num_threads(2)
    router = Router.load(a.router or a.models / "router")
    roots = a.adapter_roots or []
    data = load_jsonl(a.data, find_adapters(roots) if roots else None)
    head = None
    if roots and not a.no_examples:
        served = find_adapters(roots)
        bank = ExampleBank()
        for name in served:
            prompts = read_examples(adapter_folder(roots, name))[: a.max_examples]
            if prompts:
                bank.set(name, router.featurizer.encode(prompts))
        head = router.prototype_head(bank, [e for e in router.experts if e != BASE and e not in served])
    answers = [json.loads(line).get("answer") for line in a.data.read_text().splitlines() if line.strip()]
    generate = None
    if a.base_model and any(x is not None for x in answers):
        generate = engine_generate(a.base_model, roots)
    if len(answers) != len(data.texts):  # duplicates were dropped: answers no longer line up
        answers = None
    report = evaluate(router, data, head, a.latency_n, answers, generate)
    report["prototype_classes"] = head.counts if head is not None else {}
    return report


def engine_generate(base_model: str, roots: list[str]):
    from loraplex.config.engine import EngineConfig
    from loraplex.experts.engine import Engine
    from loraplex.experts.request import Request

    engine = Engine.from_config(
        EngineConfig(base_model=base_model, adapter_roots=roots, max_slots=4, max_host_adapters=16)
    )

    def generate(prompts, compositions):
        out = []
        for i in range(0, len(prompts), 16):
            reqs = [
                Request.from_json(p, c, max_tokens=24, temperature=0.0)
                for p, c in zip(prompts[i : i + 16], compositions[i : i + 16])
            ]
            out += [r.text for r in engine.generate(reqs)]
        return out

    return generate


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.data is not None:
        from loraplex.router.report import plot_confusion as plot

        report = run_on_data(a)
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2))
        if a.png:
            plot(report, a.png)
        keys = ("accuracy", "served_top1_accuracy", "per_adapter_accuracy", "ece", "fallback_rate", "head_share")
        print(json.dumps({k: report[k] for k in keys + ("latency_ms_batch1", "prototype_classes")}, indent=2))
        if "answers" in report:
            print(json.dumps(report["answers"]))
        return 0
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
