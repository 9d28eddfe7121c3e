"""The schedule and progress bar every demo training loop shares.

The demo build (base pretraining, one LoRA run per task) and the joint router + experts trainer use
the same warmup-then-cosine learning rate and the same progress bar, so the joint run is compared
with the separate pipeline under one schedule. They live here, not in :mod:`loraplex.demo.build`, so
neither trainer reaches into the other's private helpers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier for ``torch.optim.lr_scheduler.LambdaLR``: linear warmup over ``warmup`` steps, then
    a cosine decay from 1 to 0.05 at step ``total`` (held there after). The 5 % floor keeps the last
    steps of a short run learning instead of spending them at a zero learning rate. The constants are
    written out as literals on purpose: the demo build is bit-for-bit deterministic, and an
    algebraically equal expression can round differently."""

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        done = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return multiplier


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar over ``iterable`` (a pass-through when ``enabled`` is false, e.g. in tests and CI logs)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=True, dynamic_ncols=True, mininterval=0.5)
