"""Router training losses: task cross-entropy plus the two standard MoE auxiliary losses.

- Switch-Transformer load balancing, `alpha * N * sum_i f_i * P_i` (Fedus et al. 2021): `f_i` is the
  share of the batch whose argmax is expert i (not differentiable), `P_i` the mean router probability
  of i (differentiable). Minimum `alpha` at uniform routing, `alpha * N` at total collapse.
- Router z-loss, `mean(logsumexp(logits)^2)` (Zoph et al. 2022): keeps logits small so softmax stays
  numerically tame and calibrated.

The reference article's `mean((load - ideal)^2)` is not used: its bincount has no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def load_balancing_loss(logits: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """`logits: [batch, experts]` -> scalar `alpha * N * sum_i f_i P_i`."""
    n = logits.shape[-1]
    probs = logits.softmax(dim=-1)  # [batch, experts]
    f = F.one_hot(probs.argmax(dim=-1), n).float().mean(dim=0)  # [experts], share routed to i
    p = probs.mean(dim=0)  # [experts], mean probability of i
    return alpha * n * (f * p).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """`logits: [batch, experts]` -> scalar `mean(logsumexp(logits)^2)`."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against target distributions `targets: [batch, experts]` (one-hot or soft)."""
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def routing_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the routing distributions `probs: [batch, experts]`."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()


def expert_share(logits: torch.Tensor) -> torch.Tensor:
    """`[experts]`: fraction of the batch each expert wins by argmax."""
    return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float().mean(dim=0)
