"""The joint-vs-separate comparison's pure parts: config from the built demo, router metrics, the table.

The training and engine runs themselves are covered by test_joint_training.py and the engine tests;
nothing here needs a built demo.
"""

from __future__ import annotations

import math

import pytest
import torch

from loraplex.demo.joint_comparison import (
    SYSTEMS,
    best_permutation_accuracy,
    joint_config_from_manifest,
    render_markdown,
    router_metrics,
)

MANIFEST = {
    "config": {
        "lora_steps": {"intent": 10, "sentiment": 20, "entities": 30},
        "lora_batch": 8,
        "lora_warmup": 3,
        "lora_lr": {"intent": 1e-3, "sentiment": 3e-3, "entities": 2e-3},
        "lora_r": 4,
        "lora_alpha": 8,
        "train_examples": {"intent": 100, "sentiment": 200, "entities": 300},
    }
}


def test_config_follows_the_built_demo_not_the_current_defaults():
    cfg = joint_config_from_manifest(MANIFEST, top_k=1, seed=3)
    assert (cfg.steps, cfg.batch, cfg.lora_lr, cfg.warmup, cfg.lora_r, cfg.lora_alpha) == (60, 8, 3e-3, 3, 4, 8)
    assert cfg.task_mix == {"intent": 10, "sentiment": 20, "entities": 30}
    assert cfg.train_examples == {"intent": 100, "sentiment": 200, "entities": 300}
    assert (cfg.top_k, cfg.seed, cfg.experts) == (1, 3, ("intent", "sentiment", "entities"))
    over = joint_config_from_manifest(MANIFEST, steps=5, batch=2, lora_lr=0.1)
    assert (over.steps, over.batch, over.lora_lr) == (5, 2, 0.1)


def test_best_permutation_accuracy_ignores_expert_names():
    swapped = [[0, 5, 0], [5, 0, 0], [0, 0, 5]]  # perfect separation, two experts' names swapped
    assert best_permutation_accuracy(swapped) == 1.0
    assert best_permutation_accuracy([[2, 1], [1, 2]]) == pytest.approx(4 / 6)
    assert math.isnan(best_permutation_accuracy([[0, 0], [0, 0]]))


def test_router_metrics():
    logits = torch.tensor([[0.0, 5.0], [5.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    gold = torch.tensor([0, 1, 0, 1])
    m = router_metrics(logits, gold, ["a", "b"])
    assert m["accuracy"] == 0.5 and m["accuracy_best_permutation"] == 0.5
    assert m["confusion"]["matrix"] == [[1, 1], [1, 1]] and m["share"] == [0.5, 0.5]
    swapped = router_metrics(logits[[0, 1]], torch.tensor([0, 1]), ["a", "b"])
    assert swapped["accuracy"] == 0.0 and swapped["accuracy_best_permutation"] == 1.0


def test_render_markdown_has_one_row_per_pipeline_and_system():
    def pipe(acc, best):
        systems = {name: {"t1": 0.5, "t2": 1.0, "mean": 0.75} for name, _ in SYSTEMS}
        return {
            "router": {"accuracy": acc, "accuracy_best_permutation": best},
            "systems": systems,
            "train_wall_s": 12.3,
        }

    md = render_markdown({"tasks": ["t1", "t2"], "joint": pipe(0.0, 1.0), "separate": pipe(1.0, 1.0)})
    rows = md.strip().splitlines()
    assert len(rows) == 2 + 2 * len(SYSTEMS)
    assert rows[2] == "| joint | router top-1 | 50.0% | 100.0% | 75.0% | 0.0% (100.0% up to relabelling) | 12 s |"
    assert rows[-1] == "| separate | task-label oracle | 50.0% | 100.0% | 75.0% | - |  |"
