"""The LR schedule and progress bar shared by the demo build and the joint trainer."""

from __future__ import annotations

import pytest

from loraplex.demo import build, joint_training
from loraplex.demo.training_loop import progress_bar, warmup_cosine


def test_warmup_is_linear_then_cosine_down_to_the_floor():
    f = warmup_cosine(warmup=4, total=20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    decay = [f(s) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))  # never climbs back up
    assert f(12) == pytest.approx(0.05 + 0.95 * 0.5)  # half way through the decay
    assert f(20) == pytest.approx(0.05) and f(500) == pytest.approx(0.05)  # held at the floor, never zero


def test_no_warmup_starts_at_the_peak():
    assert warmup_cosine(0, 10)(0) == pytest.approx(1.0)


def test_disabled_progress_bar_passes_items_through():
    assert list(progress_bar(iter("abc"), 3, "test", enabled=False)) == ["a", "b", "c"]


def test_build_and_joint_training_share_one_schedule():
    """Joint vs separate is only a fair comparison if both train under the same schedule."""
    assert build.warmup_cosine is joint_training.warmup_cosine is warmup_cosine
    assert build.progress_bar is joint_training.progress_bar is progress_bar
