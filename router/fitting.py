"""Train a router on a user's labelled prompts, end to end: featurize, split, train with early stopping,
calibrate, report, and hand back a `Router` ready to save.

`scripts/train_router.py --data FILE.jsonl` is this function on the file's data; the demo's router is
trained by the same function on the demo generator's prompts, so there is one training path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from loraplex.experts.errors import DatasetError
from loraplex.router.dataset import RoutingData, stratified_split
from loraplex.router.featurizers import Featurizer
from loraplex.router.policy import PolicyConfig
from loraplex.router.prototypes import sample_references
from loraplex.router.report import routing_report
from loraplex.router.router import Router
from loraplex.router.training import TrainConfig, calibrate_temperature, train_router

FEATURE_BATCH = 64
REFERENCES_PER_CLASS = 128  # training features kept per class for the prototype head's gate (router.prototypes)


def featurize(featurizer: Featurizer, texts: Sequence[str], progress: bool = False) -> torch.Tensor:
    """`[len(texts), dim]` features, `FEATURE_BATCH` texts at a time: a training set has thousands of
    prompts, and one encoder call over all of them would pad every prompt to the longest."""
    starts = range(0, len(texts), FEATURE_BATCH)
    chunks = tqdm(starts, desc="features", disable=not progress)
    return torch.cat([featurizer.encode(list(texts[i : i + FEATURE_BATCH])) for i in chunks])


@dataclass
class FitResult:
    router: Router
    report: dict  # held-out report (router.report.routing_report) plus training facts
    history: list[dict]  # per-epoch training log


def fit_router_on_data(
    data: RoutingData,
    featurizer: Featurizer,
    cfg: TrainConfig = TrainConfig(),
    policy: PolicyConfig | None = None,
    val_fraction: float = 0.2,
    test: RoutingData | None = None,
    progress: bool = True,
) -> FitResult:
    """Hold out `val_fraction` of every class (early stopping and the calibration temperature are fitted on
    it), train, calibrate, and report on `test` when given, else on the held-out split (then the ECE is
    measured on the data the temperature was fitted to: optimistic; the report says which)."""
    train_rows, val_rows = stratified_split(data, val_fraction, cfg.seed)
    x = featurize(featurizer, data.texts, progress)  # [n, dim]
    t = data.targets
    net, history = train_router(x[train_rows], t[train_rows], cfg, progress, val=(x[val_rows], t[val_rows]))
    with torch.no_grad():
        val_logits = net(x[val_rows])
    temperature = calibrate_temperature(val_logits, t[val_rows])
    if test is not None:
        if test.experts != data.experts:
            missing = sorted(set(test.experts) - set(data.experts))
            test = _align(test, data.experts, missing)
        with torch.no_grad():
            eval_logits, eval_targets, split = net(featurize(featurizer, test.texts, progress)), test.targets, "test"
    else:
        eval_logits, eval_targets, split = val_logits, t[val_rows], "validation (also used for calibration)"
    report = routing_report(eval_logits / temperature, eval_targets, data.experts)
    report["ece_uncalibrated"] = routing_report(eval_logits, eval_targets, data.experts)["ece"]
    best = next((h["epoch"] for h in history if h.get("best")), history[-1]["epoch"])
    report.update(
        report_split=split,
        calibration_temperature=round(temperature, 4),
        n_train=len(train_rows),
        n_validation=len(val_rows),
        duplicates_dropped=data.duplicates,
        epochs_run=len(history),
        best_epoch=best,
    )
    metrics = {k: report[k] for k in ("accuracy", "ece", "report_split", "n_train", "n_validation", "best_epoch")}
    labels = data.labels
    references = sample_references(
        x[train_rows], [labels[i] for i in train_rows], data.experts, REFERENCES_PER_CLASS, cfg.seed
    )
    router = Router(
        featurizer, net, data.experts, policy or PolicyConfig(), metrics, calibration=temperature, references=references
    )
    return FitResult(router, report, history)


def _align(test: RoutingData, experts: list[str], missing: list[str]) -> RoutingData:
    """Test targets in the training data's class order (a class the training data lacks cannot be scored)."""
    if missing:
        raise DatasetError("test data", [f"class(es) {missing} are not in the training data; classes: {experts}"])
    index = [test.experts.index(e) if e in test.experts else None for e in experts]
    targets = torch.stack([test.targets[:, i] if i is not None else torch.zeros(len(test.texts)) for i in index], 1)
    return RoutingData(test.texts, targets, experts)
