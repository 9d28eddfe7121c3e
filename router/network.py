"""The router network: a small MLP from features to one logit per expert (adapter)."""

from __future__ import annotations

import torch
from torch import nn


class RouterNet(nn.Module):
    def __init__(self, dim: int, n_experts: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.dim, self.n_experts, self.hidden, self.dropout = dim, n_experts, hidden, dropout
        self.layers = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_experts)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)  # [batch, dim] -> [batch, experts]
