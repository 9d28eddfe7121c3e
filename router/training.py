"""Train the router network on precomputed features (the featurizer stays frozen).

Loss = CE(soft targets) + balance_coef * load_balancing_loss + z_coef * z_loss. Targets are
distributions, not labels, so a caller can give an ambiguous example (e.g. a bare customer message
with no instruction) a *uniform* target: the router learns to say "I don't know" there instead of
guessing confidently, and the confidence floor can act on it.

This module knows nothing about where features and targets come from; the demo's routing data and
its train-evaluate-save wrapper live on the demo side (`demo/router_training.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm import tqdm

from loraplex.router.losses import expert_share, load_balancing_loss, routing_entropy, soft_cross_entropy, z_loss
from loraplex.router.network import RouterNet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 256
    dropout: float = 0.1
    balance_coef: float = 0.01
    z_coef: float = 1e-3
    collapse_share: float = 0.8  # warn when one expert wins more than this share of a batch-epoch
    seed: int = 0
    patience: int = 5  # with held-out data: stop after this many epochs without a better held-out loss


def train_router(
    features: torch.Tensor,
    targets: torch.Tensor,
    cfg: TrainConfig,
    progress: bool = True,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[RouterNet, list[dict]]:
    """`features: [n, dim]`, `targets: [n, experts]` (rows sum to 1) -> trained net and per-epoch logs.

    With `val` (held-out features and targets), training stops early once the held-out cross-entropy has
    not improved for `cfg.patience` epochs, and the best epoch's weights are returned."""
    torch.manual_seed(cfg.seed)
    n, dim = features.shape
    net = RouterNet(dim, targets.shape[1], cfg.hidden, cfg.dropout)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = []
    bar = tqdm(range(cfg.epochs), desc="router", disable=not progress)
    g = torch.Generator().manual_seed(cfg.seed)
    best: tuple[float, int, dict] | None = None  # (held-out loss, epoch, weights)
    for epoch in bar:
        net.train()
        order = torch.randperm(n, generator=g)
        sums = {"loss": 0.0, "ce": 0.0, "balance": 0.0, "z": 0.0}
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            logits = net(features[idx])
            ce = soft_cross_entropy(logits, targets[idx])
            bal = load_balancing_loss(logits)
            zl = z_loss(logits)
            loss = ce + cfg.balance_coef * bal + cfg.z_coef * zl
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in zip(sums, (loss, ce, bal, zl)):
                sums[k] += float(v.detach()) * len(idx) / n
        net.eval()
        with torch.no_grad():
            logits = net(features)
            labelled = targets.max(dim=1).values > 0.99
            acc = (
                float((logits[labelled].argmax(1) == targets[labelled].argmax(1)).float().mean())
                if labelled.any()
                else float("nan")
            )
            share = expert_share(logits[labelled] if labelled.any() else logits)
            entry = {
                "epoch": epoch,
                **{k: round(v, 5) for k, v in sums.items()},
                "accuracy": round(acc, 4),
                "share": [round(float(s), 3) for s in share],
                "entropy": round(float(routing_entropy(logits.softmax(-1))), 4),
            }
            if val is not None:
                entry["val_ce"] = round(float(soft_cross_entropy(net(val[0]), val[1])), 5)
        history.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}", acc=f"{acc:.3f}", bal=f"{entry['balance']:.3f}")
        if val is not None:
            if best is None or entry["val_ce"] < best[0]:
                best = (entry["val_ce"], epoch, {k: v.clone() for k, v in net.state_dict().items()})
            elif epoch - best[1] >= cfg.patience:
                log.info("early stop at epoch %d: held-out loss best at epoch %d", epoch, best[1])
                break
        if float(share.max()) > cfg.collapse_share:
            log.warning(
                "router collapse: expert %d takes %.0f%% of the traffic at epoch %d",
                int(share.argmax()),
                100 * float(share.max()),
                epoch,
            )
    if best is not None:
        net.load_state_dict(best[2])
        history[best[1]]["best"] = True
    return net.eval(), history


def calibrate_temperature(logits: torch.Tensor, targets: torch.Tensor, steps: int = 200) -> float:
    """The temperature T minimising held-out cross-entropy of `softmax(logits / T)` (Guo et al. 2017).

    Why: the confidence floor compares max probabilities against a fixed number, so they must mean what
    they say; a network trained to near-zero loss is overconfident on anything it has not seen. One scalar,
    fitted on held-out data, keeps the argmax (accuracy unchanged) and fixes the scale.
    """
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([log_t], lr=0.05)
    logits, targets = logits.detach().float(), targets.float()
    for _ in range(steps):
        loss = soft_cross_entropy(logits / log_t.exp(), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(log_t.detach().exp().clamp(0.05, 20.0))
