"""Turn router probabilities into a routing decision the engine can execute.

A request that names an adapter never gets here. Otherwise: temperature-scaled softmax, then top-1
(hard) or top-k (soft, renormalised over the k kept experts). Below the confidence floor the
configured fallback applies: the base model, the soft top-k blend (hedging across experts rather
than betting on one), or the top-1 adapter alone, flagged as a fallback in the routing info.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loraplex.config.app import PolicyConfig

__all__ = ["BASE", "Decision", "PolicyConfig", "decide", "top_k_renormalised"]

BASE = "base"  # a router class meaning "no adapter": such requests get the base model (as `model: "base"`)


@dataclass(frozen=True)
class Decision:
    """What the engine runs: `mode` is `moe` (weights over adapters) or `base` (no adapter)."""

    mode: str
    weights: dict[str, float]  # adapter -> weight in the renormalised top-k, empty for base
    confidence: float  # max routing probability
    probs: dict[str, float]  # the full distribution, for explanations and metrics
    fallback: bool = False
    base_weight: float = 0.0  # the `base` class's share of the top-k (no adapter: a zero delta)
    head: str = "trained"  # which head decided: "trained" (the classifier) or "prototype" (registered examples)

    def composition(self) -> dict | None:
        if self.mode == "base":
            return None
        if self.base_weight > 0:  # part of the mix is "no adapter": a delta blend whose weights sum to < 1
            return {"mode": "blend", "weights": self.weights, "space": "delta"}
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
            out.append(_decision(w, c, full, fallback=False))
        elif cfg.fallback == "base":
            out.append(Decision("base", {}, c, full, fallback=True))
        elif cfg.fallback == "top1":  # adapters' answer formats differ: a blend of two is worse than either
            out.append(_decision({experts[int(main_i[r, 0])]: 1.0}, c, full, fallback=True))
        else:
            w = {experts[int(i)]: float(v) for v, i in zip(fb_v[r], fb_i[r])}
            out.append(_decision(w, c, full, fallback=True))
    return out


def _decision(weights: dict[str, float], confidence: float, probs: dict[str, float], fallback: bool) -> Decision:
    """A mix of the chosen classes. The `base` class carries no adapter: its share is a zero delta, so the
    adapters keep their own weights (not renormalised to 1), and `base` alone is the base model."""
    adapters = {a: w for a, w in weights.items() if a != BASE}
    if not adapters:
        return Decision("base", {}, confidence, probs, fallback=fallback)
    return Decision("moe", adapters, confidence, probs, fallback=fallback, base_weight=weights.get(BASE, 0.0))
