"""The demo's routing data and its training through the user-data path, with a cheap featurizer."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from loraplex.demo.data import TASKS
from loraplex.demo.router_training import TRAIN_FILE, train_demo_router
from loraplex.demo.routing_data import routing_data
from loraplex.router.dataset import load_jsonl
from loraplex.router.fitting import FEATURE_BATCH, featurize
from loraplex.router.policy import PolicyConfig
from loraplex.router.router import Router
from loraplex.router.training import TrainConfig


class HashedWords:
    """Hashed bag of words: separates the demo's instructions well enough to test the plumbing, no encoder."""

    dim = 64

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, texts):
        self.calls.append(len(texts))
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out

    def spec(self):
        return {"kind": "sentence", "path": "unused"}


def test_routing_data_targets():
    data = routing_data("train", 8, seed=0)
    n_bare = len(TASKS) * 2  # int(8 * 0.25) bare messages per task
    assert (
        data.experts == list(TASKS)
        and len(data.texts) == len(data.labels) == data.targets.shape[0] == 8 * len(TASKS) + n_bare
    )
    assert torch.allclose(data.targets.sum(1), torch.ones(len(data.texts)))
    for label, target in zip(data.labels, data.targets):
        if label >= 0:
            assert target[label] == 1.0
        else:  # a bare message could be meant for any adapter: uniform
            assert torch.allclose(target, torch.full((len(TASKS),), 1 / len(TASKS)))
    assert not set(data.texts) & set(routing_data("heldout", 8, seed=0).texts)


def test_featurize_encodes_in_fixed_chunks():
    feat = HashedWords()
    texts = [f"text {i}" for i in range(FEATURE_BATCH + 5)]
    x = featurize(feat, texts)
    assert feat.calls == [FEATURE_BATCH, 5] and x.shape == (len(texts), feat.dim)
    torch.testing.assert_close(x, feat.encode(texts))


def test_train_demo_router_goes_through_the_user_data_path(tmp_path):
    feat = HashedWords()
    cfg = TrainConfig(epochs=15, hidden=32, dropout=0.0)
    out = tmp_path / "router"
    metrics = train_demo_router(str(out), feat, n_per_task=40, cfg=cfg, policy=PolicyConfig(top_k=2), progress=False)
    # the demo's data went through the JSONL file a user would write, and back
    written = load_jsonl(out / TRAIN_FILE, available=TASKS)
    assert len(written.texts) == 40 * len(TASKS) + 10 * len(TASKS) and written.experts == sorted(TASKS)
    assert metrics["n_train"] + metrics["n_validation"] == len(written.texts)
    assert metrics["report_split"] == "test" and metrics["heldout_accuracy"] > 0.4  # above chance on unseen phrasings
    assert 0 < metrics["heldout_bare_message_confidence"] < 1 and metrics["calibration_temperature"] > 0
    saved = json.loads((out / "router.json").read_text())
    assert saved["metrics"] == metrics and saved["policy"]["top_k"] == 2
    assert saved["calibration_temperature"] == pytest.approx(metrics["calibration_temperature"], abs=1e-4)
    assert json.loads((out / "report.json").read_text())["accuracy"] == metrics["heldout_accuracy"]
    router = Router.load(out, featurizer=feat)
    assert router.experts == sorted(TASKS)
