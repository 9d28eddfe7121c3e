"""Router training data from the demo generator: prompt text -> target distribution over adapters.

Labelled rows are the task prompts (instruction + message) with a one-hot target on the task's
adapter. Bare messages (no instruction: any adapter could be meant) get a uniform target, so the
router learns low confidence exactly where a guess would be arbitrary.
"""

from __future__ import annotations

import random

import torch

from loraplex.demo.data import TASKS, make_examples
from loraplex.router.dataset import RoutingData


def routing_data(
    split: str, n_per_task: int, seed: int, bare_fraction: float = 0.25, experts: tuple[str, ...] = TASKS
) -> RoutingData:
    """``n_per_task`` task prompts per expert plus ``bare_fraction`` as many bare messages per expert, from
    the demo generator's ``split`` (``"train"`` or ``"heldout"``: disjoint phrasings, names and products)."""
    texts, labels = [], []
    for i, task in enumerate(experts):
        for ex in make_examples(task, n_per_task, seed, split):
            texts.append(ex.prompt)
            labels.append(i)
    rng = random.Random(seed)
    bare = [
        ex.message
        for task in experts
        for ex in make_examples(task, max(1, int(n_per_task * bare_fraction)), seed + 1, split)
    ]
    rng.shuffle(bare)
    texts += bare
    labels += [-1] * len(bare)
    n = len(experts)
    targets = torch.full((len(texts), n), 1.0 / n)
    for r, lab in enumerate(labels):
        if lab >= 0:
            targets[r] = 0.0
            targets[r, lab] = 1.0
    return RoutingData(texts, targets, list(experts))  # .labels: the task index, -1 for bare messages
