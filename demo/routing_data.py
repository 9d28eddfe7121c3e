"""Router training data from the demo generator: prompt text -> target distribution over adapters.

Labelled rows are task requests with a one-hot target on the task's adapter: the prompt contract's
templates and, for ``free_share`` of them, free phrasings (:mod:`loraplex.demo.phrasing`, routed on the
text the gateway routes on: a completion's prompt, a chat's system + user turns). Bare messages (no
instruction: any adapter could be meant) get a uniform target, so the router learns low confidence
exactly where a guess would be arbitrary.
"""

from __future__ import annotations

import random

import torch

from loraplex.demo.data import TASKS, make_examples
from loraplex.demo.phrasing import make_free_examples
from loraplex.router.dataset import RoutingData

FREE_SPLIT = {"train": "train", "heldout": "dev"}  # the phrasing split paired with each template split


def routing_data(
    split: str,
    n_per_task: int,
    seed: int,
    bare_fraction: float = 0.25,
    experts: tuple[str, ...] = TASKS,
    free_share: float = 0.6,
    free_split: str | None = None,
) -> RoutingData:
    """``n_per_task`` requests per expert (``free_share`` of them free phrasings) plus ``bare_fraction`` as
    many bare messages per expert, from the demo generator's ``split`` (``"train"``, or ``"heldout"`` with
    the phrasing ``dev`` split: disjoint phrasings, parts, names and products). ``free_split`` overrides the
    phrasing split (``"all"``: the shipped router also learns the dev parts, as the shipped adapters do)."""
    if split not in FREE_SPLIT:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(FREE_SPLIT)}")
    free_split = free_split or FREE_SPLIT[split]
    texts, labels = [], []
    n_free = round(n_per_task * free_share)
    n_bare = max(1, int(n_per_task * bare_fraction))
    n_bare_free = round(n_bare * free_share)
    for i, task in enumerate(experts):
        for ex in make_examples(task, n_per_task - n_free, seed, split):
            texts.append(ex.prompt)
            labels.append(i)
        for ex in make_free_examples(task, n_free, seed, free_split, bare_share=0.0):
            texts.append(ex.instruction)
            labels.append(i)
    rng = random.Random(seed)
    bare = [ex.message for task in experts for ex in make_examples(task, n_bare - n_bare_free, seed + 1, split)]
    bare += [
        ex.prompt
        for task in experts
        for ex in make_free_examples(task, n_bare_free, seed + 1, free_split, chat_share=0.0, bare_share=1.0)
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
