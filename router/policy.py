"""Turn router probabilities into a routing decision the engine can execute.

A request that names an adapter never gets here. Otherwise: temperature-scaled softmax, then top-1
(hard) or top-k (soft, renormalised over the k kept experts). Below the confidence floor the
configured fallback applies: the base model, or the soft top-k blend (hedging across experts rather
than betting on one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loraplex.config.app import PolicyConfig

__all__ = ["Decision", "PolicyConfig", "decide", "top_k_renormalised"]


@dataclass(frozen=True)
class Decision:
    """What the engine runs: `mode` is `moe` (weights over adapters) or `base` (no adapter)."""

    mode: str
    weights: dict[str, float]  # the renormalised top-k, empty for base
    confidence: float  # max routing probability
    probs: dict[str, float]  # the full distribution, for explanations and metrics
    fallback: bool = False

    def composition(self) -> dict | None:
        if self.mode == "base":
            return None
        return {"mode": "moe", "top_k": len(self.weights), "weights": self.weights}


def top_k_renormalised(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`probs: [batch, experts]` -> (values `[batch, k]` summing to 1, indices `[batch, k]`)."""
    vals, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return vals / vals.sum(dim=-1, keepdim=True), idx


def decide(logits: torch.Tensor, experts: Sequence[str], cfg: PolicyConfig) -> list[Decision]:
    """`logits: [batch, experts]` -> one `Decision` per row."""
    probs = (logits.float() / cfg.temperature).softmax(dim=-1)  # [batch, experts]
    conf = probs.max(dim=-1).values  # [batch]
    main_v, main_i = top_k_renormalised(probs, cfg.top_k)
    fb_v, fb_i = top_k_renormalised(probs, cfg.fallback_top_k)
    out = []
    for r in range(probs.shape[0]):
        full = {e: round(float(p), 6) for e, p in zip(experts, probs[r])}
        c = float(conf[r])
        if c >= cfg.confidence_floor:
            w = {experts[int(i)]: float(v) for v, i in zip(main_v[r], main_i[r])}
            out.append(Decision("moe", w, c, full))
        elif cfg.fallback == "base":
            out.append(Decision("base", {}, c, full, fallback=True))
        else:
            w = {experts[int(i)]: float(v) for v, i in zip(fb_v[r], fb_i[r])}
            out.append(Decision("moe", w, c, full, fallback=True))
    return out
