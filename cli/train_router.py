"""Train the MoE router and save it (router.safetensors + router.json), on your own data or the demo's.

Your own adapters: one JSON object per line, {"prompt": ..., "adapter": name | null} or
{"prompt": ..., "weights": {name: w, ...}} (a soft label); null means "no adapter, the base model".
Adapter names are checked against --adapter-roots. A stratified share is held out for early stopping
and temperature calibration; report.json (accuracy, per-adapter precision/recall, ECE, expert share)
and confusion.png land next to the router (logic: loraplex.router.fitting).

    python scripts/train_router.py --data my_prompts.jsonl --adapter-roots /models/adapters --out routers/v1
    python scripts/train_router.py --data train.jsonl --test heldout.jsonl --adapter-roots A --out routers/v2

Without --data: the demo router, from the demo generator's prompts (logic: loraplex.demo.router_training).

    python scripts/train_router.py --out models/demo/router
    python scripts/train_router.py --out models/demo/router_hidden \
        --featurizer hidden_state --base-model models/demo/base
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from pathlib import Path


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    from loraplex.config.app import PolicyConfig
    from loraplex.router.featurizers import DTYPES

    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("models/demo/router"), help="output folder")
    p.add_argument("--data", type=Path, default=None, help="your labelled prompts (JSONL); omit for the demo router")
    p.add_argument("--test", type=Path, default=None, help="separate held-out JSONL to report on (with --data)")
    p.add_argument(
        "--adapter-roots",
        nargs="+",
        default=None,
        help="folders holding the adapters --data names (every name must exist there); required with --data",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each class held out (with --data)")
    p.add_argument("--patience", type=int, default=5, help="early stopping: epochs without a better held-out loss")
    p.add_argument(
        "--featurizer",
        choices=["sentence", "hidden_state"],
        default="sentence",
        help="router input: a sentence encoder (default, independent of the base model) "
        "or the base model's last hidden state",
    )
    p.add_argument(
        "--sentence-model",
        default="default",
        help="sentence-transformers folder ('default' = packaged all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--whole-prompt",
        action="store_true",
        help="sentence featurizer: embed the prompt as one text instead of per paragraph "
        "([mean, max] over blank-line separated paragraphs)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="sentence featurizer: tokens kept per paragraph (default: the encoder's max_seq_length); fewer is faster",
    )
    p.add_argument(
        "--num-layers",
        type=int,
        default=4,
        help="sentence featurizer: keep only the encoder's first N layers; 0 = all. Default 4 of MiniLM's 6: "
        "100%% held-out routing on the demo and ~1.45x faster than all 6 (docs/routing.md)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="sentence encoder dtype (auto: bf16 on CPUs with AVX512-BF16, fp16 on CUDA, else fp32)",
    )
    p.add_argument("--base-model", default="models/demo/base", help="causal LM folder for --featurizer hidden_state")
    p.add_argument("--pooling", choices=["mean", "first"], default="mean", help="hidden_state pooling")
    p.add_argument("--n-per-task", type=int, default=800, help="training prompts per task")
    p.add_argument(
        "--free-parts",
        choices=["train", "all"],
        default="train",
        help="demo router: free-phrasing parts to train on ('train', the shipped router, keeps the dev parts "
        "out, so the report scores unseen phrasings; 'all' trains on every part)",
    )
    p.add_argument("--epochs", type=int, default=40, help="passes over the training prompts")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    p.add_argument("--balance-coef", type=float, default=0.01, help="weight of the Switch load-balancing loss")
    p.add_argument("--z-coef", type=float, default=1e-3, help="weight of the router z-loss")
    policy = PolicyConfig()  # the one source of the policy defaults (config/app.py)
    p.add_argument(
        "--confidence-floor", type=float, default=policy.confidence_floor, help="below it the fallback applies"
    )
    p.add_argument(
        "--fallback",
        choices=list(typing.get_args(PolicyConfig.model_fields["fallback"].annotation)),
        default=policy.fallback,
        help="what a low-confidence request gets: the top adapter alone (flagged auto:fallback_top1), the bare base "
        "model, or the soft top-k blend (default: %(default)s)",
    )
    p.add_argument("--top-k", type=int, default=policy.top_k, help="adapters a confident request is routed to")
    p.add_argument("--seed", type=int, default=0, help="seed of the training data and the network init")
    return p.parse_args(argv)


def load_user_data(a: argparse.Namespace):
    """(train, test or None) from --data/--test, checked against the adapter roots before any model loads."""
    from loraplex.experts.adapters.store import find_adapters
    from loraplex.router.dataset import load_jsonl

    if not a.adapter_roots:
        raise SystemExit("--data needs --adapter-roots: the folders holding the adapters your data names")
    available = find_adapters(a.adapter_roots)
    return load_jsonl(a.data, available), (load_jsonl(a.test, available) if a.test else None)


def make_featurizer(a: argparse.Namespace):
    from loraplex.router.featurizers import HiddenStateFeaturizer, SentenceFeaturizer

    if a.featurizer == "hidden_state":
        return HiddenStateFeaturizer.from_path(a.base_model, a.pooling)
    return SentenceFeaturizer(
        a.sentence_model,
        dtype=a.dtype,
        paragraphs=not a.whole_prompt,
        max_length=a.max_length,
        num_layers=a.num_layers or None,
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    a = parse_args(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    import torch

    from loraplex.experts.errors import DatasetError
    from loraplex.router.policy import PolicyConfig
    from loraplex.router.training import TrainConfig

    torch.manual_seed(a.seed)
    cfg = TrainConfig(
        epochs=a.epochs, lr=a.lr, balance_coef=a.balance_coef, z_coef=a.z_coef, seed=a.seed, patience=a.patience
    )
    policy = PolicyConfig(top_k=a.top_k, confidence_floor=a.confidence_floor, fallback=a.fallback)
    if a.data is None:
        from loraplex.demo.router_training import train_demo_router

        metrics = train_demo_router(a.out, make_featurizer(a), a.n_per_task, cfg, policy, free_parts=a.free_parts)
        print(json.dumps({"out": str(a.out), **metrics}, indent=2))
        return 0
    try:
        data, test = load_user_data(a)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from loraplex.router.fitting import fit_router_on_data
    from loraplex.router.report import plot_confusion

    result = fit_router_on_data(data, make_featurizer(a), cfg, policy, a.val_fraction, test)
    result.router.save(a.out)
    (a.out / "report.json").write_text(json.dumps(result.report, indent=2))
    plot_confusion(result.report, a.out / "confusion.png")
    print(json.dumps({"out": str(a.out), **{k: v for k, v in result.report.items() if k != "confusion"}}, indent=2))
    return 0
