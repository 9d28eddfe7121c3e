"""Train the demo's MoE router through the same path a user's own data takes.

The demo writes its routing prompts (`loraplex.demo.routing_data`: task prompts with one-hot targets,
bare customer messages with uniform ones) as a JSONL file next to the router, reads it back with
`router.dataset.load_jsonl` and trains it with `router.fitting.fit_router_on_data`, exactly as
`scripts/train_router.py --data` would, scoring on the generator's held-out phrasings. It lives in
`demo/` so that `router/` never imports demo code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from loraplex.demo.data import TASKS
from loraplex.demo.routing_data import routing_data
from loraplex.router.dataset import RoutingData, load_jsonl
from loraplex.router.featurizers import Featurizer
from loraplex.router.fitting import featurize, fit_router_on_data
from loraplex.router.network import RouterNet
from loraplex.router.policy import PolicyConfig
from loraplex.router.training import TrainConfig, train_router

TRAIN_FILE = "routing_train.jsonl"


def fit_router(
    featurizer: Featurizer, data: RoutingData, cfg: TrainConfig = TrainConfig(), progress: bool = True
) -> tuple[RouterNet, list[dict]]:
    """Featurize `data` and train a router network on all of it: `(net, per-epoch history)`, nothing saved
    (the joint-training comparison's separately trained router)."""
    return train_router(featurize(featurizer, data.texts, progress), data.targets, cfg, progress)


def train_demo_router(
    out: Path | str,
    featurizer: Featurizer,
    n_per_task: int = 800,
    cfg: TrainConfig = TrainConfig(),
    policy: PolicyConfig | None = None,
    progress: bool = True,
    free_parts: str = "train",
) -> dict:
    """Write the demo's routing data to `out/routing_train.jsonl`, train on it like any user data (early
    stopping and calibration on a held-out share), report on held-out phrasings
    (`max(50, n_per_task // 4)` per task, another seed) and save the router, `report.json` and the metrics.
    `free_parts="train"` keeps the free-phrasing dev parts out of training, so the report scores unseen
    phrasings (the shipped router); `"all"` learns them too and its report says so."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    routing_data("train", n_per_task, cfg.seed, free_split=free_parts).write_jsonl(out / TRAIN_FILE)
    data = load_jsonl(out / TRAIN_FILE, available=TASKS)
    held = routing_data("heldout", max(50, n_per_task // 4), cfg.seed + 100)
    result = fit_router_on_data(data, featurizer, cfg, policy, val_fraction=0.2, test=held, progress=progress)
    bare = [t for t, label in zip(held.texts, held.labels) if label < 0]
    with torch.no_grad():
        bare_conf = float(result.router.logits(bare).softmax(-1).max(-1).values.mean())
    metrics = {
        **result.router.metrics,
        "heldout_accuracy": result.report["accuracy"],
        "heldout_bare_message_confidence": round(bare_conf, 4),
        "calibration_temperature": result.report["calibration_temperature"],
        "free_parts": free_parts,  # "all": the held-out free phrasings' parts were trained on too
    }
    result.router.metrics = metrics
    result.router.save(out)
    (out / "report.json").write_text(json.dumps(result.report, indent=2))
    return metrics
