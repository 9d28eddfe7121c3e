"""The demo's routing data and its train -> held-out check -> save wrapper, with a cheap featurizer."""

from __future__ import annotations

import hashlib
import json

import torch

from loraplex.demo.data import TASKS
from loraplex.demo.router_training import FEATURE_BATCH, featurize, fit_router, train_demo_router
from loraplex.demo.routing_data import routing_data
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


def test_train_demo_router_saves_a_loadable_router(tmp_path):
    feat = HashedWords()
    cfg = TrainConfig(epochs=15, hidden=32, dropout=0.0)
    metrics = train_demo_router(
        str(tmp_path / "router"), feat, n_per_task=40, cfg=cfg, policy=PolicyConfig(top_k=2), progress=False
    )
    assert list(metrics) == ["train", "heldout_accuracy", "heldout_bare_message_confidence", "n_train"]
    assert metrics["n_train"] == 40 * len(TASKS) + 10 * len(TASKS)
    assert metrics["heldout_accuracy"] > 0.4  # above chance (1/3) on unseen phrasings: held-out data really is scored
    saved = json.loads((tmp_path / "router" / "router.json").read_text())
    assert saved["metrics"] == metrics and saved["policy"]["top_k"] == 2
    router = Router.load(tmp_path / "router", featurizer=feat)
    assert router.experts == list(TASKS)
    # the same seed and data train the same network as the bare fit the joint comparison uses
    net, _ = fit_router(feat, routing_data("train", 40, cfg.seed), cfg, progress=False)
    probe = routing_data("heldout", 5, seed=1).texts
    torch.testing.assert_close(net.eval()(feat.encode(probe)), router.logits(probe))
