"""Which linear layers LoRA wraps: one rule for the engine, the adapter registry and the demo's joint-training mixer."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn


def matches_target(name: str, patterns: Sequence[str]) -> bool:
    """`name` (a full module name) matches a pattern by its last component (`q_proj`) or as a glob."""
    last = name.rsplit(".", 1)[-1]
    return any(last == p or fnmatch.fnmatch(name, p) for p in patterns)


def target_linears(model: nn.Module, patterns: Sequence[str]) -> dict[str, nn.Linear]:
    """`{module name: nn.Linear}` of the layers LoRA may target; the output head is never one of them."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not name.endswith("lm_head") and matches_target(name, patterns)
    }
