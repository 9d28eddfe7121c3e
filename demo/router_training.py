"""Train the demo's MoE router: demo routing prompts in, a saved ``Router`` folder out.

:func:`loraplex.router.training.train_router` trains on whatever features and targets it is given and
knows nothing about the demo. This module is the demo's side of that contract: it featurizes the
prompts of :mod:`loraplex.demo.routing_data`, trains, checks the result on held-out phrasings and saves
the folder the serving app loads (``models/demo/router``). It lives in ``demo/`` so that ``router/``
never imports demo code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from loraplex.demo.routing_data import RoutingData, routing_data
from loraplex.demo.training_loop import progress_bar
from loraplex.router.featurizers import Featurizer
from loraplex.router.network import RouterNet
from loraplex.router.policy import PolicyConfig
from loraplex.router.router import Router
from loraplex.router.training import TrainConfig, train_router

FEATURE_BATCH = 64


def featurize(featurizer: Featurizer, texts: Sequence[str], progress: bool = False) -> torch.Tensor:
    """``[len(texts), dim]`` features, encoded :data:`FEATURE_BATCH` texts at a time: the training set has
    thousands of prompts, and one encoder call over all of them would pad every prompt to the longest."""
    chunks = range(0, len(texts), FEATURE_BATCH)
    return torch.cat(
        [
            featurizer.encode(texts[i : i + FEATURE_BATCH])
            for i in progress_bar(chunks, len(chunks), "features", progress)
        ]
    )


def fit_router(
    featurizer: Featurizer, data: RoutingData, cfg: TrainConfig = TrainConfig(), progress: bool = True
) -> tuple[RouterNet, list[dict]]:
    """Featurize ``data`` and train a router network on it: ``(net, per-epoch history)``.

    Nothing is saved; the joint-training comparison uses this for its separately trained router.
    """
    return train_router(featurize(featurizer, data.texts, progress), data.targets, cfg, progress)


def heldout_metrics(net: RouterNet, featurizer: Featurizer, n_per_task: int, seed: int, progress: bool = False) -> dict:
    """Accuracy on held-out phrasings, and the mean top probability on bare messages (no instruction).

    The second number should be low (about 1 / experts): a bare message could be meant for any
    adapter, and the confidence floor only falls back when the router admits it does not know.
    """
    held = routing_data("heldout", n_per_task, seed)
    with torch.no_grad():
        logits = net.eval()(featurize(featurizer, held.texts, progress))
    labels = torch.tensor(held.labels)
    labelled = labels >= 0
    acc = float((logits[labelled].argmax(1) == labels[labelled]).float().mean())
    bare_conf = float(logits[~labelled].softmax(-1).max(-1).values.mean())
    return {"heldout_accuracy": round(acc, 4), "heldout_bare_message_confidence": round(bare_conf, 4)}


def train_demo_router(
    out: Path | str,
    featurizer: Featurizer,
    n_per_task: int = 800,
    cfg: TrainConfig = TrainConfig(),
    policy: PolicyConfig | None = None,
    progress: bool = True,
) -> dict:
    """Train a router over the demo adapters on ``featurizer`` features, check it on held-out phrasings
    (``max(50, n_per_task // 4)`` per task, another seed) and save it to ``out``; returns the metrics
    recorded in ``router.json``."""
    train = routing_data("train", n_per_task, cfg.seed)
    net, history = fit_router(featurizer, train, cfg, progress)
    held = heldout_metrics(net, featurizer, max(50, n_per_task // 4), cfg.seed + 100, progress)
    metrics = {"train": history[-1], **held, "n_train": len(train.texts)}
    Router(featurizer, net, train.experts, policy or PolicyConfig(), metrics).save(Path(out))
    return metrics
