#!/usr/bin/env python
"""Train the MoE router and the three LoRA experts jointly on the mixed multi-task demo data, then
compare against the separately trained pipeline (demo adapters + a separately trained router).

Joint: frozen demo base, three fresh LoRA experts (the demo's LoraConfig) and a RouterNet over the
base model's mean-pooled last hidden state, trained together with soft top-k routing (gradients reach
the router and the selected experts). Separate: the demo's per-task adapters + a hidden-state router
trained with loraplex.router.training.train_router (same featurizer kind). Both are scored by exact match on
the held-out split through the real Engine (moe top-1, moe top-2 soft, and the task-label oracle).
Logic: loraplex.demo.joint_training (the trainer) and loraplex.demo.joint_comparison (this comparison).

    python scripts/train_joint.py --models models/demo --out models/joint --json docs/joint_training.json
    python scripts/train_joint.py --router-ce 1.0 --out models/joint_ce --json docs/joint_training_ce.json

Writes OUT/adapters/{intent,sentiment,entities} (PEFT folders), OUT/router (Router.save),
OUT/separate_router, the JSON report, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# On a shared CPU box, OpenMP's default spin-waiting makes every extra thread fight the other jobs
# (measured: 2 spinning threads were ~5x slower per step than 1); must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from loraplex.demo.build import DemoConfig
    from loraplex.demo.joint_training import joint_lora_lr

    demo = DemoConfig()
    default_steps = sum(demo.lora_steps.values())
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models", type=Path, default=Path("models/demo"), help="built demo folder (base/, adapters/, manifest.json)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("models/joint"), help="output folder for the joint adapters and router"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="joint optimisation steps (default: the demo manifest's adapter steps summed, "
        f"{default_steps} for DemoConfig, i.e. the same number of training examples per task as the "
        "separately trained adapters)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help=f"mixed-task examples per step (default: the demo's lora_batch, {demo.lora_batch})",
    )
    p.add_argument(
        "--top-k", type=int, default=2, help="experts blended per example during training (soft, renormalised)"
    )
    p.add_argument(
        "--router-ce",
        type=float,
        default=0.0,
        help="weight of an extra router CE on the task label (0 = off: the router learns from the LM loss only)",
    )
    p.add_argument("--balance-coef", type=float, default=0.01, help="weight of the Switch load-balancing loss")
    p.add_argument("--z-coef", type=float, default=1e-3, help="weight of the router z-loss")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"LoRA learning rate (default: the largest of the demo's per-task lora_lr, {joint_lora_lr(demo.lora_lr)})",
    )
    p.add_argument("--router-lr", type=float, default=2e-3, help="router learning rate")
    p.add_argument(
        "--init",
        choices=["fresh", "demo"],
        default="fresh",
        help="fresh PEFT init (fair comparison) or start from the demo adapters",
    )
    p.add_argument("--n", type=int, default=100, help="held-out examples per task for the evaluation")
    p.add_argument("--max-tokens", type=int, default=40, help="generation budget per request")
    p.add_argument(
        "--sep-n-per-task",
        type=int,
        default=800,
        help="separate router: training prompts per task (scripts/train_router.py default)",
    )
    p.add_argument(
        "--sep-epochs", type=int, default=40, help="separate router: epochs (scripts/train_router.py default)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the joint run, the separate router and the held-out data"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest on a shared 2-core box; use 2+ on an idle machine)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    p.add_argument("--markdown", type=Path, default=None, help="also write the Markdown table here")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    from loraplex.demo.build import demo_is_built
    from loraplex.demo.joint_comparison import compare, joint_config_from_manifest, render_markdown
    from loraplex.router.training import TrainConfig

    if not demo_is_built(a.models):
        print(f"no built demo at {a.models}: run `make demo` (scripts/build_demo.py) first", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    hf_logging.disable_progress_bar()
    manifest = json.loads((a.models / "manifest.json").read_text())
    cfg = joint_config_from_manifest(
        manifest,
        steps=a.steps,
        batch=a.batch,
        lora_lr=a.lr,
        top_k=a.top_k,
        router_lr=a.router_lr,
        balance_coef=a.balance_coef,
        z_coef=a.z_coef,
        router_ce_coef=a.router_ce,
        init=a.init,
        seed=a.seed,
    )
    report = compare(
        a.models,
        a.out,
        cfg,
        TrainConfig(epochs=a.sep_epochs, seed=a.seed),
        a.sep_n_per_task,
        a.n,
        a.max_tokens,
        progress=not a.no_progress,
    )
    md = render_markdown(report)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2))
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(md)
    print(md)
    joint_router = {k: report["joint"]["router"][k] for k in ("accuracy", "accuracy_best_permutation", "share")}
    summary = {"verdict": report["verdict"], "joint_router": joint_router, "total_script_s": report["total_script_s"]}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
