"""How good a trained router is on held-out data: the numbers a user needs before trusting `model: "auto"`.

Accuracy and per-class precision/recall on hard-labelled rows, the confusion matrix, the expected
calibration error (ECE: how far max probabilities are from the accuracy they promise, which is what the
confidence floor relies on) and the expert share (a collapse onto one adapter shows here first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

ECE_BINS = 10


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """`probs: [n, classes]`, `labels: [n]`: sum over confidence bins of |accuracy - confidence| * bin share."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += float(in_bin.float().mean()) * abs(float(correct[in_bin].mean()) - float(conf[in_bin].mean()))
    return ece


def routing_report(logits: torch.Tensor, targets: torch.Tensor, experts: Sequence[str]) -> dict:
    """`logits`, `targets: [n, experts]` (rows of `targets` sum to 1; soft rows count only in the share)."""
    probs = logits.float().softmax(dim=1)  # [n, experts]
    vals, labels = targets.max(dim=1)
    hard = vals > 0.5
    pred = probs.argmax(dim=1)
    k = len(experts)
    confusion = torch.zeros(k, k, dtype=torch.long)  # [true, predicted]
    for t, p in zip(labels[hard].tolist(), pred[hard].tolist()):
        confusion[t, p] += 1
    per = {}
    for i, name in enumerate(experts):
        tp = int(confusion[i, i])
        predicted, actual = int(confusion[:, i].sum()), int(confusion[i].sum())
        per[name] = {
            "precision": round(tp / predicted, 4) if predicted else None,
            "recall": round(tp / actual, 4) if actual else None,
            "support": actual,
        }
    n_hard = int(hard.sum())
    share = torch.bincount(pred, minlength=k).float() / max(1, len(pred))
    return {
        "n": len(pred),
        "n_labelled": n_hard,
        "accuracy": round(float((pred[hard] == labels[hard]).float().mean()), 4) if n_hard else None,
        "ece": round(expected_calibration_error(probs[hard], labels[hard]), 4) if n_hard else None,
        "mean_confidence": round(float(probs.max(dim=1).values.mean()), 4),
        "per_adapter": per,
        "expert_share": {name: round(float(s), 4) for name, s in zip(experts, share)},
        "experts": list(experts),
        "confusion": confusion.tolist(),
    }


def plot_confusion(report: dict, path: Path) -> None:
    """The confusion matrix as a PNG (rows: true class, columns: the router's argmax)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experts, m = report["experts"], report["confusion"]
    size = max(4.0, 0.6 * len(experts) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(experts)), experts, rotation=45, ha="right")
    ax.set_yticks(range(len(experts)), experts)
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set_xlabel("routed to")
    ax.set_ylabel("labelled")
    ax.set_title(f"held-out routing: accuracy {report['accuracy']}, ECE {report['ece']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
